//! Versioned schema migrations, applied in order at open; `PRAGMA user_version` records the last.

/// Each entry moves the schema from version `i` to `i + 1`. Never edit a released entry: append.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: users, organizations, applications, services, instances, clusters, settings
    r#"
    CREATE TABLE users (
        id   TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        doc  TEXT NOT NULL
    );
    CREATE TABLE organizations (
        id   TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        doc  TEXT NOT NULL
    );
    CREATE TABLE applications (
        id        TEXT PRIMARY KEY,
        seq       INTEGER NOT NULL,
        owner     TEXT NOT NULL,
        name      TEXT NOT NULL,
        namespace TEXT NOT NULL,
        doc       TEXT NOT NULL,
        UNIQUE (owner, name, namespace)
    );
    CREATE TABLE services (
        id       TEXT PRIMARY KEY,
        seq      INTEGER NOT NULL,
        app_id   TEXT NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
        job_name TEXT NOT NULL UNIQUE,
        doc      TEXT NOT NULL
    );
    CREATE INDEX services_app ON services(app_id);
    CREATE TABLE instances (
        service_id      TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
        instance_number INTEGER NOT NULL,
        doc             TEXT NOT NULL,
        PRIMARY KEY (service_id, instance_number)
    );
    CREATE TABLE clusters (
        id   TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        doc  TEXT NOT NULL
    );
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 2: instance columns for the cluster channel (lookups by cluster and by status), join tokens
    r#"
    ALTER TABLE instances ADD COLUMN cluster_id TEXT;
    ALTER TABLE instances ADD COLUMN status TEXT NOT NULL DEFAULT '';
    UPDATE instances SET cluster_id = json_extract(doc, '$.cluster_id'),
                         status = COALESCE(json_extract(doc, '$.status'), '');
    CREATE INDEX instances_cluster ON instances(cluster_id);
    CREATE INDEX instances_status ON instances(status);
    CREATE TABLE cluster_tokens (
        hash       TEXT PRIMARY KEY,
        created_at TEXT NOT NULL
    );
    "#,
    // 3: overlay subnets of workers, per (cluster, node); an address is given to one node only
    r#"
    CREATE TABLE subnets (
        cluster_id TEXT NOT NULL,
        node_id    TEXT NOT NULL,
        subnet     TEXT NOT NULL UNIQUE,
        PRIMARY KEY (cluster_id, node_id)
    );
    "#,
    // 4: per-user token generation: tokens issued before a password change or a role removal
    // carry an older one and are refused
    r#"
    ALTER TABLE users ADD COLUMN token_generation INTEGER NOT NULL DEFAULT 0;
    "#,
    // 5: join tokens with a short id, an expiry, a revocation mark and a use count (hashes of the
    // secret part only; rows of the older whole-token hashes match no new token and stay inert),
    // and the fingerprint of the certificate each cluster authenticates with
    r#"
    ALTER TABLE cluster_tokens ADD COLUMN id TEXT NOT NULL DEFAULT '';
    ALTER TABLE cluster_tokens ADD COLUMN expires_at INTEGER;
    ALTER TABLE cluster_tokens ADD COLUMN reusable INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE cluster_tokens ADD COLUMN uses INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE cluster_tokens ADD COLUMN revoked INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX cluster_tokens_id ON cluster_tokens(id);
    CREATE TABLE cluster_certs (
        cluster_id  TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL UNIQUE
    );
    "#,
    // 6: services by round-robin IP (uniqueness checks without reading every service)
    r#"
    CREATE INDEX services_rr_ip ON services(json_extract(doc, '$.RR_ip'));
    "#,
];
