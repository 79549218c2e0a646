//! Getting an image into containerd: containerd 1.6 (Debian's) has no server-side pull, so the
//! worker resolves the manifest for the node's platform, streams the blobs into containerd's
//! content store, registers the image and unpacks the layers into snapshots through the diff
//! service, all under a lease so containerd's garbage collector keeps what is half done.
//! An image already unpacked is used as it is (no registry traffic).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    AbortRequest, ApplyRequest, CreateImageRequest, CreateRequest, DeleteRequest, GetImageRequest, Image, InfoRequest,
    ReadContentRequest, UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor as CdDescriptor;
use oak_runtime::RuntimeError;
use prost_types::FieldMask;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{grpc_error, is_already_exists, is_not_found, Containerd};
use crate::image::{self, chain_ids, choose_manifest, ConfigFile, Descriptor, Index, Manifest, Platform};
use crate::reference::ImageRef;
use crate::registry::{error_chain, Registry, RegistryError};
use crate::spec::ImageConfig;

/// Bytes per content-store write message.
const WRITE_CHUNK: usize = 1024 * 1024;

/// An image ready to run: its configuration and the snapshot holding its unpacked layers.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub name: String,
    pub config: ImageConfig,
    /// Chain id of the top layer: the parent of each container's snapshot.
    pub chain_id: String,
}

pub struct Puller {
    pub cd: Containerd,
    pub registry: Registry,
    pub snapshotter: String,
}

fn image_error(image: &ImageRef, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Image { image: image.to_string(), message: message.into() }
}

fn registry_error(image: &ImageRef, e: RegistryError) -> RuntimeError {
    image_error(image, e.to_string())
}

