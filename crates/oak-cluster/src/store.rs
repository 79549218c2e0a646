//! The cluster's durable state in `<data_dir>/cluster.db` (SQLite, WAL): registered nodes, the
//! instances the root gave this cluster with their placement, and a few settings. The control
//! loop keeps the working copy in memory and writes changes here in batches, so a restarted
//! cluster knows its nodes and instances.

use std::path::Path;
use std::sync::Mutex;

use oak_api::node::{JobSpec, NodeInfo};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("stored document is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("database schema version {0} is newer than this program knows")]
    TooNew(i64),
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A registered worker as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// Hash of the node's MQTT password.
    pub secret_hash: String,
    pub info: NodeInfo,
    /// The node's overlay subnet from the root (`10.18.0.64/26`), kept for the node's life.
    #[serde(default)]
    pub subnet: String,
}

/// An instance as stored: the job it belongs to and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub job: JobSpec,
    pub instance_number: u32,
    pub status: String,
    pub status_detail: String,
    pub worker_id: Option<String>,
    /// Placement attempts that failed so far (drives the back-off).
    pub attempts: u32,
    /// The instance's service IP from the root.
    #[serde(default)]
    pub instance_ip: Option<String>,
    /// Its address on its worker's overlay bridge, while it is there.
    #[serde(default)]
    pub namespace_ip: Option<String>,
}

/// Each entry moves the schema from version `i` to `i + 1`. Never edit a released entry: append.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE nodes (
        id  TEXT PRIMARY KEY,
        doc TEXT NOT NULL
    );
    CREATE TABLE instances (
        job_id          TEXT NOT NULL,
        instance_number INTEGER NOT NULL,
        doc             TEXT NOT NULL,
        PRIMARY KEY (job_id, instance_number)
    );
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 2: ids of nodes forgotten after a long silence (they must register as new nodes)
    r#"
    CREATE TABLE forgotten_nodes (
        id TEXT PRIMARY KEY
    );
    "#,
];

pub struct ClusterStore {
    conn: Mutex<Connection>,
}

/// One batch of changes, written in a single transaction.
#[derive(Debug, Default)]
pub struct Batch {
    pub nodes: Vec<NodeRecord>,
    pub instances: Vec<InstanceRecord>,
    pub removed: Vec<(String, u32)>,
    /// Nodes to delete and remember as forgotten.
    pub forgotten: Vec<String>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.instances.is_empty() && self.removed.is_empty() && self.forgotten.is_empty()
    }
}

/// SQLite's page cache for the cluster store, in KiB.
const PAGE_CACHE_KIB: i64 = 256;

impl ClusterStore {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // The cluster's state lives in memory ([`crate::state::ClusterState`]); this file is
        // written and read back only at start, so SQLite's default 2 MiB page cache would hold a
        // second copy of it. Pages it misses come from the kernel's cache.
        conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version as usize > MIGRATIONS.len() {
            return Err(StoreError::TooNew(version));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(ClusterStore { conn: Mutex::new(conn) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>> {
        self.docs("SELECT doc FROM nodes ORDER BY id")
    }

    pub fn instances(&self) -> Result<Vec<InstanceRecord>> {
        self.docs("SELECT doc FROM instances ORDER BY job_id, instance_number")
    }

    fn docs<T: serde::de::DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
        rows.iter().map(|d| serde_json::from_str(d).map_err(StoreError::from)).collect()
    }

    pub fn put_node(&self, node: &NodeRecord) -> Result<()> {
        self.write(Batch { nodes: vec![node.clone()], ..Default::default() })
    }

    /// Writes a batch all-or-nothing. Statements come from the connection's cache: the control
    /// loop writes a batch at nearly every step, and preparing them each time was a quarter of it.
    pub fn write(&self, batch: Batch) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for n in &batch.nodes {
            tx.prepare_cached(
                "INSERT INTO nodes (id, doc) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
            )?
            .execute(params![n.id, serde_json::to_string(n)?])?;
        }
        for i in &batch.instances {
            tx.prepare_cached(
                "INSERT INTO instances (job_id, instance_number, doc) VALUES (?1, ?2, ?3)
                 ON CONFLICT (job_id, instance_number) DO UPDATE SET doc = excluded.doc",
            )?
            .execute(params![i.job.id, i.instance_number, serde_json::to_string(i)?])?;
        }
        for (job, n) in &batch.removed {
            tx.prepare_cached("DELETE FROM instances WHERE job_id = ?1 AND instance_number = ?2")?
                .execute(params![job, n])?;
        }
        for id in &batch.forgotten {
            tx.prepare_cached("DELETE FROM nodes WHERE id = ?1")?.execute(params![id])?;
            tx.prepare_cached("INSERT INTO forgotten_nodes (id) VALUES (?1) ON CONFLICT (id) DO NOTHING")?
                .execute(params![id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether a node of this id was forgotten (its worker must register anew).
    pub fn is_forgotten(&self, id: &str) -> Result<bool> {
        let found: Option<i64> = self
            .lock()
            .query_row("SELECT 1 FROM forgotten_nodes WHERE id = ?1", params![id], |r| r.get(0))
            .optional()?;
        Ok(found.is_some())
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.lock().query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| r.get(0)).optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.lock().execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store keeps a small page cache (the state it holds is in memory anyway) and still
    /// reads back what it wrote after reopening.
    #[test]
    fn the_page_cache_is_small_and_writes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.db");
        let store = ClusterStore::open(&path).unwrap();
        let cache: i64 = store.lock().pragma_query_value(None, "cache_size", |r| r.get(0)).unwrap();
        assert_eq!(cache, -PAGE_CACHE_KIB);
        store.set_meta("k", "v").unwrap();
        drop(store);
        assert_eq!(ClusterStore::open(&path).unwrap().meta("k").unwrap().as_deref(), Some("v"));
    }
}
