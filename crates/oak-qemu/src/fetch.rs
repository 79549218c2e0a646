//! Kernel archives are downloaded once per URL into `<cache>/<sha256 of the URL>.tar.gz`
//! (written to a temporary name and renamed when complete), at most `max_bytes` and within
//! `timeout`; only `http` and `https` URLs the egress policy allows are fetched, and the policy
//! is checked before the cache too, so an archive fetched while a URL was allowed is not handed
//! out after the allowance is gone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oak_core::egress::EgressPolicy;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

pub fn cache_path(cache: &Path, url: &str) -> PathBuf {
    cache.join(format!("{}.tar.gz", hex::encode(Sha256::digest(url.as_bytes()))))
}

/// The cached archive of `url`, downloading it first if needed.
pub async fn fetch(
    http: &reqwest::Client,
    egress: &EgressPolicy,
    cache: &Path,
    url: &str,
    max_bytes: u64,
    timeout: Duration,
) -> Result<PathBuf, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("kernel url {url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("kernel url {url:?}: only http and https are supported"));
    }
    oak_containerd::egress::check_url(egress, &parsed)
        .map_err(|refusal| format!("kernel url {url:?} refused by this worker: {refusal}"))?;
    let path = cache_path(cache, url);
    if tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file()) {
        return Ok(path);
    }
    tokio::fs::create_dir_all(cache).await.map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    let tmp = path.with_extension(format!("part.{}", std::process::id()));
    let result = tokio::time::timeout(timeout, download(http, parsed, &tmp, max_bytes)).await;
    let result = match result {
        Ok(r) => r,
        Err(_) => Err(format!("download did not finish within {} s", timeout.as_secs())),
    };
    match result {
        Ok(()) => {
            tokio::fs::rename(&tmp, &path).await.map_err(|e| format!("cannot store the kernel archive: {e}"))?;
            Ok(path)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(format!("kernel {url}: {e}"))
        }
    }
}

async fn download(http: &reqwest::Client, url: reqwest::Url, tmp: &Path, max_bytes: u64) -> Result<(), String> {
    let mut response = http.get(url).send().await.map_err(|e| match oak_containerd::egress::refusal_in(&e) {
        Some(refusal) => format!("refused by this worker: {refusal}"),
        None => format!("download failed: {}", oak_containerd::registry::error_chain(&e)),
    })?;
    if !response.status().is_success() {
        return Err(format!("download failed: HTTP {}", response.status()));
    }
    if response.content_length().is_some_and(|n| n > max_bytes) {
        return Err(format!("archive is larger than {max_bytes} bytes"));
    }
    let mut file = tokio::fs::File::create(tmp).await.map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let mut total = 0u64;
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("download failed: {e}"))? {
        total += chunk.len() as u64;
        if total > max_bytes {
            return Err(format!("archive is larger than {max_bytes} bytes"));
        }
        file.write_all(&chunk).await.map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    }
    file.flush().await.map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Serves each connection `reply` once (HTTP/1.0 style, connection closed after).
    async fn server(reply: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(&reply).await;
                    // Kept open a while: a short body then is a slow peer, not a closed one.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                });
            }
        });
        format!("http://{addr}/k.tar.gz")
    }

    fn ok(body: &[u8]) -> Vec<u8> {
        let mut r =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes();
        r.extend_from_slice(body);
        r
    }

    #[tokio::test]
    async fn downloads_once_and_refuses_404_big_and_slow_answers() {
        let dir = tempfile::tempdir().unwrap();
        let http = reqwest::Client::new();
        let loopback = EgressPolicy::parse(["127.0.0.0/8"]).unwrap();
        let fetch = |http, dir, url, max, t| fetch(http, &loopback, dir, url, max, t);
        let t = Duration::from_secs(5);
        let url = server(ok(b"archive")).await;
        let path = fetch(&http, dir.path(), &url, 100, t).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"archive");
        std::fs::write(&path, b"cached").unwrap();
        assert_eq!(std::fs::read(fetch(&http, dir.path(), &url, 100, t).await.unwrap()).unwrap(), b"cached");

        let missing =
            server(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()).await;
        assert!(fetch(&http, dir.path(), &missing, 100, t).await.unwrap_err().contains("HTTP 404"));
        let big = server(ok(&[7u8; 200])).await;
        assert!(fetch(&http, dir.path(), &big, 100, t).await.unwrap_err().contains("larger than 100 bytes"));
        let chunked =
            server(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".iter().copied().chain([1u8; 300]).collect()).await;
        assert!(fetch(&http, dir.path(), &chunked, 100, t).await.unwrap_err().contains("larger than 100 bytes"));
        let slow = server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec()).await;
        let err = fetch(&http, dir.path(), &slow, 100, Duration::from_millis(300)).await.unwrap_err();
        assert!(err.contains("did not finish"), "{err}");
        assert!(fetch(&http, dir.path(), "file:///etc/passwd", 100, t).await.unwrap_err().contains("only http"));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the one good archive stays in the cache");
    }

    #[tokio::test]
    async fn an_internal_url_is_refused_even_when_its_archive_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let http = reqwest::Client::new();
        let t = Duration::from_secs(5);
        let url = server(ok(b"archive")).await;
        let allowed = EgressPolicy::parse(["127.0.0.1"]).unwrap();
        fetch(&http, &allowed, dir.path(), &url, 100, t).await.unwrap();
        let closed = EgressPolicy::default();
        let e = fetch(&http, &closed, dir.path(), &url, 100, t).await.unwrap_err();
        assert!(e.contains("refused by this worker") && e.contains("is a loopback address"), "{e}");
        let e =
            fetch(&http, &closed, dir.path(), "http://169.254.169.254/latest/meta-data/", 100, t).await.unwrap_err();
        assert!(e.contains("169.254.169.254:80 is a link-local address"), "{e}");
    }
}
