//! SQLite backend: one database file in the data directory, WAL journal, JSON documents in
//! `doc` columns next to the few columns that carry uniqueness rules and lookups.
//!
//! Concurrency: reads run on a pool of read-only connections of their own (WAL lets readers
//! proceed while a write commits), so a long listing never holds up a request. Writes go through
//! one writer connection. Writes whose inputs the store can own are *group-committed*: a caller
//! queues its change for the store's writer thread, which takes every change queued by then, runs
//! them in one transaction, each inside a savepoint of its own (a failing change is rolled back
//! alone and answered with its error), commits once and answers all of them; the callers wait
//! only for their answer (no queue of threads taking a lock in turn). A caller returns only
//! after the commit that holds its change.
//!
//! Durability: WAL with `synchronous = NORMAL` ([`Durability::Normal`], the default): a change
//! that was answered survives a crash of the process (the WAL is in the OS's page cache), but
//! not a power cut or kernel crash, which may lose the last commits. [`Durability::Full`]
//! (`synchronous = FULL`) also syncs the WAL at every commit, so answered changes survive a
//! power cut; group commit makes that one sync per batch, not per request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use oak_api::model::{Application, Cluster, Instance, Organization, Service};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::doc_cache::DocCache;
use crate::migrations::MIGRATIONS;
use crate::{
    ClusterTokenRecord, OwnerUsage, Result, RootStore, SpecWithApplication, StoreError, SubnetRecord, UserRecord,
};

/// What an answered write survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous = NORMAL`: a crash of the process, not a power cut.
    #[default]
    Normal,
    /// `synchronous = FULL`: a power cut too (one sync of the WAL per group commit).
    Full,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        }
    }
}

/// Idle read connections kept for reuse; more are opened when more reads run at once.
const IDLE_READERS: usize = 16;

/// Page cache of each read connection, in KiB.
const READER_CACHE_KIB: i64 = 512;