impl Puller {
    /// The image, unpacked for `platform`: from containerd if it is there, else pulled.
    /// `progress` is told what happens, for logs and the instance's status detail.
    pub async fn ensure(
        &self,
        image: &ImageRef,
        platform: &Platform,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<Unpacked, RuntimeError> {
        self.registry.check(image).map_err(|e| registry_error(image, e))?;
        match self.local(image, platform).await {
            Ok(Some(unpacked)) => return Ok(unpacked),
            Ok(None) => {}
            Err(e) => tracing::debug!(image = %image, error = %e, "local image unusable; pulling"),
        }
        let lease = self.create_lease().await?;
        let result = self.pull(image, platform, &lease, progress).await;
        self.delete_lease(&lease).await;
        result
    }

    /// The locally stored image, if it is complete and unpacked.
    async fn local(&self, image: &ImageRef, platform: &Platform) -> Result<Option<Unpacked>, RuntimeError> {
        let name = image.to_string();
        let found = self.cd.images().get(self.cd.req(GetImageRequest { name: name.clone() })).await;
        let target = match found {
            Ok(resp) => match resp.into_inner().image.and_then(|i| i.target) {
                Some(target) => target,
                None => return Ok(None),
            },
            Err(s) if is_not_found(&s) => return Ok(None),
            Err(s) => return Err(grpc_error("image lookup", s)),
        };
        let mut manifest_digest = target.digest.clone();
        let top = self.read_content(&target.digest).await?;
        if image::is_index(&target.media_type, &top) {
            let index: Index =
                serde_json::from_slice(&top).map_err(|e| image_error(image, format!("stored index: {e}")))?;
            manifest_digest = choose_manifest(&index, platform).map_err(|e| image_error(image, e))?.digest.clone();
        }
        let manifest: Manifest = serde_json::from_slice(&self.read_content(&manifest_digest).await?)
            .map_err(|e| image_error(image, format!("stored manifest: {e}")))?;
        let config: ConfigFile = serde_json::from_slice(&self.read_content(&manifest.config.digest).await?)
            .map_err(|e| image_error(image, format!("stored config: {e}")))?;
        let Some(chain_id) = chain_ids(&config.rootfs.diff_ids).pop() else { return Ok(None) };
        if !self.snapshot_exists(&chain_id).await? {
            return Ok(None);
        }
        Ok(Some(Unpacked { name, config: config.config, chain_id }))
    }

    async fn pull(
        &self,
        image: &ImageRef,
        platform: &Platform,
        lease: &str,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<Unpacked, RuntimeError> {
        progress(format!("pulling image {image}"));
        let mut session = self.registry.session(image);
        let top = session.manifest(image.manifest_reference()).await.map_err(|e| registry_error(image, e))?;
        let top_desc = Descriptor {
            media_type: top.media_type.clone(),
            digest: top.digest.clone(),
            size: top.body.len() as i64,
            ..Default::default()
        };

        let (manifest_doc, index_doc) = if image::is_index(&top.media_type, &top.body) {
            let index: Index = serde_json::from_slice(&top.body)
                .map_err(|e| image_error(image, format!("index is not valid JSON: {e}")))?;
            let chosen = choose_manifest(&index, platform).map_err(|e| image_error(image, e))?;
            let doc = session.manifest(&chosen.digest).await.map_err(|e| registry_error(image, e))?;
            (doc, Some(top))
        } else {
            (top, None)
        };
        let manifest: Manifest = serde_json::from_slice(&manifest_doc.body)
            .map_err(|e| image_error(image, format!("manifest is not valid: {e}")))?;
        let config_bytes = session.small_blob(&manifest.config.digest).await.map_err(|e| registry_error(image, e))?;
        let config: ConfigFile = serde_json::from_slice(&config_bytes)
            .map_err(|e| image_error(image, format!("image config is not valid: {e}")))?;
        if index_doc.is_none() && !config.architecture.is_empty() {
            let offered = Platform {
                architecture: config.architecture.clone(),
                os: config.os.clone(),
                variant: config.variant.clone(),
            };
            if !platform.accepts(&offered) {
                return Err(image_error(image, format!("image is for {offered}, this node needs {platform}")));
            }
        }
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(image_error(image, "layer count of manifest and config differ"));
        }
        let chains = chain_ids(&config.rootfs.diff_ids);
        let Some(top_chain) = chains.last().cloned() else {
            return Err(image_error(image, "image has no layers"));
        };

        // Layers first, then the documents that reference them (with the labels that keep
        // them alive), then the image record.
        let total: i64 = manifest.layers.iter().map(|l| l.size).sum();
        let mut done: i64 = 0;
        for (i, layer) in manifest.layers.iter().enumerate() {
            if !self.content_exists(&layer.digest).await? {
                progress(format!(
                    "pulling image {image}: layer {}/{} ({} of {} MB)",
                    i + 1,
                    manifest.layers.len(),
                    done / 1_000_000,
                    total / 1_000_000
                ));
                let resp = session.blob(&layer.digest).await.map_err(|e| registry_error(image, e))?;
                self.write_stream(lease, layer, HashMap::new(), resp).await.map_err(|e| into_image_error(image, e))?;
            }
            done += layer.size;
        }
        let snapshot_label = format!("containerd.io/gc.ref.snapshot.{}", self.snapshotter);
        let config_labels = HashMap::from([(snapshot_label, top_chain.clone())]);
        self.write_bytes(lease, &manifest.config, config_labels, config_bytes).await?;
        let mut manifest_labels =
            HashMap::from([("containerd.io/gc.ref.content.config".to_string(), manifest.config.digest.clone())]);
        for (i, layer) in manifest.layers.iter().enumerate() {
            manifest_labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), layer.digest.clone());
        }
        let manifest_desc = Descriptor {
            media_type: manifest_doc.media_type.clone(),
            digest: manifest_doc.digest.clone(),
            size: manifest_doc.body.len() as i64,
            ..Default::default()
        };
        self.write_bytes(lease, &manifest_desc, manifest_labels, manifest_doc.body).await?;
        if let Some(index_doc) = index_doc {
            let labels = HashMap::from([("containerd.io/gc.ref.content.m.0".to_string(), manifest_doc.digest.clone())]);
            self.write_bytes(lease, &top_desc, labels, index_doc.body).await?;
        }

