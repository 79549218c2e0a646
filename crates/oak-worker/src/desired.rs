//! `instances.json`: the deploy commands this worker accepted and was not told to delete. After a
//! restart the worker compares them with what its runtimes still run, adopts the survivors and
//! reports the rest, instead of killing healthy workloads.

use std::path::{Path, PathBuf};

use oak_api::node::DeployCommand;
use serde::{Deserialize, Serialize};

use crate::files;

#[derive(Debug, Default, Serialize, Deserialize)]
struct DesiredFile {
    instances: Vec<DeployCommand>,
}

pub(crate) fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("instances.json")
}

/// The stored desired instances; an unreadable file counts as none (the instances still running
/// are then reported as unknown ones, and the cluster decides about them).
pub(crate) async fn load(data_dir: &Path) -> Vec<DeployCommand> {
    let path = path(data_dir);
    match files::read_optional(&path).await {
        Ok(Some(bytes)) => match serde_json::from_slice::<DesiredFile>(&bytes) {
            Ok(file) => file.instances,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable desired instances");
                Vec::new()
            }
        },
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read desired instances");
            Vec::new()
        }
    }
}

pub(crate) async fn save(data_dir: &Path, instances: &[DeployCommand]) -> std::io::Result<()> {
    #[derive(Serialize)]
    struct DesiredRef<'a> {
        instances: &'a [DeployCommand],
    }
    let bytes = serde_json::to_vec(&DesiredRef { instances }).map_err(std::io::Error::other)?;
    files::write_private(&path(data_dir), bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).await.is_empty());
        let cmd: DeployCommand = serde_json::from_value(serde_json::json!({
            "_id": "s1", "job_name": "a.b.c.d", "image": "img", "instance_number": 2,
            "microservice_name": "c", "microservice_namespace": "d", "virtualization": "docker",
            "code": "img", "one_shot": true, "instance_list": [], "unknown_key": 5,
        }))
        .unwrap();
        save(dir.path(), std::slice::from_ref(&cmd)).await.unwrap();
        assert_eq!(load(dir.path()).await, vec![cmd]);
        std::fs::write(path(dir.path()), "[]").unwrap();
        assert!(load(dir.path()).await.is_empty());
    }
}
