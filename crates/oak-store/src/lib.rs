//! Persistent state of the root orchestrator: the [`RootStore`] trait and its SQLite backend.
//!
//! The trait is what the root's logic sees, so another backend (e.g. PostgreSQL for an HA root)
//! can be added without touching it. Operations that must not leave half a change behind
//! (an application with its services, a deletion with everything under it) are single calls.

mod doc_cache;
mod migrations;
mod sqlite;

use oak_api::model::{Application, Cluster, Instance, Organization, Service};
use serde::{Deserialize, Serialize};

pub use sqlite::{Durability, SqliteStore};

/// A user account as stored: unlike [`oak_api::model::User`] it holds the password hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub created_at: String,
    /// Argon2 PHC string.
    pub password_hash: String,
    /// Tokens carry the generation they were issued at and are refused once it moved on. Kept
    /// in its own column (not the document) and bumped by the store itself whenever the
    /// password hash changes or the user loses a role, so no caller can forget to revoke.
    #[serde(skip)]
    pub token_generation: u64,
}

/// Counts of what one user's applications hold (for quotas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OwnerUsage {
    pub services: usize,
    pub instances: usize,
    /// Services that have a closest IP besides their round-robin IP.
    pub closest_ips: usize,
}

/// A worker's overlay subnet (`10.18.0.64/26`), given by the root to a node of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetRecord {
    pub cluster_id: String,
    pub node_id: String,
    pub subnet: String,
}

/// A cluster join token as stored: the hash of its secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTokenRecord {
    /// Short public id (a prefix of the hash) to name the token when revoking it.
    pub id: String,
    pub hash: String,
    pub created_at: String,
    /// Unix seconds after which the token is refused; `None` never expires.
    pub expires_at: Option<i64>,
    /// May join any number of clusters; otherwise only one.
    pub reusable: bool,
    /// Clusters that joined with it.
    pub uses: u64,
    pub revoked: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule would be broken; the message names the clashing value.
    #[error("{0}")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// The transaction holding the change could not begin or commit (a group commit answers
    /// every change in it with the reason).
    #[error("database commit failed: {0}")]
    Commit(String),
    #[error("stored document is corrupt: {0}")]
    Corrupt(String),
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A service without its instances, and the application it belongs to (if it still exists).
pub type SpecWithApplication = std::sync::Arc<(Service, Option<Application>)>;

/// Where the outcome of a change goes once it is committed or failed.
pub type Done<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// An edit of the instance at an index of the keys, answering whether to save it.
pub type Change = Box<dyn FnMut(usize, &mut Instance) -> bool + Send>;