/// A queued change: runs inside the batch's transaction and answers its caller once the
/// transaction's fate is known (the commit's error, if it failed).
type Job = Box<dyn FnOnce(std::result::Result<&Transaction<'_>, &str>) -> Answer + Send>;
type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

/// The root's store in `<data_dir>/root.db`.
pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    /// Changes for the writer thread's next group commit.
    queue: mpsc::Sender<Job>,
    /// The database file read connections open; `None` for an in-memory database (reads then
    /// use the writer connection).
    path: Option<PathBuf>,
    readers: Mutex<Vec<Connection>>,
    commits: Arc<AtomicU64>,
    /// Each service's next free instance number, once this process took one: numbers are
    /// handed out here without a write (an instance request then needs one commit, not two),
    /// and the stored counter catches up in the transaction storing the instances.
    next_numbers: Mutex<HashMap<String, u32>>,
    /// Services with their applications as instance requests read them.
    specs: DocCache<SpecWithApplication>,
    /// Users and organizations by id, as every authenticated request reads them.
    users: DocCache<UserRecord>,
    orgs: DocCache<Organization>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Durability::default())
    }

    /// Like [`SqliteStore::open`], with the durability of answered writes chosen.
    pub fn open_with(path: &Path, durability: Durability) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        Self::init(conn, Some(path.to_path_buf()), durability)
    }

    /// A private in-memory database, for tests.
    pub fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?, None, Durability::default())
    }

    fn init(mut conn: Connection, path: Option<PathBuf>, durability: Durability) -> Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", durability.pragma())?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every statement is prepared once and kept: parsing SQL was a good part of a request.
        conn.set_prepared_statement_cache_capacity(128);
        migrate(&mut conn)?;
        let writer = Arc::new(Mutex::new(conn));
        let commits = Arc::new(AtomicU64::new(0));
        let (queue, queued) = mpsc::channel::<Job>();
        let (w, c) = (writer.clone(), commits.clone());
        // Ends when the store is dropped (the queue's sender with it).
        std::thread::Builder::new().name("oak-store-writer".into()).spawn(move || group_commits(&w, &queued, &c))?;
        Ok(Self {
            writer,
            queue,
            path,
            readers: Mutex::new(Vec::new()),
            commits,
            next_numbers: Mutex::default(),
            specs: DocCache::default(),
            users: DocCache::default(),
            orgs: DocCache::default(),
        })
    }

    /// The writer connection. A panic while holding it cannot leave SQLite inconsistent
    /// (transactions roll back on drop), so a poisoned lock is safe to keep using.
    fn writer(&self) -> MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open_reader(path: &Path) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(128);
        // A small page cache: every commit of the writer empties a read connection's cache at its
        // next transaction anyway (and requests commit all the time), while each of up to
        // [`IDLE_READERS`] connections would keep SQLite's default 2 MiB allocated.
        conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
        // No memory map: after each commit of the writer a read connection's next transaction
        // unmaps and maps the file again, and under a stream of commits the munmaps (TLB
        // shootdowns on every core) cost more than copying the few pages a read needs.
        Ok(conn)
    }

    /// Runs `f` on a read connection of its own (from the pool, or a new one). Each statement
    /// sees the last commit before it started.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let Some(path) = &self.path else { return f(&self.writer()) };
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => Self::open_reader(path)?,
        };
        // One read transaction: statements reading a service and then its instances see one state.
        let out = conn.unchecked_transaction().map_err(StoreError::from).and_then(|tx| f(&tx));
        let mut idle = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        out
    }

    /// Runs `f` in a transaction of its own on the writer connection (for changes that borrow
    /// what they work with and so cannot wait in the group-commit queue).
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` in the next group commit and answers once that commit is done: `f`'s own error
    /// (its changes rolled back, the batch's others kept), or the commit's.
    fn write_batched<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let answered = self.enqueue(f);
        answered.recv().unwrap_or_else(|_| Err(StoreError::Commit("a panic while writing dropped the change".into())))
    }

    /// [`SqliteStore::write_batched`] for a change to users or organizations (a user's token
    /// generation changes with an organization's roles): the kept ones are dropped once it is
    /// committed (or failed).
    fn write_accounts<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let out = self.write_batched(f);
        self.users.changed();
        self.orgs.changed();
        out
    }

    /// [`SqliteStore::write_batched`] for a change to services or applications: the kept
    /// descriptors are dropped once it is committed (or failed).
    fn write_specs<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let out = self.write_batched(f);
        self.specs.changed();
        out
    }

    /// Queues `f` for the next group commit; its answer arrives on the receiver.
    fn enqueue<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    ) -> mpsc::Receiver<Result<T>> {
        let (answer, answered) = mpsc::sync_channel::<Result<T>>(1);
        self.enqueue_then(
            f,
            Box::new(move |out| {
                let _ = answer.send(out);
            }),
        );
        answered
    }

    /// Queues `f` for the next group commit; `done` gets its answer after the commit.
    fn enqueue_then<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
        done: crate::Done<T>,
    ) {
        let job: Job = Box::new(move |tx| {
            let out = match tx {
                Ok(tx) => in_savepoint(tx, f),
                Err(begin) => Err(StoreError::Commit(begin.to_string())),
            };
            Box::new(move |commit_error| {
                let out = match (out, commit_error) {
                    (Ok(_), Some(e)) => Err(StoreError::Commit(e.to_string())),
                    (out, _) => out,
                };
                done(out);
            })
        });
        if let Err(mpsc::SendError(job)) = self.queue.send(job) {
            // The writer thread is gone (it panicked): the change is answered with that.
            job(Err("the store's writer thread has stopped"))(None);
        }
    }

    /// Drops the in-memory instance counters of deleted services.
    fn forget_numbers(&self, services: &[String]) {
        let mut numbers = self.next_numbers.lock().unwrap_or_else(|e| e.into_inner());
        for s in services {
            numbers.remove(s);
        }
    }

    /// Group-commit transactions run so far (each holding one or more changes).
    pub fn group_commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

/// Loads each instance of `keys`, lets `change` edit it and saves it if asked; which existed.
fn update_instances_tx(
    tx: &Connection,
    keys: &[(String, u32)],
    change: &mut dyn FnMut(usize, &mut Instance) -> bool,
) -> Result<Vec<bool>> {
    let mut found = Vec::with_capacity(keys.len());
    for (i, (service_id, number)) in keys.iter().enumerate() {
        let doc: Option<Instance> = query_doc(
            tx,
            "SELECT doc FROM instances WHERE service_id = ?1 AND instance_number = ?2",
            params![service_id, number],
        )?;
        found.push(doc.is_some());
        if let Some(mut inst) = doc {
            if change(i, &mut inst) {
                put_instance_tx(tx, service_id, &inst)?;
            }
        }
    }
    Ok(found)
}

/// The change that stores `instances` of a service and moves its instance counter past them.
fn insert_instances(
    service_id: &str,
    instances: &[Instance],
) -> impl FnOnce(&Transaction<'_>) -> Result<()> + Send + 'static {
    let (service_id, instances) = (service_id.to_owned(), instances.to_owned());
    move |tx| {
        instances.iter().try_for_each(|i| put_instance_tx(tx, &service_id, i))?;
        counter_past_tx(tx, &service_id, instances.iter().map(|i| i.instance_number))
    }
}

/// Runs `f` inside a savepoint of `tx`: released on success, rolled back on error.
fn in_savepoint<T>(tx: &Transaction<'_>, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
    tx.execute_batch("SAVEPOINT job")?;
    let out = f(tx);
    let end = if out.is_ok() { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
    match (out, tx.execute_batch(end)) {
        (Ok(v), Ok(())) => Ok(v),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.into()),
    }
}

/// The writer thread: waits for a change, takes the writer connection, adds every change queued
/// by then and runs them as one batch.
fn group_commits(writer: &Mutex<Connection>, queued: &mpsc::Receiver<Job>, commits: &AtomicU64) {
    while let Ok(first) = queued.recv() {
        let mut conn = writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut jobs = vec![first];
        jobs.extend(queued.try_iter());
        // Counted before anyone is answered, so an answered caller sees its batch counted.
        commits.fetch_add(1, Ordering::Relaxed);
        run_batch(&mut conn, jobs);
    }
}

/// One transaction for every queued change, one commit, then every caller answered.
fn run_batch(conn: &mut Connection, jobs: Vec<Job>) {
    let tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => {
            let msg = e.to_string();
            for job in jobs {
                job(Err(&msg))(None);
            }
            return;
        }
    };
    let answers: Vec<Answer> = jobs.into_iter().map(|job| job(Ok(&tx))).collect();
    let commit = tx.commit().err().map(|e| e.to_string());
    for answer in answers {
        answer(commit.as_deref());
    }
}

/// Current schema version of a database.
fn migrate(conn: &mut Connection) -> Result<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "database schema version {version} is newer than this program knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn to_doc<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_doc<T: DeserializeOwned>(doc: &str) -> Result<T> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn query_docs<T: DeserializeOwned>(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let docs = stmt.query_map(args, |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
    docs.iter().map(|d| from_doc(d)).collect()
}

fn query_doc<T: DeserializeOwned>(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> Result<Option<T>> {
    let doc: Option<String> = conn.prepare_cached(sql)?.query_row(args, |r| r.get(0)).optional()?;
    doc.map(|d| from_doc(&d)).transpose()
}

/// Users with their token generation (a column of its own, not part of the document).
fn query_users(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> Result<Vec<UserRecord>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map(args, |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(doc, generation)| {
            let mut user: UserRecord = from_doc(&doc)?;
            user.token_generation = generation as u64;
            Ok(user)
        })
        .collect()
}

/// Invalidates every token of these users.
fn revoke_tokens<'a>(tx: &Connection, user_ids: impl IntoIterator<Item = &'a String>) -> Result<()> {
    for id in user_ids {
        exec(tx, "UPDATE users SET token_generation = token_generation + 1 WHERE id = ?1", params![id])?;
    }
    Ok(())
}

/// Members of `old` who hold a role there that `new` (if any) does not give them.
fn members_losing_roles<'a>(old: &'a Organization, new: Option<&Organization>) -> Vec<&'a String> {
    old.member
        .iter()
        .filter(|m| {
            let kept = new.and_then(|n| n.member.iter().find(|k| k.user_id == m.user_id));
            m.roles.iter().any(|r| !kept.is_some_and(|k| k.roles.contains(r)))
        })
        .map(|m| &m.user_id)
        .collect()
}

fn exists(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> Result<bool> {
    Ok(conn.prepare_cached(sql)?.query_row(args, |_| Ok(())).optional()?.is_some())
}

const TOKEN_COLUMNS: &str = "SELECT id, hash, created_at, expires_at, reusable, uses, revoked FROM cluster_tokens";

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClusterTokenRecord> {
    Ok(ClusterTokenRecord {
        id: r.get(0)?,
        hash: r.get(1)?,
        created_at: r.get(2)?,
        expires_at: r.get(3)?,
        reusable: r.get(4)?,
        uses: r.get::<_, i64>(5)? as u64,
        revoked: r.get(6)?,
    })
}

/// `execute` through the statement cache.
fn exec(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(args)
}

fn expect_changed(n: usize, what: impl FnOnce() -> String) -> Result<()> {
    if n == 0 {
        Err(StoreError::NotFound(what()))
    } else {
        Ok(())
    }
}

fn check_app_unique(tx: &Connection, app: &Application) -> Result<()> {
    if exists(
        tx,
        "SELECT 1 FROM applications WHERE owner = ?1 AND name = ?2 AND namespace = ?3 AND id <> ?4",
        params![app.user_id, app.application_name, app.application_namespace, app.id],
    )? {
        return Err(StoreError::Conflict(format!(
            "an application named {:?} in namespace {:?} already exists",
            app.application_name, app.application_namespace
        )));
    }
    Ok(())
}

fn insert_services(tx: &Transaction<'_>, app_id: &str, services: &[Service]) -> Result<()> {
    for s in services {
        if exists(tx, "SELECT 1 FROM services WHERE job_name = ?1", params![s.job_name])? {
            return Err(StoreError::Conflict(format!("a service named {:?} already exists", s.job_name)));
        }
        let mut doc = s.clone();
        doc.instance_list.clear();
        exec(
            tx,
            "INSERT INTO services (id, seq, app_id, job_name, doc)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM services), ?2, ?3, ?4)",
            params![s.id, app_id, s.job_name, to_doc(&doc)?],
        )?;
        for inst in &s.instance_list {
            put_instance_tx(tx, &s.id, inst)?;
        }
    }
    Ok(())
}

fn put_instance_tx(tx: &Connection, service_id: &str, inst: &Instance) -> Result<()> {
    exec(
        tx,
        "INSERT INTO instances (service_id, instance_number, doc, cluster_id, status) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (service_id, instance_number)
         DO UPDATE SET doc = excluded.doc, cluster_id = excluded.cluster_id, status = excluded.status",
        params![service_id, inst.instance_number, to_doc(inst)?, inst.cluster_id, inst.status],
    )?;
    Ok(())
}

/// Raises the stored instance counter of a service past `numbers` (never lowers it), so that
/// after a restart no stored instance's number is handed out again.
fn counter_past_tx(tx: &Connection, service_id: &str, numbers: impl IntoIterator<Item = u32>) -> Result<()> {
    let Some(last) = numbers.into_iter().max() else { return Ok(()) };
    exec(
        tx,
        "UPDATE services SET doc = json_set(doc, '$.next_instance_progressive_number', ?2)
         WHERE id = ?1 AND COALESCE(json_extract(doc, '$.next_instance_progressive_number'), 0) < ?2",
        params![service_id, i64::from(last) + 1],
    )?;
    Ok(())
}

fn update_service_tx(tx: &Connection, s: &Service) -> Result<()> {
    if exists(tx, "SELECT 1 FROM services WHERE job_name = ?1 AND id <> ?2", params![s.job_name, s.id])? {
        return Err(StoreError::Conflict(format!("a service named {:?} already exists", s.job_name)));
    }
    let mut doc = s.clone();
    doc.instance_list.clear();
    // The instance counter never goes back: `s` may have been read before instances were added.
    let n = exec(
        tx,
        "UPDATE services SET job_name = ?2,
             doc = json_set(?3, '$.next_instance_progressive_number',
                 max(?4, COALESCE(json_extract(doc, '$.next_instance_progressive_number'), 0)))
         WHERE id = ?1",
        params![s.id, s.job_name, to_doc(&doc)?, s.next_instance_progressive_number],
    )?;
    expect_changed(n, || format!("service {}", s.id))
}

fn load_instances(conn: &Connection, service: &mut Service) -> Result<()> {
    service.instance_list = query_docs(
        conn,
        "SELECT doc FROM instances WHERE service_id = ?1 ORDER BY instance_number",
        params![service.id],
    )?;
    Ok(())
}

fn update_app_tx(tx: &Connection, app: &Application) -> Result<()> {
    check_app_unique(tx, app)?;
    let n = exec(
        tx,
        "UPDATE applications SET name = ?2, namespace = ?3, doc = ?4 WHERE id = ?1",
        params![app.id, app.application_name, app.application_namespace, to_doc(app)?],
    )?;
    expect_changed(n, || format!("application {}", app.id))
}

impl RootStore for SqliteStore {
    fn insert_user(&self, user: &UserRecord) -> Result<()> {
        let user = user.to_owned();
        self.write_accounts(move |tx| {
            let user = &user;

            if exists(tx, "SELECT 1 FROM users WHERE name = ?1", params![user.name])? {
                return Err(StoreError::Conflict(format!("a user named {:?} already exists", user.name)));
            }
            exec(
                tx,
                "INSERT INTO users (id, name, doc) VALUES (?1, ?2, ?3)",
                params![user.id, user.name, to_doc(user)?],
            )?;
            Ok(())
        })
    }

    fn update_user(&self, user: &UserRecord) -> Result<()> {
        let user = user.to_owned();
        self.write_accounts(move |tx| {
            let user = &user;

            let old: UserRecord = query_doc(tx, "SELECT doc FROM users WHERE id = ?1", params![user.id])?
                .ok_or_else(|| StoreError::NotFound(format!("user {}", user.name)))?;
            exec(tx, "UPDATE users SET name = ?2, doc = ?3 WHERE id = ?1", params![user.id, user.name, to_doc(user)?])?;
            if old.password_hash != user.password_hash {
                revoke_tokens(tx, [&user.id])?;
            }
            Ok(())
        })
    }

    fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>> {
        let users =
            self.read(|c| query_users(c, "SELECT doc, token_generation FROM users WHERE name = ?1", params![name]))?;
        Ok(users.into_iter().next())
    }

    fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>> {
        self.users.get_or_read(id, || {
            let users =
                self.read(|c| query_users(c, "SELECT doc, token_generation FROM users WHERE id = ?1", params![id]))?;
            Ok(users.into_iter().next())
        })
    }

    fn list_users(&self) -> Result<Vec<UserRecord>> {
        self.read(|c| query_users(c, "SELECT doc, token_generation FROM users ORDER BY rowid", []))
    }

    fn delete_user(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.write_accounts(move |tx| {
            let name = &name;

            let user: UserRecord = query_doc(tx, "SELECT doc FROM users WHERE name = ?1", params![name])?
                .ok_or_else(|| StoreError::NotFound(format!("user {name:?}")))?;
            let orgs: Vec<Organization> = query_docs(tx, "SELECT doc FROM organizations", [])?;
            for mut org in orgs {
                let before = org.member.len();
                org.member.retain(|m| m.user_id != user.id);
                if org.member.len() != before {
                    exec(tx, "UPDATE organizations SET doc = ?2 WHERE id = ?1", params![org.id, to_doc(&org)?])?;
                }
            }
            exec(tx, "DELETE FROM users WHERE id = ?1", params![user.id])?;
            Ok(())
        })
    }

    fn insert_organization(&self, org: &Organization) -> Result<()> {
        let org = org.to_owned();
        self.write_accounts(move |tx| {
            let org = &org;

            if exists(tx, "SELECT 1 FROM organizations WHERE name = ?1", params![org.name])? {
                return Err(StoreError::Conflict(format!("an organization named {:?} already exists", org.name)));
            }
            exec(
                tx,
                "INSERT INTO organizations (id, name, doc) VALUES (?1, ?2, ?3)",
                params![org.id, org.name, to_doc(org)?],
            )?;
            Ok(())
        })
    }

    fn update_organization(&self, org: &Organization) -> Result<()> {
        let org = org.to_owned();
        self.write_accounts(move |tx| {
            let org = &org;

            if exists(tx, "SELECT 1 FROM organizations WHERE name = ?1 AND id <> ?2", params![org.name, org.id])? {
                return Err(StoreError::Conflict(format!("an organization named {:?} already exists", org.name)));
            }
            let old: Option<Organization> =
                query_doc(tx, "SELECT doc FROM organizations WHERE id = ?1", params![org.id])?;
            if let Some(old) = &old {
                revoke_tokens(tx, members_losing_roles(old, Some(org)))?;
            }
            let n = exec(
                tx,
                "UPDATE organizations SET name = ?2, doc = ?3 WHERE id = ?1",
                params![org.id, org.name, to_doc(org)?],
            )?;
            expect_changed(n, || format!("organization {}", org.id))
        })
    }

    fn organization_by_id(&self, id: &str) -> Result<Option<Organization>> {
        self.orgs
            .get_or_read(id, || self.read(|c| query_doc(c, "SELECT doc FROM organizations WHERE id = ?1", params![id])))
    }

    fn organization_by_name(&self, name: &str) -> Result<Option<Organization>> {
        self.read(|c| query_doc(c, "SELECT doc FROM organizations WHERE name = ?1", params![name]))
    }

    fn list_organizations(&self) -> Result<Vec<Organization>> {
        self.read(|c| query_docs(c, "SELECT doc FROM organizations ORDER BY rowid", []))
    }

    fn delete_organization(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.write_accounts(move |tx| {
            let id = &id;

            let old: Option<Organization> = query_doc(tx, "SELECT doc FROM organizations WHERE id = ?1", params![id])?;
            if let Some(old) = &old {
                revoke_tokens(tx, members_losing_roles(old, None))?;
            }
            let n = exec(tx, "DELETE FROM organizations WHERE id = ?1", params![id])?;
            expect_changed(n, || format!("organization {id}"))
        })
    }

    fn create_application(&self, app: &Application, services: &[Service]) -> Result<()> {
        let (app, services) = (app.to_owned(), services.to_owned());
        self.write_specs(move |tx| {
            let (app, services) = (&app, &services);

            check_app_unique(tx, app)?;
            exec(
                tx,
                "INSERT INTO applications (id, seq, owner, name, namespace, doc)
                 VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM applications), ?2, ?3, ?4, ?5)",
                params![app.id, app.user_id, app.application_name, app.application_namespace, to_doc(app)?],
            )?;
            insert_services(tx, &app.id, services)
        })
    }

    fn update_application(&self, app: &Application) -> Result<()> {
        let app = app.to_owned();
        self.write_specs(move |tx| {
            let app = &app;
            update_app_tx(tx, app)
        })
    }

    fn update_application_with_services(&self, app: &Application, services: &[Service]) -> Result<()> {
        let (app, services) = (app.to_owned(), services.to_owned());
        self.write_specs(move |tx| {
            let (app, services) = (&app, &services);

            update_app_tx(tx, app)?;
            services.iter().try_for_each(|s| update_service_tx(tx, s))
        })
    }

    fn application(&self, id: &str) -> Result<Option<Application>> {
        self.read(|c| query_doc(c, "SELECT doc FROM applications WHERE id = ?1", params![id]))
    }

    fn list_applications(&self, owner: Option<&str>) -> Result<Vec<Application>> {
        self.read(|conn| match owner {
            Some(o) => query_docs(conn, "SELECT doc FROM applications WHERE owner = ?1 ORDER BY seq", params![o]),
            None => query_docs(conn, "SELECT doc FROM applications ORDER BY seq", []),
        })
    }

    fn delete_application(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.write_specs(move |tx| {
            let id = &id;

            let services: Vec<String> = tx
                .prepare_cached("SELECT id FROM services WHERE app_id = ?1")?
                .query_map(params![id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            // Instances and services go with it (ON DELETE CASCADE).
            let n = exec(tx, "DELETE FROM applications WHERE id = ?1", params![id])?;
            expect_changed(n, || format!("application {id}"))?;
            Ok(services)
        })
        .map(|services| self.forget_numbers(&services))
    }

    fn add_services(&self, app_id: &str, services: &[Service]) -> Result<()> {
        let (app_id, services) = (app_id.to_owned(), services.to_owned());
        self.write_specs(move |tx| {
            let (app_id, services) = (&app_id, &services);

            let mut app: Application = query_doc(tx, "SELECT doc FROM applications WHERE id = ?1", params![app_id])?
                .ok_or_else(|| StoreError::NotFound(format!("application {app_id}")))?;
            insert_services(tx, app_id, services)?;
            app.microservices.extend(services.iter().map(|s| s.id.clone()));
            update_app_tx(tx, &app)
        })
    }

    fn update_service(&self, service: &Service) -> Result<()> {
        let service = service.to_owned();
        self.write_specs(move |tx| {
            let service = &service;
            update_service_tx(tx, service)
        })
    }

    fn service(&self, id: &str) -> Result<Option<Service>> {
        self.read(|conn| {
            let mut service: Option<Service> = query_doc(conn, "SELECT doc FROM services WHERE id = ?1", params![id])?;
            if let Some(s) = service.as_mut() {
                load_instances(conn, s)?;
            }
            Ok(service)
        })
    }

    fn service_spec(&self, id: &str) -> Result<Option<Service>> {
        self.read(|c| query_doc(c, "SELECT doc FROM services WHERE id = ?1", params![id]))
    }

    fn service_spec_with_application(&self, id: &str) -> Result<Option<SpecWithApplication>> {
        self.specs.get_or_read(id, || {
            self.read(|c| {
                let Some(service) = query_doc::<Service>(c, "SELECT doc FROM services WHERE id = ?1", params![id])?
                else {
                    return Ok(None);
                };
                let app = query_doc(c, "SELECT doc FROM applications WHERE id = ?1", params![service.application_id])?;
                Ok(Some(Arc::new((service, app))))
            })
        })
    }

    fn service_by_job_name(&self, job_name: &str) -> Result<Option<Service>> {
        self.read(|conn| {
            let mut service: Option<Service> =
                query_doc(conn, "SELECT doc FROM services WHERE job_name = ?1", params![job_name])?;
            if let Some(s) = service.as_mut() {
                load_instances(conn, s)?;
            }
            Ok(service)
        })
    }

    fn list_services(&self, app_id: Option<&str>) -> Result<Vec<Service>> {
        self.read(|conn| {
            let mut services: Vec<Service> = match app_id {
                Some(a) => query_docs(conn, "SELECT doc FROM services WHERE app_id = ?1 ORDER BY seq", params![a])?,
                None => query_docs(conn, "SELECT doc FROM services ORDER BY seq", [])?,
            };
            for s in &mut services {
                load_instances(conn, s)?;
            }
            Ok(services)
        })
    }

    fn services_with_rr_ip(&self, ip: &str) -> Result<Vec<(String, String)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, job_name FROM services WHERE json_extract(doc, '$.RR_ip') = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![ip], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn owner_usage(&self, owner: &str) -> Result<OwnerUsage> {
        self.read(|conn| {
            let (services, closest_ips): (i64, i64) = conn
                .prepare_cached(
                    "SELECT COUNT(*), COALESCE(SUM(json_extract(s.doc, '$.closest_ip') IS NOT NULL), 0)
                 FROM services s JOIN applications a ON s.app_id = a.id WHERE a.owner = ?1",
                )?
                .query_row(params![owner], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let instances: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM instances i JOIN services s ON i.service_id = s.id
                     JOIN applications a ON s.app_id = a.id WHERE a.owner = ?1",
                )?
                .query_row(params![owner], |r| r.get(0))?;
            Ok(OwnerUsage {
                services: services as usize,
                instances: instances as usize,
                closest_ips: closest_ips as usize,
            })
        })
    }

    fn delete_service(&self, id: &str) -> Result<()> {
        let deleted = [id.to_owned()];
        let id = id.to_owned();
        self.write_specs(move |tx| {
            let id = &id;

            let app_id: Option<String> =
                tx.query_row("SELECT app_id FROM services WHERE id = ?1", params![id], |r| r.get(0)).optional()?;
            let app_id = app_id.ok_or_else(|| StoreError::NotFound(format!("service {id}")))?;
            exec(tx, "DELETE FROM services WHERE id = ?1", params![id])?;
            if let Some(mut app) =
                query_doc::<Application>(tx, "SELECT doc FROM applications WHERE id = ?1", params![app_id])?
            {
                app.microservices.retain(|s| s != id);
                exec(tx, "UPDATE applications SET doc = ?2 WHERE id = ?1", params![app.id, to_doc(&app)?])?;
            }
            Ok(())
        })?;
        self.forget_numbers(&deleted);
        Ok(())
    }

    fn put_instance(&self, service_id: &str, instance: &Instance) -> Result<()> {
        let (service_id, instance) = (service_id.to_owned(), instance.to_owned());
        self.write_batched(move |tx| {
            let (service_id, instance) = (&service_id, &instance);
            put_instance_tx(tx, service_id, instance)?;
            counter_past_tx(tx, service_id, [instance.instance_number])
        })
    }

    fn put_instances(&self, service_id: &str, instances: &[Instance]) -> Result<()> {
        self.write_batched(insert_instances(service_id, instances))
    }

    fn put_instances_then(&self, service_id: &str, instances: &[Instance], done: crate::Done<()>) {
        self.enqueue_then(insert_instances(service_id, instances), done);
    }

    fn delete_instance(&self, service_id: &str, instance_number: u32) -> Result<()> {
        let service_id = service_id.to_owned();
        self.write_batched(move |tx| {
            let service_id = &service_id;

            let n = exec(
                tx,
                "DELETE FROM instances WHERE service_id = ?1 AND instance_number = ?2",
                params![service_id, instance_number],
            )?;
            expect_changed(n, || format!("instance {instance_number} of service {service_id}"))
        })
    }

    fn put_service_and_instance(&self, service: &Service, instance: &Instance) -> Result<()> {
        let (service, instance) = (service.to_owned(), instance.to_owned());
        self.write_specs(move |tx| {
            let (service, instance) = (&service, &instance);

            update_service_tx(tx, service)?;
            put_instance_tx(tx, &service.id, instance)
        })
    }

    fn list_clusters(&self) -> Result<Vec<Cluster>> {
        self.read(|c| query_docs(c, "SELECT doc FROM clusters ORDER BY rowid", []))
    }

    fn allocate_instance_numbers(&self, service_id: &str, count: u32) -> Result<std::ops::Range<u32>> {
        // Handed out in memory, under one lock: every number this process gives is taken here,
        // so the stored counter is only read once per service (it holds what earlier processes
        // stored). Numbers whose instances were never stored may be handed out again after a
        // restart, which nobody can tell apart.
        let mut numbers = self.next_numbers.lock().unwrap_or_else(|e| e.into_inner());
        let next = match numbers.get(service_id) {
            Some(&next) => next,
            None => {
                let stored: Option<i64> = self.read(|c| {
                    Ok(c.prepare_cached(
                        "SELECT COALESCE(json_extract(doc, '$.next_instance_progressive_number'), 0)
                         FROM services WHERE id = ?1",
                    )?
                    .query_row(params![service_id], |r| r.get(0))
                    .optional()?)
                })?;
                let stored = stored.ok_or_else(|| StoreError::NotFound(format!("service {service_id}")))?;
                u32::try_from(stored)
                    .map_err(|_| StoreError::Corrupt(format!("service {service_id} has instance counter {stored}")))?
            }
        };
        let end = next.checked_add(count).ok_or_else(|| {
            StoreError::Conflict(format!("service {service_id} has used up its instance numbers ({next} taken)"))
        })?;
        numbers.insert(service_id.to_owned(), end);
        Ok(next..end)
    }

    fn put_cluster(&self, cluster: &Cluster) -> Result<()> {
        let cluster = cluster.to_owned();
        self.write_batched(move |tx| {
            let cluster = &cluster;

            if exists(
                tx,
                "SELECT 1 FROM clusters WHERE name = ?1 AND id <> ?2",
                params![cluster.cluster_name, cluster.id],
            )? {
                return Err(StoreError::Conflict(format!("a cluster named {:?} already exists", cluster.cluster_name)));
            }
            exec(
                tx,
                "INSERT INTO clusters (id, name, doc) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, doc = excluded.doc",
                params![cluster.id, cluster.cluster_name, to_doc(cluster)?],
            )?;
            Ok(())
        })
    }

    fn cluster(&self, id: &str) -> Result<Option<Cluster>> {
        self.read(|c| query_doc(c, "SELECT doc FROM clusters WHERE id = ?1", params![id]))
    }

    fn cluster_by_name(&self, name: &str) -> Result<Option<Cluster>> {
        self.read(|c| query_doc(c, "SELECT doc FROM clusters WHERE name = ?1", params![name]))
    }

    fn cluster_instances(&self, cluster_id: &str) -> Result<Vec<Service>> {
        self.read(|conn| {
            let mut services: Vec<Service> = query_docs(
                conn,
                "SELECT doc FROM services WHERE id IN (SELECT DISTINCT service_id FROM instances WHERE cluster_id = ?1)
             ORDER BY seq",
                params![cluster_id],
            )?;
            for s in &mut services {
                s.instance_list = query_docs(
                    conn,
                    "SELECT doc FROM instances WHERE service_id = ?1 AND cluster_id = ?2 ORDER BY instance_number",
                    params![s.id, cluster_id],
                )?;
            }
            Ok(services)
        })
    }

    fn service_placements(&self, service_id: &str) -> Result<Vec<(u32, String, String)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
            "SELECT instance_number, cluster_id, status FROM instances WHERE service_id = ?1 AND cluster_id IS NOT NULL
             ORDER BY instance_number",
        )?;
            let rows = stmt.query_map(params![service_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn instances_in_status(&self, statuses: &[&str]) -> Result<Vec<(String, u32)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT service_id, instance_number FROM instances WHERE status IN (SELECT value FROM json_each(?1))
             ORDER BY service_id, instance_number",
            )?;
            let list = serde_json::to_string(statuses).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let rows = stmt.query_map(params![list], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn update_instances(
        &self,
        keys: &[(String, u32)],
        change: &mut dyn FnMut(usize, &mut Instance) -> bool,
    ) -> Result<Vec<bool>> {
        self.write(|tx| update_instances_tx(tx, keys, change))
    }

    fn update_instances_then(&self, keys: Vec<(String, u32)>, mut change: crate::Change, done: crate::Done<Vec<bool>>) {
        self.enqueue_then(move |tx| update_instances_tx(tx, &keys, &mut change), done);
    }

    fn subnets(&self) -> Result<Vec<SubnetRecord>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT cluster_id, node_id, subnet FROM subnets ORDER BY rowid")?;
            let rows = stmt
                .query_map([], |r| Ok(SubnetRecord { cluster_id: r.get(0)?, node_id: r.get(1)?, subnet: r.get(2)? }))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn put_subnet(&self, record: &SubnetRecord) -> Result<()> {
        let record = record.to_owned();
        self.write_batched(move |tx| {
            let record = &record;

            if exists(
                tx,
                "SELECT 1 FROM subnets WHERE subnet = ?1 AND NOT (cluster_id = ?2 AND node_id = ?3)",
                params![record.subnet, record.cluster_id, record.node_id],
            )? {
                return Err(StoreError::Conflict(format!("subnet {} is given to another node", record.subnet)));
            }
            exec(
                tx,
                "INSERT INTO subnets (cluster_id, node_id, subnet) VALUES (?1, ?2, ?3)
                 ON CONFLICT (cluster_id, node_id) DO UPDATE SET subnet = excluded.subnet",
                params![record.cluster_id, record.node_id, record.subnet],
            )?;
            Ok(())
        })
    }

    fn delete_subnets(&self, cluster_id: &str, node_ids: &[String]) -> Result<()> {
        let (cluster_id, node_ids) = (cluster_id.to_owned(), node_ids.to_owned());
        self.write_batched(move |tx| {
            let (cluster_id, node_ids) = (&cluster_id, &node_ids);

            for node in node_ids {
                exec(tx, "DELETE FROM subnets WHERE cluster_id = ?1 AND node_id = ?2", params![cluster_id, node])?;
            }
            Ok(())
        })
    }

    fn add_cluster_token(&self, t: &ClusterTokenRecord) -> Result<()> {
        let t = t.to_owned();
        self.write_batched(move |tx| {
            let t = &t;

            exec(
                tx,
                "INSERT INTO cluster_tokens (hash, created_at, id, expires_at, reusable, uses, revoked)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (hash) DO NOTHING",
                params![t.hash, t.created_at, t.id, t.expires_at, t.reusable, t.uses as i64, t.revoked],
            )?;
            Ok(())
        })
    }

    fn cluster_token(&self, hash: &str) -> Result<Option<ClusterTokenRecord>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!("{TOKEN_COLUMNS} WHERE hash = ?1"))?;
            Ok(stmt.query_row(params![hash], token_row).optional()?)
        })
    }

    fn list_cluster_tokens(&self) -> Result<Vec<ClusterTokenRecord>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!("{TOKEN_COLUMNS} WHERE id <> '' ORDER BY created_at, id"))?;
            let rows = stmt.query_map([], token_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn use_cluster_token(&self, hash: &str) -> Result<bool> {
        let hash = hash.to_owned();
        self.write_batched(move |tx| {
let hash = &hash;

            let n = exec(
                tx,
                "UPDATE cluster_tokens SET uses = uses + 1 WHERE hash = ?1 AND revoked = 0 AND (reusable <> 0 OR uses = 0)",
                params![hash],
            )?;
            Ok(n == 1)
        })
    }

    fn revoke_cluster_token(&self, hash_or_id: &str) -> Result<usize> {
        if hash_or_id.is_empty() {
            return Ok(0);
        }
        let hash_or_id = hash_or_id.to_owned();
        self.write_batched(move |tx| {
            let hash_or_id = &hash_or_id;

            Ok(exec(tx, "UPDATE cluster_tokens SET revoked = 1 WHERE hash = ?1 OR id = ?1", params![hash_or_id])?)
        })
    }

    fn set_cluster_cert(&self, cluster_id: &str, fingerprint: &str) -> Result<()> {
        let (cluster_id, fingerprint) = (cluster_id.to_owned(), fingerprint.to_owned());
        self.write_batched(move |tx| {
            let (cluster_id, fingerprint) = (&cluster_id, &fingerprint);

            exec(
                tx,
                "INSERT INTO cluster_certs (cluster_id, fingerprint) VALUES (?1, ?2)
                 ON CONFLICT (cluster_id) DO UPDATE SET fingerprint = excluded.fingerprint",
                params![cluster_id, fingerprint],
            )?;
            Ok(())
        })
    }

    fn cluster_cert(&self, cluster_id: &str) -> Result<Option<String>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT fingerprint FROM cluster_certs WHERE cluster_id = ?1")?;
            Ok(stmt.query_row(params![cluster_id], |r| r.get(0)).optional()?)
        })
    }

    fn cluster_by_cert(&self, fingerprint: &str) -> Result<Option<String>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT cluster_id FROM cluster_certs WHERE fingerprint = ?1")?;
            Ok(stmt.query_row(params![fingerprint], |r| r.get(0)).optional()?)
        })
    }

    fn forget_cluster_cert(&self, cluster_id: &str) -> Result<bool> {
        let cluster_id = cluster_id.to_owned();
        self.write_batched(move |tx| {
            let cluster_id = &cluster_id;
            Ok(exec(tx, "DELETE FROM cluster_certs WHERE cluster_id = ?1", params![cluster_id])? == 1)
        })
    }

    fn meta(&self, key: &str) -> Result<Option<String>> {
        self.read(|c| {
            Ok(c.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| r.get(0)).optional()?)
        })
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write_batched(move |tx| {
            let (key, value) = (&key, &value);

            exec(
                tx,
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("root.db")).unwrap();
        (dir, store)
    }

    fn set(key: &'static str, value: &'static str) -> impl FnOnce(&Transaction<'_>) -> Result<()> + Send + 'static {
        move |tx| {
            exec(tx, "INSERT INTO meta (key, value) VALUES (?1, ?2)", params![key, value])?;
            Ok(())
        }
    }

    #[test]
    fn queued_changes_commit_together_and_a_failing_one_alone_is_undone() {
        let (_dir, store) = store();
        // While the writer connection is held, the writer thread can run nothing: everything
        // queued meanwhile goes into its next batch.
        let held = store.writer();
        let a = store.enqueue(set("a", "1"));
        // Writes a row, then fails: its row must not survive, the others' must.
        let bad = store.enqueue(|tx| -> Result<()> {
            exec(tx, "INSERT INTO meta (key, value) VALUES ('bad', 'x')", [])?;
            Err(StoreError::Conflict("refused".into()))
        });
        let dup = store.enqueue(set("a", "again"));
        let b = store.enqueue(set("b", "2"));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(a.try_recv().is_err(), "nothing is answered before the commit");
        drop(held);
        assert!(a.recv().unwrap().is_ok());
        assert_eq!(store.group_commits(), 1, "one transaction for the four changes");
        assert!(matches!(bad.recv().unwrap(), Err(StoreError::Conflict(m)) if m == "refused"));
        assert!(matches!(dup.recv().unwrap(), Err(StoreError::Db(_))), "unique key");
        assert!(b.recv().unwrap().is_ok());
        assert_eq!(store.meta("a").unwrap().as_deref(), Some("1"));
        assert_eq!(store.meta("b").unwrap().as_deref(), Some("2"));
        assert_eq!(store.meta("bad").unwrap(), None);
        assert_eq!(store.group_commits(), 1, "nothing queued, nothing committed");
    }

    #[test]
    fn lookups_by_address_and_owner_use_indexes() {
        let (_dir, store) = store();
        let plan = |sql: &str| -> String {
            let conn = store.writer();
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = stmt.query_map(["x"], |r| r.get::<_, String>(3)).unwrap();
            rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
        };
        let rr = plan("SELECT id, job_name FROM services WHERE json_extract(doc, '$.RR_ip') = ?1 ORDER BY seq");
        assert!(rr.contains("USING INDEX services_rr_ip"), "{rr}");
        let owner = plan(
            "SELECT COUNT(*) FROM instances i JOIN services s ON i.service_id = s.id
             JOIN applications a ON s.app_id = a.id WHERE a.owner = ?1",
        );
        assert!(!owner.contains("SCAN i") && !owner.contains("SCAN instances"), "{owner}");
    }

    #[test]
    fn durability_full_sets_synchronous_full() {
        let dir = tempfile::tempdir().unwrap();
        let full = SqliteStore::open_with(&dir.path().join("full.db"), Durability::Full).unwrap();
        let normal = SqliteStore::open(&dir.path().join("normal.db")).unwrap();
        let sync =
            |s: &SqliteStore| -> i64 { s.writer().pragma_query_value(None, "synchronous", |r| r.get(0)).unwrap() };
        assert_eq!((sync(&full), sync(&normal)), (2, 1));
        full.set_meta("k", "v").unwrap();
        assert_eq!(full.meta("k").unwrap().as_deref(), Some("v"));
    }

    #[test]
    fn read_connections_keep_a_small_page_cache() {
        let (_dir, store) = store();
        store.set_meta("k", "v").unwrap();
        let cache = store.read(|c| Ok(c.pragma_query_value(None, "cache_size", |r| r.get::<_, i64>(0))?)).unwrap();
        assert_eq!(cache, -READER_CACHE_KIB);
        assert_eq!(store.meta("k").unwrap().as_deref(), Some("v"));
    }
}
