//! OCI and Docker image documents (index, manifest, config), platform matching and the digests
//! containerd names unpacked layers by. Pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::spec::ImageConfig;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What the worker accepts from a registry's manifest endpoint, most specific first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `os/architecture[/variant]`, with Go's names (`amd64`, `arm64`, `arm` + `v7`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

impl Platform {
    /// The platform of the machine this runs on.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", ""),
            "aarch64" => ("arm64", ""),
            "arm" => ("arm", "v7"),
            "x86" => ("386", ""),
            "powerpc64" => ("ppc64le", ""),
            "s390x" => ("s390x", ""),
            "riscv64" => ("riscv64", ""),
            other => (other, ""),
        };
        Self { architecture: architecture.into(), os: "linux".into(), variant: variant.into() }
    }

    /// Parses a descriptor's `platform` (`linux/arm64`, `linux/arm/v7`, or just `arm64`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        let valid = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !parts.iter().all(valid) {
            return Err(format!("invalid platform {s:?}: expected os/architecture[/variant]"));
        }
        match parts.as_slice() {
            [arch] => Ok(Self { architecture: arch.to_string(), os: "linux".into(), variant: String::new() }),
            [os, arch] => Ok(Self { architecture: arch.to_string(), os: os.to_string(), variant: String::new() }),
            [os, arch, variant] => {
                Ok(Self { architecture: arch.to_string(), os: os.to_string(), variant: variant.to_string() })
            }
            _ => Err(format!("invalid platform {s:?}: expected os/architecture[/variant]")),
        }
    }

    /// Whether an image for `offered` runs here. A missing variant on either side matches
    /// (`arm64` images rarely state `v8`).
    pub fn accepts(&self, offered: &Platform) -> bool {
        self.os == offered.os
            && self.architecture == offered.architecture
            && (self.variant.is_empty() || offered.variant.is_empty() || self.variant == offered.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub media_type: String,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// The image configuration blob.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: String,
    #[serde(default)]
    pub config: ImageConfig,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// Whether a media type (or, when the registry sent none, the document's shape) is an index.
pub fn is_index(media_type: &str, body: &[u8]) -> bool {
    match media_type {
        OCI_INDEX | DOCKER_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        _ => serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v.get("manifests").is_some()),
    }
}

/// The manifest of an index that runs on `platform`, or a message listing what is offered.
pub fn choose_manifest<'a>(index: &'a Index, platform: &Platform) -> Result<&'a Descriptor, String> {
    index.manifests.iter().find(|m| m.platform.as_ref().is_some_and(|p| platform.accepts(p))).ok_or_else(|| {
        let offered: Vec<String> =
            index.manifests.iter().filter_map(|m| m.platform.as_ref()).map(|p| p.to_string()).collect();
        format!(
            "no image for platform {platform} (the image offers {})",
            if offered.is_empty() { "none".to_string() } else { offered.join(", ") }
        )
    })
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Chain ids of the layers: the name of the snapshot holding layers `0..=i` applied in order
/// (`chain(0) = diff(0)`, `chain(i) = sha256(chain(i-1) + " " + diff(i))`).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(prev) => sha256_digest(format!("{prev} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(arch: &str, variant: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{arch}{variant}"),
            size: 1,
            platform: Some(Platform { architecture: arch.into(), os: "linux".into(), variant: variant.into() }),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], sha256_digest(b"sha256:aaaa sha256:bbbb"));
        assert!(chain_ids(&[]).is_empty());
        // Known value: sha256 of the empty string.
        assert_eq!(sha256_digest(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn chooses_the_manifest_for_the_platform() {
        let index = Index { manifests: vec![d("amd64", ""), d("arm", "v6"), d("arm", "v7"), d("arm64", "v8")] };
        let pick = |p: &str| choose_manifest(&index, &Platform::parse(p).unwrap()).map(|m| m.digest.clone());
        assert_eq!(pick("linux/amd64").unwrap(), "sha256:amd64");
        assert_eq!(pick("linux/arm/v7").unwrap(), "sha256:armv7");
        assert_eq!(pick("linux/arm64").unwrap(), "sha256:arm64v8");
        assert_eq!(pick("arm64").unwrap(), "sha256:arm64v8");
        let err = pick("linux/riscv64").unwrap_err();
        assert!(err.contains("linux/riscv64") && err.contains("linux/arm/v7"), "{err}");
        let err = pick("windows/amd64").unwrap_err();
        assert!(err.contains("windows/amd64"));
    }

    #[test]
    fn parses_platforms() {
        assert_eq!(Platform::parse("linux/arm/v7").unwrap().to_string(), "linux/arm/v7");
        assert_eq!(Platform::parse("amd64").unwrap().to_string(), "linux/amd64");
        for bad in ["", "linux/", "a/b/c/d", "linux/am d64"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Platform::host().os, "linux");
    }

    #[test]
    fn tells_indexes_from_manifests() {
        assert!(is_index(OCI_INDEX, b""));
        assert!(is_index(DOCKER_LIST, b""));
        assert!(!is_index(DOCKER_MANIFEST, b"{\"manifests\":[]}"));
        assert!(is_index("", b"{\"manifests\":[]}"));
        assert!(!is_index("application/json", b"{\"layers\":[]}"));
    }
}
