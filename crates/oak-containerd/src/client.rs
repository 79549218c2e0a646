//! One connection to containerd's gRPC socket, scoped to a namespace. Every request carries the
//! `containerd-namespace` header (and, during a pull, the lease that protects fresh content from
//! containerd's garbage collector).

use std::path::Path;

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    images_client::ImagesClient, leases_client::LeasesClient, tasks_client::TasksClient, version_client::VersionClient,
};
use containerd_client::tonic::{self, transport::Channel, Code, Status};
use oak_runtime::RuntimeError;

#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
}

impl Containerd {
    /// Connects and checks that containerd answers (its version call).
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Self, RuntimeError> {
        let channel = containerd_client::connect(socket)
            .await
            .map_err(|e| RuntimeError::Unavailable(format!("containerd at {}: {e}", socket.display())))?;
        let cd = Self { channel, namespace: namespace.to_string() };
        cd.version().await?;
        Ok(cd)
    }

    pub async fn version(&self) -> Result<String, RuntimeError> {
        let v = VersionClient::new(self.channel.clone())
            .version(self.req(()))
            .await
            .map_err(|e| grpc_error("containerd version", e))?;
        Ok(v.into_inner().version)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A request in this namespace.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Ok(ns) = self.namespace.parse() {
            req.metadata_mut().insert("containerd-namespace", ns);
        }
        req
    }

    /// A request in this namespace under a lease.
    pub fn leased<T>(&self, msg: T, lease: &str) -> tonic::Request<T> {
        let mut req = self.req(msg);
        if let Ok(lease) = lease.parse() {
            req.metadata_mut().insert("containerd-lease", lease);
        }
        req
    }

    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
    }
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
}

/// A gRPC failure as a runtime error naming what was being done.
pub fn grpc_error(what: &str, status: Status) -> RuntimeError {
    match status.code() {
        Code::Unavailable => RuntimeError::Unavailable(format!("{what}: containerd unavailable: {}", status.message())),
        Code::NotFound => RuntimeError::NotFound(format!("{what}: {}", status.message())),
        _ => RuntimeError::Failed(format!("{what}: {}", status.message())),
    }
}

pub fn is_not_found(status: &Status) -> bool {
    status.code() == Code::NotFound
}

pub fn is_already_exists(status: &Status) -> bool {
    status.code() == Code::AlreadyExists
}
