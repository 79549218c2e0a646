//! Who may read `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{header, HeaderMap};

/// What a refused scrape is told.
pub const TOKEN_HINT: &str =
    "/metrics on a non-loopback listener needs `Authorization: Bearer <token>` with the tier's --metrics-token";

/// The scrape rule of one tier: open while every listener serving `/metrics` is on loopback
/// (only local processes reach it), else only for `Authorization: Bearer <scrape token>`.
/// Without a token a non-loopback `/metrics` refuses every scrape (the root also lets an
/// Admin's access token through, see `oak-root`).
#[derive(Debug)]
pub struct ScrapeAccess {
    token: Option<String>,
    /// Whether a listener serving `/metrics` is bound to a non-loopback address.
    exposed: AtomicBool,
}

impl ScrapeAccess {
    /// `token`: the scrape token (`--metrics-token`); empty or blank means none.
    pub fn new(token: Option<String>) -> Self {
        let token = token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        ScrapeAccess { token, exposed: AtomicBool::new(false) }
    }

    /// Records a listener serving `/metrics`; one bound to anything but loopback (the
    /// unspecified address included) makes the token necessary from then on.
    pub fn listening_on(&self, addr: SocketAddr) {
        if !addr.ip().is_loopback() {
            self.exposed.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a scrape token is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `/metrics` needs a token (a listener is not loopback).
    pub fn exposed(&self) -> bool {
        self.exposed.load(Ordering::Relaxed)
    }

    /// Whether a request with `headers` may read the metrics.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if !self.exposed() {
            return true;
        }
        let (Some(token), Some(presented)) = (&self.token, bearer(headers)) else {
            return false;
        };
        same(token.as_bytes(), presented.as_bytes())
    }
}

/// The credentials of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn loopback_listeners_need_no_token() {
        let access = ScrapeAccess::new(None);
        access.listening_on("127.0.0.1:10000".parse().unwrap());
        access.listening_on("[::1]:10000".parse().unwrap());
        assert!(!access.exposed());
        assert!(access.allows(&headers(None)));
    }

    #[test]
    fn other_listeners_need_the_token() {
        let access = ScrapeAccess::new(Some("s3cret".into()));
        access.listening_on("127.0.0.1:10000".parse().unwrap());
        access.listening_on("0.0.0.0:80".parse().unwrap());
        assert!(access.exposed());
        assert!(!access.allows(&headers(None)));
        assert!(!access.allows(&headers(Some("Bearer wrong"))));
        assert!(!access.allows(&headers(Some("Bearer s3cre"))));
        assert!(!access.allows(&headers(Some("Basic s3cret"))));
        assert!(access.allows(&headers(Some("Bearer s3cret"))));
        assert!(access.allows(&headers(Some("bearer  s3cret"))));
    }

    #[test]
    fn without_a_token_an_exposed_endpoint_refuses_everyone() {
        for blank in [None, Some(String::new()), Some("  ".to_string())] {
            let access = ScrapeAccess::new(blank);
            access.listening_on("10.0.0.1:10190".parse().unwrap());
            assert!(!access.has_token());
            assert!(!access.allows(&headers(Some("Bearer "))));
            assert!(!access.allows(&headers(None)));
        }
    }
}
