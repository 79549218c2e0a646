//! `node.json`: the id the cluster gave this worker and the secret proving it owns that id, so a
//! restarted worker re-registers as the same node and keeps its instances.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeIdentity {
    pub id: String,
    /// The MQTT password of the last registration.
    pub node_secret: String,
}

pub(crate) fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("node.json")
}

/// The stored identity; a missing or unreadable file means registering as a new node.
pub(crate) async fn load(data_dir: &Path) -> Option<NodeIdentity> {
    let path = path(data_dir);
    match files::read_optional(&path).await {
        Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
            Ok(identity) => Some(identity),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable node identity; registering as a new node");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read node identity; registering as a new node");
            None
        }
    }
}

pub(crate) async fn save(data_dir: &Path, identity: &NodeIdentity) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(identity).map_err(std::io::Error::other)?;
    files::write_private(&path(data_dir), bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).await, None);
        let identity = NodeIdentity { id: "n1".into(), node_secret: "s".into() };
        save(dir.path(), &identity).await.unwrap();
        assert_eq!(load(dir.path()).await, Some(identity));
        std::fs::write(path(dir.path()), "{not json").unwrap();
        assert_eq!(load(dir.path()).await, None);
    }
}
