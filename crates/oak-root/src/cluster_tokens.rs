//! Join tokens for clusters: random secrets handed to operators, stored only as hashes.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use blake2::{Blake2s256, Digest};
use oak_store::RootStore;

use crate::ids;

/// File in the data directory holding the token created at first start.
pub const TOKEN_FILE: &str = "cluster-token";

/// A fresh token, recorded (hashed) in the store.
pub fn create(store: &dyn RootStore) -> oak_store::Result<String> {
    let mut bytes = [0u8; 24];
    ids::random_bytes(&mut bytes);
    let token = format!("oakc_{}", hex::encode(bytes));
    store.add_cluster_token(&hash(&token), &ids::created_at_now())?;
    Ok(token)
}

/// Whether `token` was issued by this root.
pub fn verify(store: &dyn RootStore, token: &str) -> oak_store::Result<bool> {
    if token.is_empty() {
        return Ok(false);
    }
    store.cluster_token_known(&hash(token))
}

/// At first start, issues a token and writes it to `<data_dir>/cluster-token` (mode 0600) so
/// the operator can hand it to the first cluster.
pub fn ensure_first(store: &dyn RootStore, data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join(TOKEN_FILE);
    if path.exists() {
        return Ok(());
    }
    let token = create(store)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{token}").with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(file = %path.display(), "cluster join token written; give it to `oakestra cluster --token-file`");
    Ok(())
}

fn hash(token: &str) -> String {
    hex::encode(Blake2s256::digest(token.as_bytes()))
}
