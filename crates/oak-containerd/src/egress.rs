//! HTTP clients for fetches a tenant names (registries, token services, kernel URLs) that
//! keep to an [`EgressPolicy`]: every URL is checked before it is requested
//! ([`check_url`]), every redirect before it is followed, and every name on the addresses it
//! resolves to, which are the only ones connected to (no second lookup DNS could answer
//! differently).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use oak_core::egress::{Dest, EgressPolicy, Refusal};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{redirect, Url};

/// Redirects followed at most per request.
const MAX_REDIRECTS: usize = 5;

/// `builder` with the policy's resolver and redirect rule; proxies from the environment are
/// not used, since a proxy would resolve names where the policy cannot see them.
pub fn client(policy: Arc<EgressPolicy>, builder: reqwest::ClientBuilder) -> reqwest::Result<reqwest::Client> {
    let on_redirect = policy.clone();
    builder
        .no_proxy()
        .dns_resolver(Arc::new(Resolver(policy)))
        .redirect(redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match check_url(&on_redirect, attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refusal) => {
                    let to = attempt.url().to_string();
                    attempt.error(Refusal(format!("redirect to {to}: {refusal}")))
                }
            }
        }))
        .build()
}

/// Whether `url` may be requested: its scheme is http(s) and its host and port pass the
/// policy (a name's addresses are checked again when it is resolved).
pub fn check_url(policy: &EgressPolicy, url: &Url) -> Result<(), Refusal> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refusal(format!("only http and https URLs are fetched, not {}", url.scheme())));
    }
    let port = url.port_or_known_default().unwrap_or(80);
    // The URL parser has already turned numeric hosts (`2130706433`, `0x7f.1`) into dotted form.
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(Refusal(format!("{url} names no host")));
    };
    let dest = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(ip) => Dest::Ip(ip),
        Err(_) => Dest::Name(host),
    };
    policy.check(dest, port).map(|_| ())
}

/// The policy's refusal behind a failed request, if that is why it failed.
pub fn refusal_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refusal> {
    let mut source = Some(e);
    while let Some(e) = source {
        if let Some(refusal) = e.downcast_ref::<Refusal>() {
            return Some(refusal);
        }
        source = e.source();
    }
    None
}

struct Resolver(Arc<EgressPolicy>);

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let admitted: Vec<SocketAddr> =
                found.iter().copied().filter(|a| policy.admits_resolved(&host, a.ip())).collect();
            if admitted.is_empty() {
                let ips: Vec<IpAddr> = found.iter().map(SocketAddr::ip).collect();
                return Err(Box::new(policy.refuse_resolved(&host, &ips)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(admitted.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::error_chain;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP server on `bind` answering every request with `reply`; counts the requests.
    async fn server(bind: &str, reply: String) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        (port, hits)
    }

    fn ok() -> String {
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".into()
    }

    fn policy(entries: &[&str]) -> Arc<EgressPolicy> {
        Arc::new(EgressPolicy::parse(entries.iter().copied()).unwrap())
    }

    #[tokio::test]
    async fn loopback_is_refused_by_address_and_by_name_unless_allowed() {
        let (port, hits) = server("127.0.0.1:0", ok()).await;
        let closed = client(policy(&[]), reqwest::Client::builder()).unwrap();
        let url: Url = format!("http://127.0.0.1:{port}/v2/").parse().unwrap();
        let e = check_url(&policy(&[]), &url).unwrap_err();
        assert!(e.0.contains("loopback"), "{e}");
        let e = closed.get(format!("http://localhost:{port}/")).send().await.unwrap_err();
        let refusal = refusal_in(&e).unwrap_or_else(|| panic!("not a refusal: {}", error_chain(&e)));
        assert!(refusal.0.starts_with("localhost resolves to 127.0.0.1"), "{refusal}");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing reached the server");

        let by_address = policy(&[&format!("127.0.0.1:{port}")]);
        check_url(&by_address, &url).unwrap();
        let open = client(by_address.clone(), reqwest::Client::builder()).unwrap();
        assert_eq!(open.get(url.clone()).send().await.unwrap().text().await.unwrap(), "ok");
        // An address allowance with a port does not open the name: its port is unknown there.
        assert!(open.get(format!("http://localhost:{port}/")).send().await.is_err());
        let by_name = policy(&[&format!("localhost:{port}")]);
        let open = client(by_name.clone(), reqwest::Client::builder()).unwrap();
        let named: Url = format!("http://localhost:{port}/").parse().unwrap();
        check_url(&by_name, &named).unwrap();
        assert_eq!(open.get(named).send().await.unwrap().text().await.unwrap(), "ok");
        assert!(check_url(&by_name, &format!("http://localhost:{}/", port + 1).parse().unwrap()).is_err());
    }

    #[tokio::test]
    async fn a_redirect_to_an_internal_address_is_not_followed() {
        let (inner, inner_hits) = server("127.0.0.1:0", ok()).await;
        let redirect = format!(
            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{inner}/latest/meta-data\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        let (outer, _) = server("127.0.0.1:0", redirect).await;
        // The first hop is allowed (a registry the operator named); the hop it redirects to is not.
        let http = client(policy(&[&format!("127.0.0.1:{outer}")]), reqwest::Client::builder()).unwrap();
        let e = http.get(format!("http://127.0.0.1:{outer}/v2/")).send().await.unwrap_err();
        let refusal = refusal_in(&e).unwrap_or_else(|| panic!("not a refusal: {}", error_chain(&e)));
        assert!(refusal.0.contains(&format!("127.0.0.1:{inner} is a loopback address")), "{refusal}");
        assert_eq!(inner_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn only_http_urls_with_a_host_pass() {
        let p = policy(&[]);
        for (url, why) in
            [("file:///etc/passwd", "only http"), ("ftp://1.1.1.1/x", "only http"), ("http://[::1]:80/", "loopback")]
        {
            let e = check_url(&p, &url.parse().unwrap()).unwrap_err();
            assert!(e.0.contains(why), "{url}: {e}");
        }
        check_url(&p, &"https://registry-1.docker.io/v2/".parse().unwrap()).unwrap();
        // The URL parser reads numeric hosts the way the kernel would.
        assert!(check_url(&p, &"http://2130706433:10190/".parse().unwrap()).is_err());
        assert!(check_url(&p, &"http://0x7f.1/".parse().unwrap()).is_err());
    }
}
