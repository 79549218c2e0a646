//! Status strings of jobs and instances, exactly as the original emits them (spec §4.4).

pub const REQUESTED: &str = "REQUESTED";
pub const CLUSTER_SCHEDULED: &str = "CLUSTER_SCHEDULED";
pub const NODE_SCHEDULED: &str = "NODE_SCHEDULED";

pub const TARGET_CLUSTER_NOT_FOUND: &str = "TargetClusterNotFound";
pub const TARGET_CLUSTER_NOT_ACTIVE: &str = "TargetClusterNotActive";
pub const TARGET_CLUSTER_NO_CAPACITY: &str = "TargetClusterNoCapacity";
pub const NO_ACTIVE_CLUSTER_WITH_CAPACITY: &str = "NoActiveClusterWithCapacity";
pub const NO_WORKER_CAPACITY: &str = "NO_WORKER_CAPACITY";
pub const NO_QUALIFIED_WORKER_FOUND: &str = "NO_QUALIFIED_WORKER_FOUND";
pub const NO_NODE_FOUND: &str = "NO_NODE_FOUND";

pub const CREATING: &str = "CREATING";
pub const CREATED: &str = "CREATED";
pub const RUNNING: &str = "RUNNING";
pub const FAILED: &str = "FAILED";
pub const DEAD: &str = "DEAD";
pub const COMPLETED: &str = "COMPLETED";
pub const UNDEPLOYED: &str = "UNDEPLOYED";

/// Negative scheduling outcomes: the instance waits for capacity and is retried.
pub const NEGATIVE_SCHEDULING: &[&str] = &[
    TARGET_CLUSTER_NOT_FOUND,
    TARGET_CLUSTER_NOT_ACTIVE,
    TARGET_CLUSTER_NO_CAPACITY,
    NO_ACTIVE_CLUSTER_WITH_CAPACITY,
    NO_WORKER_CAPACITY,
    NO_QUALIFIED_WORKER_FOUND,
    NO_NODE_FOUND,
];

/// The four roles a user can hold in an organization.
pub mod role {
    pub const ADMIN: &str = "Admin";
    pub const ORGANIZATION_ADMIN: &str = "Organization_Admin";
    pub const APPLICATION_PROVIDER: &str = "Application_Provider";
    pub const INFRASTRUCTURE_PROVIDER: &str = "Infrastructure_Provider";
    pub const ALL: &[&str] = &[ADMIN, ORGANIZATION_ADMIN, APPLICATION_PROVIDER, INFRASTRUCTURE_PROVIDER];
}