/// Everything the root keeps across restarts.
pub trait RootStore: Send + Sync + 'static {
    // --- users ---
    fn insert_user(&self, user: &UserRecord) -> Result<()>;
    /// Stores the user's document; a changed password hash bumps its `token_generation` in the
    /// same transaction (the record's own `token_generation` is ignored).
    fn update_user(&self, user: &UserRecord) -> Result<()>;
    fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>>;
    fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>>;
    fn list_users(&self) -> Result<Vec<UserRecord>>;
    /// Deletes the user and their memberships in every organization.
    fn delete_user(&self, name: &str) -> Result<()>;

    // --- organizations ---
    fn insert_organization(&self, org: &Organization) -> Result<()>;
    /// Replaces an organization; members who lose a role (or their membership) get their
    /// `token_generation` bumped in the same transaction.
    fn update_organization(&self, org: &Organization) -> Result<()>;
    fn organization_by_id(&self, id: &str) -> Result<Option<Organization>>;
    fn organization_by_name(&self, name: &str) -> Result<Option<Organization>>;
    fn list_organizations(&self) -> Result<Vec<Organization>>;
    /// Deletes an organization; its members' `token_generation` is bumped (they lose its roles).
    fn delete_organization(&self, id: &str) -> Result<()>;

    // --- applications and services ---
    /// Inserts an application with its services, all or nothing.
    fn create_application(&self, app: &Application, services: &[Service]) -> Result<()>;
    fn update_application(&self, app: &Application) -> Result<()>;
    /// Updates an application and some of its services together (a rename changes job names).
    fn update_application_with_services(&self, app: &Application, services: &[Service]) -> Result<()>;
    fn application(&self, id: &str) -> Result<Option<Application>>;
    /// Applications of `owner`, or of everyone when `None`, oldest first.
    fn list_applications(&self, owner: Option<&str>) -> Result<Vec<Application>>;
    /// Deletes the application, its services and their instances.
    fn delete_application(&self, id: &str) -> Result<()>;

    /// Adds services to an existing application (and their ids to its `microservices`), all or nothing.
    fn add_services(&self, app_id: &str, services: &[Service]) -> Result<()>;
    /// Replaces a service document (its `instance_list` is ignored: instances have their own calls).
    fn update_service(&self, service: &Service) -> Result<()>;
    /// A service with its `instance_list`.
    fn service(&self, id: &str) -> Result<Option<Service>>;
    /// A service without loading its instances (`instance_list` empty): for hot paths that only
    /// need the descriptor.
    fn service_spec(&self, id: &str) -> Result<Option<Service>>;
    /// A service without its instances and the application it belongs to, read together (one
    /// read where the two calls would take two): the ownership check of every instance request.
    /// The SQLite store keeps them in memory until either changes, so the service's
    /// `next_instance_progressive_number` may be behind (instance numbers come from
    /// [`RootStore::allocate_instance_numbers`]).
    /// Shared, not copied: a service's descriptor and its application are big next to a request.
    fn service_spec_with_application(&self, id: &str) -> Result<Option<SpecWithApplication>> {
        let Some(service) = self.service_spec(id)? else { return Ok(None) };
        let app = self.application(&service.application_id)?;
        Ok(Some(std::sync::Arc::new((service, app))))
    }
    /// A service with its `instance_list`, by job name.
    fn service_by_job_name(&self, job_name: &str) -> Result<Option<Service>>;
    /// Services of one application, or all services when `None`.
    fn list_services(&self, app_id: Option<&str>) -> Result<Vec<Service>>;
    /// `(id, job name)` of the services whose round-robin IP is `ip` (an indexed lookup).
    fn services_with_rr_ip(&self, ip: &str) -> Result<Vec<(String, String)>>;
    /// What the applications of `owner` hold: services, instances, and services with a closest
    /// IP (counted in the store, without loading documents).
    fn owner_usage(&self, owner: &str) -> Result<OwnerUsage>;
    /// Deletes a service with its instances and removes it from its application.
    fn delete_service(&self, id: &str) -> Result<()>;

    /// Inserts or replaces one instance of a service.
    fn put_instance(&self, service_id: &str, instance: &Instance) -> Result<()>;
    /// Inserts or replaces several instances of a service, all or nothing.
    fn put_instances(&self, service_id: &str, instances: &[Instance]) -> Result<()>;
    /// [`RootStore::put_instances`] without waiting for it: `done` gets the outcome once the
    /// change is committed or failed. It runs on the store's writer thread, so it only hands the
    /// outcome on (an async caller awaits it instead of holding a thread).
    fn put_instances_then(&self, service_id: &str, instances: &[Instance], done: Done<()>);
    fn delete_instance(&self, service_id: &str, instance_number: u32) -> Result<()>;
    /// Updates the service document and one instance together.
    fn put_service_and_instance(&self, service: &Service, instance: &Instance) -> Result<()>;

    // --- clusters ---
    fn list_clusters(&self) -> Result<Vec<Cluster>>;
    /// Takes the next instance number of a service (atomically: concurrent requests never share
    /// a number).
    fn allocate_instance_number(&self, service_id: &str) -> Result<u32> {
        self.allocate_instance_numbers(service_id, 1).map(|r| r.start)
    }
    /// Takes the next `count` instance numbers of a service at once (atomically, as
    /// [`RootStore::allocate_instance_number`]).
    fn allocate_instance_numbers(&self, service_id: &str, count: u32) -> Result<std::ops::Range<u32>>;
    /// Creates or replaces a cluster (by id); names are unique.
    fn put_cluster(&self, cluster: &Cluster) -> Result<()>;
    fn cluster(&self, id: &str) -> Result<Option<Cluster>>;
    fn cluster_by_name(&self, name: &str) -> Result<Option<Cluster>>;
    /// Services with, in `instance_list`, only their instances assigned to `cluster_id`.
    fn cluster_instances(&self, cluster_id: &str) -> Result<Vec<Service>>;
    /// `(instance number, cluster id, status)` of every instance of `service_id` that has a
    /// cluster (what spreading over clusters counts).
    fn service_placements(&self, service_id: &str) -> Result<Vec<(u32, String, String)>>;
    /// `(service id, instance number)` of every instance whose status is one of `statuses`.
    fn instances_in_status(&self, statuses: &[&str]) -> Result<Vec<(String, u32)>>;
    /// Loads each instance named in `keys` and lets `change` edit it (returning whether to save),
    /// all in one transaction; answers which keys existed.
    fn update_instances(
        &self,
        keys: &[(String, u32)],
        change: &mut dyn FnMut(usize, &mut Instance) -> bool,
    ) -> Result<Vec<bool>>;
    /// [`RootStore::update_instances`] in the next group commit, without waiting: `done` gets
    /// the answer once it is committed (on the writer thread, as for
    /// [`RootStore::put_instances_then`]).
    fn update_instances_then(&self, keys: Vec<(String, u32)>, change: Change, done: Done<Vec<bool>>);

    // --- overlay subnets of workers ---
    /// Every subnet given to a node.
    fn subnets(&self) -> Result<Vec<SubnetRecord>>;
    /// Records a node's subnet; a subnet held by another node is a conflict.
    fn put_subnet(&self, record: &SubnetRecord) -> Result<()>;
    /// Forgets the subnets of these nodes of a cluster (unknown ones are ignored).
    fn delete_subnets(&self, cluster_id: &str, node_ids: &[String]) -> Result<()>;

    // --- cluster join tokens (stored as hashes of their secret) ---
    fn add_cluster_token(&self, token: &ClusterTokenRecord) -> Result<()>;
    fn cluster_token(&self, hash: &str) -> Result<Option<ClusterTokenRecord>>;
    fn list_cluster_tokens(&self) -> Result<Vec<ClusterTokenRecord>>;
    /// Counts one use of the token unless it is single-use and was used already; answers
    /// whether the use was granted (atomic, so two clusters cannot both use a single-use token).
    fn use_cluster_token(&self, hash: &str) -> Result<bool>;
    /// Revokes the tokens whose hash or short id is `hash_or_id`; answers how many.
    fn revoke_cluster_token(&self, hash_or_id: &str) -> Result<usize>;

    // --- cluster certificates (SHA-256 fingerprints, hex) ---
    /// Binds `cluster_id` to the certificate it authenticates with from now on (replacing any
    /// older one).
    fn set_cluster_cert(&self, cluster_id: &str, fingerprint: &str) -> Result<()>;
    fn cluster_cert(&self, cluster_id: &str) -> Result<Option<String>>;
    fn cluster_by_cert(&self, fingerprint: &str) -> Result<Option<String>>;
    /// Forgets a cluster's certificate (it may join again with a join token); answers whether
    /// it had one.
    fn forget_cluster_cert(&self, cluster_id: &str) -> Result<bool>;

    // --- small settings (key material, bootstrap markers) ---
    fn meta(&self, key: &str) -> Result<Option<String>>;
    fn set_meta(&self, key: &str, value: &str) -> Result<()>;
}