        progress(format!("unpacking image {image}"));
        self.unpack(image, lease, &manifest.layers, &config.rootfs.diff_ids, &chains).await?;
        self.register(image, lease, &top_desc).await?;
        tracing::info!(image = %image, layers = manifest.layers.len(), bytes = total, "image pulled");
        Ok(Unpacked { name: image.to_string(), config: config.config, chain_id: top_chain })
    }

    /// Applies each layer on its parent's snapshot and commits it under its chain id; layers
    /// unpacked before are skipped.
    async fn unpack(
        &self,
        image: &ImageRef,
        lease: &str,
        layers: &[Descriptor],
        diff_ids: &[String],
        chains: &[String],
    ) -> Result<(), RuntimeError> {
        for (i, layer) in layers.iter().enumerate() {
            let chain = &chains[i];
            if self.snapshot_exists(chain).await? {
                continue;
            }
            let parent = if i == 0 { String::new() } else { chains[i - 1].clone() };
            let key = format!("oakestra-extract-{}-{chain}", unique_suffix());
            let prepared = self
                .cd
                .snapshots()
                .prepare(self.cd.leased(
                    PrepareSnapshotRequest {
                        snapshotter: self.snapshotter.clone(),
                        key: key.clone(),
                        parent,
                        labels: HashMap::new(),
                    },
                    lease,
                ))
                .await
                .map_err(|e| grpc_error("prepare snapshot", e))?
                .into_inner();
            let applied = self
                .cd
                .diff()
                .apply(self.cd.leased(
                    ApplyRequest {
                        diff: Some(CdDescriptor {
                            media_type: layer.media_type.clone(),
                            digest: layer.digest.clone(),
                            size: layer.size,
                            annotations: HashMap::new(),
                        }),
                        mounts: prepared.mounts,
                        payloads: HashMap::new(),
                        sync_fs: false,
                    },
                    lease,
                ))
                .await;
            let applied = match applied {
                Ok(resp) => resp.into_inner().applied.map(|d| d.digest).unwrap_or_default(),
                Err(e) => {
                    self.remove_snapshot(&key).await;
                    return Err(image_error(image, format!("cannot apply layer {}: {}", layer.digest, e.message())));
                }
            };
            if applied != diff_ids[i] {
                self.remove_snapshot(&key).await;
                return Err(image_error(
                    image,
                    format!("layer {} unpacked to {applied}, the config says {}", layer.digest, diff_ids[i]),
                ));
            }
            let commit = self
                .cd
                .snapshots()
                .commit(self.cd.leased(
                    CommitSnapshotRequest {
                        snapshotter: self.snapshotter.clone(),
                        name: chain.clone(),
                        key: key.clone(),
                        labels: HashMap::new(),
                    },
                    lease,
                ))
                .await;
            match commit {
                Ok(_) => {}
                // Unpacked meanwhile by someone else (another namespace's worker, `ctr`).
                Err(s) if is_already_exists(&s) => self.remove_snapshot(&key).await,
                Err(s) => {
                    self.remove_snapshot(&key).await;
                    return Err(grpc_error("commit snapshot", s));
                }
            }
        }
        Ok(())
    }

    async fn register(&self, image: &ImageRef, lease: &str, target: &Descriptor) -> Result<(), RuntimeError> {
        let record = Image {
            name: image.to_string(),
            labels: HashMap::new(),
            target: Some(CdDescriptor {
                media_type: target.media_type.clone(),
                digest: target.digest.clone(),
                size: target.size,
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        let created = self
            .cd
            .images()
            .create(self.cd.leased(CreateImageRequest { image: Some(record.clone()), source_date_epoch: None }, lease))
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(s) if is_already_exists(&s) => {
                let mask = FieldMask { paths: vec!["target".into()] };
                self.cd
                    .images()
                    .update(self.cd.leased(
                        UpdateImageRequest { image: Some(record), update_mask: Some(mask), source_date_epoch: None },
                        lease,
                    ))
                    .await
                    .map_err(|e| grpc_error("update image", e))?;
                Ok(())
            }
            Err(s) => Err(grpc_error("create image", s)),
        }
    }

    // ---- content store ----

    async fn content_exists(&self, digest: &str) -> Result<bool, RuntimeError> {
        match self.cd.content().info(self.cd.req(InfoRequest { digest: digest.to_string() })).await {
            Ok(_) => Ok(true),
            Err(s) if is_not_found(&s) => Ok(false),
            Err(s) => Err(grpc_error("content info", s)),
        }
    }

    async fn read_content(&self, digest: &str) -> Result<Vec<u8>, RuntimeError> {
        let mut stream = self
            .cd
            .content()
            .read(self.cd.req(ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 }))
            .await
            .map_err(|e| grpc_error("read content", e))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(|e| grpc_error("read content", e))? {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    async fn write_bytes(
        &self,
        lease: &str,
        desc: &Descriptor,
        labels: HashMap<String, String>,
        bytes: Vec<u8>,
    ) -> Result<(), RuntimeError> {
        let chunks = bytes.chunks(WRITE_CHUNK).map(|c| Ok(c.to_vec())).collect::<Vec<_>>();
        self.write(lease, desc, labels.clone(), tokio_stream::iter(chunks)).await?;
        if !labels.is_empty() {
            self.set_labels(&desc.digest, labels).await?;
        }
        Ok(())
    }

    async fn write_stream(
        &self,
        lease: &str,
        desc: &Descriptor,
        labels: HashMap<String, String>,
        mut resp: reqwest::Response,
    ) -> Result<(), WriteError> {
        let (tx, rx) = mpsc::channel::<Result<Vec<u8>, WriteError>>(4);
        let feeder = async move {
            let mut buf = Vec::with_capacity(WRITE_CHUNK);
            loop {
                match resp.chunk().await {
                    Ok(Some(bytes)) => {
                        buf.extend_from_slice(&bytes);
                        if buf.len() >= WRITE_CHUNK && tx.send(Ok(std::mem::take(&mut buf))).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        if !buf.is_empty() {
                            let _ = tx.send(Ok(buf)).await;
                        }
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(WriteError::Download(error_chain(&e)))).await;
                        return;
                    }
                }
            }
        };
        let (_, written) = tokio::join!(feeder, self.write(lease, desc, labels, ReceiverStream::new(rx)));
        written.map_err(|e| match e {
            RuntimeError::Failed(m) if m.starts_with("download:") => WriteError::Download(m),
            e => WriteError::Runtime(e),
        })
    }

    /// Writes one blob through the content service's streaming write: every message gets an
    /// answer, the last one commits with the expected digest (containerd verifies it).
    async fn write<S>(
        &self,
        lease: &str,
        desc: &Descriptor,
        labels: HashMap<String, String>,
        mut chunks: S,
    ) -> Result<(), RuntimeError>
    where
        S: tokio_stream::Stream<Item = Result<Vec<u8>, WriteError>> + Unpin,
    {
        use tokio_stream::StreamExt;
        let reference = format!("oakestra-{}", desc.digest);
        // A write interrupted earlier (a crashed worker) would otherwise hold the ref.
        let _ = self.cd.content().abort(self.cd.req(AbortRequest { r#ref: reference.clone() })).await;

        let (tx, rx) = mpsc::channel::<WriteContentRequest>(2);
        let message =
            |action: WriteAction, offset: i64, data: Vec<u8>, labels: HashMap<String, String>| WriteContentRequest {
                action: action as i32,
                r#ref: reference.clone(),
                total: desc.size,
                expected: desc.digest.clone(),
                offset,
                data,
                labels,
            };
        // containerd answers the call once it has read the first message.
        tx.send(message(WriteAction::Stat, 0, Vec::new(), HashMap::new())).await.map_err(|_| closed())?;
        let call = self.cd.content().write(self.cd.leased(ReceiverStream::new(rx), lease)).await;
        let mut answers = match call {
            Ok(resp) => resp.into_inner(),
            Err(s) if is_already_exists(&s) => return Ok(()),
            Err(s) => return Err(grpc_error("write content", s)),
        };
        if next_answer(&mut answers).await?.is_none() {
            return Ok(());
        }
        let mut offset: i64 = 0;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| RuntimeError::Failed(format!("download: {e}")))?;
            let len = chunk.len() as i64;
            tx.send(message(WriteAction::Write, offset, chunk, HashMap::new())).await.map_err(|_| closed())?;
            if next_answer(&mut answers).await?.is_none() {
                return Ok(());
            }
            offset += len;
        }
        if offset != desc.size {
            return Err(RuntimeError::Failed(format!(
                "download: blob {} has {offset} bytes, expected {}",
                desc.digest, desc.size
            )));
        }
        tx.send(message(WriteAction::Commit, offset, Vec::new(), labels)).await.map_err(|_| closed())?;
        next_answer(&mut answers).await?;
        Ok(())
    }

    async fn set_labels(&self, digest: &str, labels: HashMap<String, String>) -> Result<(), RuntimeError> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let info = containerd_client::services::v1::Info {
            digest: digest.to_string(),
            size: 0,
            created_at: None,
            updated_at: None,
            labels,
        };
        self.cd
            .content()
            .update(self.cd.req(UpdateRequest { info: Some(info), update_mask: Some(FieldMask { paths }) }))
            .await
            .map_err(|e| grpc_error("label content", e))?;
        Ok(())
    }

    // ---- snapshots and leases ----

    pub async fn snapshot_exists(&self, key: &str) -> Result<bool, RuntimeError> {
        let stat = self
            .cd
            .snapshots()
            .stat(self.cd.req(StatSnapshotRequest { snapshotter: self.snapshotter.clone(), key: key.to_string() }))
            .await;
        match stat {
            Ok(_) => Ok(true),
            Err(s) if is_not_found(&s) => Ok(false),
            Err(s) => Err(grpc_error("stat snapshot", s)),
        }
    }

    pub async fn remove_snapshot(&self, key: &str) {
        let req = RemoveSnapshotRequest { snapshotter: self.snapshotter.clone(), key: key.to_string() };
        if let Err(s) = self.cd.snapshots().remove(self.cd.req(req)).await {
            if !is_not_found(&s) {
                tracing::warn!(snapshot = key, error = %s.message(), "cannot remove snapshot");
            }
        }
    }

    /// A lease that protects what is created under it from containerd's garbage collector
    /// until it is deleted (or expires after an hour, if this worker dies first).
    pub(crate) async fn create_lease(&self) -> Result<String, RuntimeError> {
        let id = format!("oakestra-{}", unique_suffix());
        // Expires by itself if this worker dies mid-pull.
        let expire = rfc3339(SystemTime::now() + Duration::from_secs(3600));
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire)]);
        self.cd
            .leases()
            .create(self.cd.req(CreateRequest { id: id.clone(), labels }))
            .await
            .map_err(|e| grpc_error("create lease", e))?;
        Ok(id)
    }

    pub(crate) async fn delete_lease(&self, id: &str) {
        if let Err(s) = self.cd.leases().delete(self.cd.req(DeleteRequest { id: id.to_string(), sync: false })).await {
            tracing::warn!(lease = id, error = %s.message(), "cannot delete lease");
        }
    }
}

