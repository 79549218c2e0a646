//! Cluster join tokens: `oakc.v1.<SHA-256 of the root's CA certificate>.<secret>`
//! ([`oak_tls::JoinToken`]). The CA hash lets a cluster verify the root before it sends the
//! token; the secret is what the root checks, stored only as a hash, with a short id (a prefix
//! of that hash) by which an operator revokes it. Tokens are single-use unless issued reusable,
//! and may expire. The token written at first start (`<data-dir>/cluster-token`, read by
//! `oakestra up`) is reusable until revoked, so the clusters of a small fleet can share it.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use blake2::{Blake2s256, Digest};
use oak_store::{ClusterTokenRecord, RootStore};
use oak_tls::{Fingerprint, JoinToken, TokenKind};

use crate::ids;

/// File in the data directory holding the token created at first start.
pub const TOKEN_FILE: &str = "cluster-token";
/// Hex digits of the secret's hash that make a token's short id.
const ID_LEN: usize = 12;

/// How a new token may be used.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenOptions {
    /// Refused after this long; `None` never expires.
    pub ttl: Option<Duration>,
    /// May join several clusters; by default the first join uses it up.
    pub reusable: bool,
}

/// A token just issued: the only moment its secret exists at the root.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: JoinToken,
    pub id: String,
    /// Unix seconds.
    pub expires_at: Option<i64>,
}

/// Why a join token was refused: `reason` is the metrics label, the message is for operators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TokenRefusal {
    pub reason: &'static str,
    pub message: String,
}

fn refusal(reason: &'static str, message: String) -> TokenRefusal {
    TokenRefusal { reason, message }
}

/// A fresh token pinning `ca`, recorded (hashed) in the store.
pub fn create(store: &dyn RootStore, ca: Fingerprint, options: TokenOptions) -> oak_store::Result<Issued> {
    let token = JoinToken::generate(TokenKind::Cluster, ca);
    let hash = hash(&token.secret);
    let id = hash[..ID_LEN].to_string();
    let expires_at = options.ttl.map(|ttl| now() + ttl.as_secs().min(i64::MAX as u64 / 4) as i64);
    store.add_cluster_token(&ClusterTokenRecord {
        id: id.clone(),
        hash,
        created_at: ids::created_at_now(),
        expires_at,
        reusable: options.reusable,
        uses: 0,
        revoked: false,
    })?;
    Ok(Issued { token, id, expires_at })
}

/// Checks `text` as a token of this root (pinning `ca`) that may still be used at `now` (Unix
/// seconds); does not use it up (see [`consume`]).
pub fn check(store: &dyn RootStore, text: &str, ca: Fingerprint, now: i64) -> Result<ClusterTokenRecord, TokenRefusal> {
    let token = JoinToken::parse(text, TokenKind::Cluster).map_err(|e| refusal("malformed_token", e.to_string()))?;
    if token.ca != ca {
        return Err(refusal(
            "unknown_token",
            "the join token pins another root's CA: it was not issued by this root".into(),
        ));
    }
    let record = store
        .cluster_token(&hash(&token.secret))
        .map_err(|e| refusal("store", format!("the root cannot read its database: {e}")))?
        .ok_or_else(|| {
            refusal(
                "unknown_token",
                "the join token is not valid: create one with `oakestra cluster-token create`".into(),
            )
        })?;
    let id = &record.id;
    if record.revoked {
        return Err(refusal("revoked_token", format!("the join token {id} was revoked")));
    }
    if record.expires_at.is_some_and(|at| at <= now) {
        return Err(refusal("expired_token", format!("the join token {id} has expired")));
    }
    if !record.reusable && record.uses > 0 {
        return Err(used_up(id));
    }
    Ok(record)
}

/// Uses `record`'s token for one join: a single-use token is then spent, even if another
/// cluster tries it at the same moment.
pub fn consume(store: &dyn RootStore, record: &ClusterTokenRecord) -> Result<(), TokenRefusal> {
    match store.use_cluster_token(&record.hash) {
        Ok(true) => Ok(()),
        Ok(false) => Err(used_up(&record.id)),
        Err(e) => Err(refusal("store", format!("the root cannot record the token's use: {e}"))),
    }
}

fn used_up(id: &str) -> TokenRefusal {
    refusal(
        "used_token",
        format!(
            "the join token {id} was already used by another cluster (tokens are single-use unless created with --reusable)"
        ),
    )
}

/// Revokes a token given whole or by its short id; answers how many tokens that named.
pub fn revoke(store: &dyn RootStore, token_or_id: &str) -> oak_store::Result<usize> {
    let text = token_or_id.trim();
    match JoinToken::parse(text, TokenKind::Cluster) {
        Ok(token) => store.revoke_cluster_token(&hash(&token.secret)),
        Err(_) if text.len() == ID_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) => {
            store.revoke_cluster_token(&text.to_ascii_lowercase())
        }
        Err(_) => Ok(0),
    }
}

