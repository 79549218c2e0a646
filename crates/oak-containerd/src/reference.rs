//! Image references as users write them in a descriptor's `code`: `nginx`,
//! `docker.io/library/nginx:latest`, `ghcr.io/org/img:tag`, `host:port/repo@sha256:…`. The
//! rules follow Docker's (a first component with a `.` or `:`, or `localhost`, names the
//! registry; Docker Hub's official images live under `library/`), so a reference that works with
//! `docker pull` means the same image here.

use std::fmt;

/// Docker Hub's name in references and the host that serves its registry API.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `docker.io`, `ghcr.io`, `10.0.0.1:5000`, …
    pub registry: String,
    /// `library/nginx`, `org/img`, …
    pub repository: String,
    /// The tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses a reference, naming what is wrong with it.
    pub fn parse(input: &str) -> Result<Self, String> {
        let s = input.trim();
        if s.is_empty() {
            return Err("empty image reference".into());
        }
        if s.len() > 4096 {
            return Err("image reference longer than 4096 characters".into());
        }
        let (name, digest) = match s.split_once('@') {
            Some((name, digest)) => (name, Some(parse_digest(digest)?)),
            None => (s, None),
        };
        // A tag is after the last `:` of the last path component (a registry port has one too).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &name[last_slash + i + 1..];
                check_tag(tag)?;
                (&name[..last_slash + i], Some(tag.to_string()))
            }
            None => (name, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first.to_string(), rest),
            _ => (DOCKER_HUB.to_string(), name),
        };
        check_registry(&registry)?;
        let registry = if registry == "index.docker.io" { DOCKER_HUB.to_string() } else { registry };
        check_repository(path)?;
        let repository =
            if registry == DOCKER_HUB && !path.contains('/') { format!("library/{path}") } else { path.to_string() };
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(Self { registry, repository, tag, digest })
    }

    /// What to ask the registry's manifest endpoint for: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// The host (and port) that serves the registry API.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// Host part of the registry, without a port (for the insecure-registry and loopback checks).
    pub fn registry_host(&self) -> &str {
        split_host_port(&self.registry).0
    }
}

/// `host[:port]` or `[v6]:port` into host and optional port.
fn split_host_port(registry: &str) -> (&str, Option<&str>) {
    if let Some(rest) = registry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => (registry, None),
        };
    }
    match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    }
}

/// The canonical full name, as containerd's image store records it:
/// `docker.io/library/nginx:latest`, `host:5000/repo@sha256:…`.
impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Checks a `sha256:<hex>` digest (the only algorithm registries use in practice).
pub fn parse_digest(digest: &str) -> Result<String, String> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Err(format!("digest {digest:?} is not of the form sha256:<64 hex digits>"));
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("digest {digest:?} is not of the form sha256:<64 hex digits>"));
    }
    Ok(digest.to_string())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid tag {tag:?}: up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"))
    }
}

fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = split_host_port(registry);
    let host_ok = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
    let port_ok = port.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(format!("invalid registry {registry:?}"))
    }
}

fn check_repository(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("image reference names no repository".into());
    }
    for component in path.split('/') {
        let ok = !component.is_empty()
            && component.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && component.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && component.bytes().last().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok {
            return Err(format!(
                "invalid repository {path:?}: components are lowercase letters, digits and '.', '_' or '-' between them"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    type Parts = (String, String, Option<String>, Option<String>);

    fn parsed(s: &str) -> Parts {
        let r = ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        (r.registry, r.repository, r.tag, r.digest)
    }

    fn t(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn parses_the_forms_users_write() {
        type Case<'a> = (&'a str, (&'a str, &'a str, Option<String>, Option<String>));
        let cases: Vec<Case> = vec![
            ("nginx", ("docker.io", "library/nginx", t("latest"), None)),
            ("nginx:1.25", ("docker.io", "library/nginx", t("1.25"), None)),
            ("docker.io/library/nginx:latest", ("docker.io", "library/nginx", t("latest"), None)),
            ("index.docker.io/library/nginx", ("docker.io", "library/nginx", t("latest"), None)),
            ("giobart/nginx:v1", ("docker.io", "giobart/nginx", t("v1"), None)),
            ("ghcr.io/org/img:tag", ("ghcr.io", "org/img", t("tag"), None)),
            ("ghcr.io/org/sub/img", ("ghcr.io", "org/sub/img", t("latest"), None)),
            ("localhost/img", ("localhost", "img", t("latest"), None)),
            ("localhost:5000/img:1", ("localhost:5000", "img", t("1"), None)),
            ("10.0.0.1:5000/repo/x", ("10.0.0.1:5000", "repo/x", t("latest"), None)),
        ];
        for (input, (reg, repo, tag, digest)) in cases {
            assert_eq!(parsed(input), (reg.to_string(), repo.to_string(), tag, digest), "{input}");
        }
        assert_eq!(parsed(&format!("host:5000/repo@{D}")), ("host:5000".into(), "repo".into(), None, t(D)));
        assert_eq!(parsed(&format!("repo:v2@{D}")), ("docker.io".into(), "library/repo".into(), t("v2"), t(D)));
    }

    #[test]
    fn prints_canonical_names() {
        assert_eq!(ImageRef::parse("nginx").unwrap().to_string(), "docker.io/library/nginx:latest");
        assert_eq!(ImageRef::parse(&format!("h:1/r@{D}")).unwrap().to_string(), format!("h:1/r@{D}"));
        assert_eq!(ImageRef::parse(&format!("h:1/r@{D}")).unwrap().manifest_reference(), D);
        assert_eq!(ImageRef::parse("h:1/r:v").unwrap().manifest_reference(), "v");
    }

    #[test]
    fn knows_the_api_host() {
        assert_eq!(ImageRef::parse("nginx").unwrap().api_host(), "registry-1.docker.io");
        assert_eq!(ImageRef::parse("127.0.0.1:5000/x").unwrap().api_host(), "127.0.0.1:5000");
        assert_eq!(ImageRef::parse("127.0.0.1:5000/x").unwrap().registry_host(), "127.0.0.1");
        assert_eq!(ImageRef::parse("ghcr.io/x").unwrap().registry_host(), "ghcr.io");
    }

    #[test]
    fn rejects_bad_references_naming_the_part() {
        let cases = [
            ("", "empty"),
            ("   ", "empty"),
            ("Nginx", "invalid repository"),
            ("nginx:", "invalid tag"),
            ("nginx:-x", "invalid tag"),
            ("nginx:a b", "invalid tag"),
            ("nginx@sha256:abc", "digest"),
            ("nginx@md5:0123", "digest"),
            ("ghcr.io/", "no repository"),
            ("ghcr.io//x", "invalid repository"),
            ("host:99999/x", "invalid registry"),
            ("host:/x", "invalid registry"),
            ("a/-b", "invalid repository"),
            ("a/b_", "invalid repository"),
        ];
        for (input, expected) in cases {
            let err = ImageRef::parse(input).expect_err(input);
            assert!(err.contains(expected), "{input:?}: {err}");
        }
    }
}