/// The next answer of a content write; `None` when containerd says the blob exists already.
async fn next_answer(
    answers: &mut containerd_client::tonic::Streaming<containerd_client::services::v1::WriteContentResponse>,
) -> Result<Option<containerd_client::services::v1::WriteContentResponse>, RuntimeError> {
    match answers.message().await {
        Ok(Some(answer)) => Ok(Some(answer)),
        Ok(None) => Err(RuntimeError::Failed("write content: containerd closed the stream".into())),
        Err(s) if is_already_exists(&s) => Ok(None),
        Err(s) => Err(grpc_error("write content", s)),
    }
}

/// A blob write failed because of the download or because of containerd.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Download(String),
    #[error(transparent)]
    Runtime(RuntimeError),
}

fn into_image_error(image: &ImageRef, e: WriteError) -> RuntimeError {
    match e {
        WriteError::Download(m) => image_error(image, m),
        WriteError::Runtime(e) => e,
    }
}

fn closed() -> RuntimeError {
    RuntimeError::Failed("write content: containerd closed the stream".into())
}

/// Distinguishes concurrent keys (extractions, leases) without a random-number crate.
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{nanos}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// `YYYY-MM-DDTHH:MM:SSZ` (containerd's lease expiry label format).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    oak_core::utc::UtcTime::from_unix(secs).rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_796_151_845)), "2026-12-01T19:04:05Z");
    }
}