/// At first start (or when the file holds a token of an older format or of another CA), issues
/// a reusable token and writes it to `<data_dir>/cluster-token` (mode 0600) so the operator
/// (and `oakestra up`) can hand it to clusters.
pub fn ensure_first(store: &dyn RootStore, data_dir: &Path, ca: Fingerprint) -> anyhow::Result<()> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => match JoinToken::parse(&text, TokenKind::Cluster) {
            Ok(token) if token.ca == ca => return Ok(()),
            _ => tracing::warn!(file = %path.display(),
                "the first-start cluster token predates TLS or pins another CA; writing a new one"),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let issued = create(store, ca, TokenOptions { ttl: None, reusable: true })?;
    oak_tls::write_private(&path, format!("{}\n", issued.token).as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(file = %path.display(), id = %issued.id,
        "cluster join token written (reusable until revoked); give it to `oakestra cluster --token-file`");
    Ok(())
}

/// Unix seconds now.
pub fn now() -> i64 {
    ids::now() as i64
}

fn hash(secret: &str) -> String {
    hex::encode(Blake2s256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use oak_store::SqliteStore;

    use super::*;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("root.db")).unwrap();
        (dir, store)
    }

    fn ca() -> Fingerprint {
        Fingerprint::of(b"the root CA")
    }

    #[test]
    fn a_token_is_single_use_unless_reusable() {
        let (_dir, store) = store();
        let once = create(&store, ca(), TokenOptions::default()).unwrap();
        let text = once.token.to_string();
        let record = check(&store, &text, ca(), now()).unwrap();
        consume(&store, &record).unwrap();
        let e = check(&store, &text, ca(), now()).unwrap_err();
        assert_eq!(e.reason, "used_token", "{e}");
        assert!(e.message.contains(&once.id) && e.message.contains("--reusable"), "{e}");
        // Two joins that checked before either consumed: only one gets it.
        assert_eq!(consume(&store, &record).unwrap_err().reason, "used_token");

        let many = create(&store, ca(), TokenOptions { reusable: true, ..Default::default() }).unwrap();
        for _ in 0..3 {
            let record = check(&store, &many.token.to_string(), ca(), now()).unwrap();
            consume(&store, &record).unwrap();
        }
    }

    #[test]
    fn an_expired_token_is_refused_with_its_id() {
        let (_dir, store) = store();
        let issued = create(&store, ca(), TokenOptions { ttl: Some(Duration::from_secs(60)), reusable: true }).unwrap();
        let at = issued.expires_at.unwrap();
        assert!((at - now() - 60).abs() <= 1, "expires at {at}");
        check(&store, &issued.token.to_string(), ca(), at - 1).unwrap();
        let e = check(&store, &issued.token.to_string(), ca(), at).unwrap_err();
        assert_eq!(e.reason, "expired_token");
        assert!(e.message.contains(&issued.id), "{e}");
    }

    #[test]
    fn a_revoked_token_is_refused_whether_revoked_whole_or_by_id() {
        let (_dir, store) = store();
        let reusable = TokenOptions { reusable: true, ..Default::default() };
        let a = create(&store, ca(), reusable).unwrap();
        let b = create(&store, ca(), reusable).unwrap();
        assert_eq!(revoke(&store, &a.token.to_string()).unwrap(), 1);
        assert_eq!(revoke(&store, &b.id.to_ascii_uppercase()).unwrap(), 1);
        for t in [&a, &b] {
            let e = check(&store, &t.token.to_string(), ca(), now()).unwrap_err();
            assert_eq!(e.reason, "revoked_token", "{e}");
            assert!(e.message.contains(&t.id), "{e}");
        }
        assert_eq!(revoke(&store, "nothing-like-a-token").unwrap(), 0);
        assert_eq!(revoke(&store, "").unwrap(), 0);
    }

    #[test]
    fn unknown_foreign_and_legacy_tokens_are_refused_with_a_reason() {
        let (_dir, store) = store();
        let issued = create(&store, ca(), TokenOptions::default()).unwrap();
        let stranger = JoinToken::generate(TokenKind::Cluster, ca());
        assert_eq!(check(&store, &stranger.to_string(), ca(), now()).unwrap_err().reason, "unknown_token");
        let other_root = Fingerprint::of(b"another CA");
        let foreign = JoinToken { ca: other_root, ..issued.token.clone() };
        assert_eq!(check(&store, &foreign.to_string(), ca(), now()).unwrap_err().reason, "unknown_token");
        let legacy = check(&store, "oakc_0123456789abcdef0123456789abcdef0123456789abcdef", ca(), now());
        let e = legacy.unwrap_err();
        assert_eq!(e.reason, "malformed_token");
        assert!(e.message.contains("no CA fingerprint"), "{e}");
    }

    #[test]
    fn the_first_start_token_is_reusable_and_replaced_when_it_cannot_work() {
        let (dir, store) = store();
        ensure_first(&store, dir.path(), ca()).unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let first = std::fs::read_to_string(&path).unwrap();
        ensure_first(&store, dir.path(), ca()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first, "rewritten although still good");
        for _ in 0..2 {
            let record = check(&store, &first, ca(), now()).unwrap();
            consume(&store, &record).unwrap();
        }
        std::fs::write(&path, "oakc_0123456789abcdef0123456789abcdef0123456789abcdef\n").unwrap();
        ensure_first(&store, dir.path(), ca()).unwrap();
        let replaced = std::fs::read_to_string(&path).unwrap();
        assert!(replaced.starts_with(&format!("oakc.v1.{}.", ca())), "{replaced}");
    }
}
