//! Who may connect, and which topics an authenticated client may use.
//!
//! Authentication is delegated to an [`Authorizer`] (the cluster implements it over its node table);
//! authorization is a fixed rule enforced by the broker itself, so that no authorizer can get it wrong:
//! a node `X` publishes only below `nodes/X/` and subscribes only to filters whose first two levels
//! are literally `nodes` and `X`.

use std::collections::HashMap;
use std::fmt;

/// The identity a client authenticated as.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A worker node, confined to its own topic space `nodes/<node_id>/…`.
    Node(String),
    /// A client with the same rights as a [`LocalClient`](crate::LocalClient): any topic, any filter.
    /// Meant for operator tools; an authorizer must never return it for worker credentials.
    Unrestricted(String),
}

impl Principal {
    /// A worker node principal.
    pub fn node(node_id: impl Into<String>) -> Self {
        Principal::Node(node_id.into())
    }

    /// The node id, for a node principal.
    pub fn node_id(&self) -> Option<&str> {
        match self {
            Principal::Node(id) => Some(id),
            Principal::Unrestricted(_) => None,
        }
    }

    /// The node id or the unrestricted principal's name.
    pub fn name(&self) -> &str {
        match self {
            Principal::Node(id) | Principal::Unrestricted(id) => id,
        }
    }

    /// Whether the broker accepts this principal at all. A node id must be a single, non-empty topic
    /// level without wildcards: a node called `a/b` would otherwise own part of node `a`'s topics.
    pub fn is_well_formed(&self) -> bool {
        let name = self.name();
        match self {
            Principal::Node(_) => !name.is_empty() && !name.contains(['/', '+', '#', '\0']),
            Principal::Unrestricted(_) => !name.is_empty(),
        }
    }

    /// May this principal publish to `topic` (a topic name, not a filter)?
    /// A node `X` may publish only to topics starting with `nodes/X/`.
    pub fn may_publish(&self, topic: &str) -> bool {
        match self {
            Principal::Unrestricted(_) => true,
            Principal::Node(id) => topic
                .strip_prefix("nodes/")
                .and_then(|rest| rest.strip_prefix(id.as_str()))
                .is_some_and(|rest| rest.starts_with('/')),
        }
    }

    /// May this principal subscribe to `filter`? A node `X` may subscribe only to filters whose
    /// first two levels are literally `nodes` and `X` (so no wildcard in either of them).
    pub fn may_subscribe(&self, filter: &str) -> bool {
        match self {
            Principal::Unrestricted(_) => true,
            Principal::Node(id) => {
                let mut levels = filter.split('/');
                levels.next() == Some("nodes") && levels.next() == Some(id.as_str())
            }
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Node(id) => write!(f, "node {id}"),
            Principal::Unrestricted(name) => write!(f, "unrestricted client {name}"),
        }
    }
}

/// Why a CONNECT was refused; each maps to an MQTT 3.1.1 CONNACK return code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown user or wrong password (CONNACK 4, "bad user name or password").
    #[error("bad user name or password")]
    BadCredentials,
    /// Credentials are valid but the client may not connect (CONNACK 5, "not authorized").
    #[error("not authorized")]
    NotAuthorized,
    /// The client identifier is not acceptable (CONNACK 2, "identifier rejected").
    #[error("client identifier rejected")]
    BadClientId,
    /// The credential store could not be consulted (CONNACK 3, "server unavailable").
    #[error("authentication unavailable: {0}")]
    Unavailable(String),
}

/// Decides who a connecting client is.
///
/// Called once per CONNECT on tokio's blocking thread pool, with at most
/// [`BrokerConfig::auth_concurrency`](crate::BrokerConfig::auth_concurrency) calls at a time, so an
/// implementation may verify a slow password hash or read a database.
pub trait Authorizer: Send + Sync + 'static {
    /// `username`/`password` are `None` when absent or empty in the CONNECT packet.
    fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Principal, AuthError>;
}

/// An [`Authorizer`] from a closure; see [`from_fn`].
pub struct FnAuthorizer<F>(F);

/// Wraps a closure `(client_id, username, password) -> Result<Principal, AuthError>` as an [`Authorizer`].
pub fn from_fn<F>(f: F) -> FnAuthorizer<F>
where
    F: Fn(&str, Option<&str>, Option<&[u8]>) -> Result<Principal, AuthError> + Send + Sync + 'static,
{
    FnAuthorizer(f)
}

impl<F> Authorizer for FnAuthorizer<F>
where
    F: Fn(&str, Option<&str>, Option<&[u8]>) -> Result<Principal, AuthError> + Send + Sync + 'static,
{
    fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Principal, AuthError> {
        (self.0)(client_id, username, password)
    }
}

/// A fixed user table (user name → password, principal), for tests and small setups.
#[derive(Default)]
pub struct StaticAuthorizer {
    users: HashMap<String, (Vec<u8>, Principal)>,
}

impl StaticAuthorizer {
    /// An empty table: every CONNECT is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds node `node_id`, logging in with user name `node_id` and `password`.
    pub fn with_node(mut self, node_id: &str, password: impl AsRef<[u8]>) -> Self {
        self.insert(node_id, password, Principal::node(node_id));
        self
    }

    /// Adds (or replaces) user `username` authenticating as `principal`.
    pub fn with_user(mut self, username: &str, password: impl AsRef<[u8]>, principal: Principal) -> Self {
        self.insert(username, password, principal);
        self
    }

    /// Adds (or replaces) user `username` authenticating as `principal`.
    pub fn insert(&mut self, username: &str, password: impl AsRef<[u8]>, principal: Principal) {
        self.users.insert(username.to_owned(), (password.as_ref().to_vec(), principal));
    }
}

impl Authorizer for StaticAuthorizer {
    fn authenticate(
        &self,
        _client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Principal, AuthError> {
        let (Some(username), Some(password)) = (username, password) else {
            return Err(AuthError::BadCredentials);
        };
        match self.users.get(username) {
            Some((expected, principal)) if constant_time_eq(expected, password) => Ok(principal.clone()),
            _ => Err(AuthError::BadCredentials),
        }
    }
}

/// Compares two secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_publishes_only_below_its_own_prefix() {
        let p = Principal::node("n1");
        assert!(p.may_publish("nodes/n1/information"));
        assert!(p.may_publish("nodes/n1/jobs/resources"));
        // The overlay's topics are below the node's prefix too.
        assert!(p.may_publish("nodes/n1/net/tablequery/request"));
        assert!(p.may_publish("nodes/n1/net/interest/remove"));
        assert!(!p.may_publish("nodes/n2/net/tablequery/request"));
        assert!(p.may_publish("nodes/n1/"));
        assert!(!p.may_publish("nodes/n1"));
        assert!(!p.may_publish("nodes/n10/information"));
        assert!(!p.may_publish("nodes/n2/information"));
        assert!(!p.may_publish("nodes//n1/x"));
        assert!(!p.may_publish("xnodes/n1/x"));
        assert!(!p.may_publish("jobs/n1/x"));
        assert!(!p.may_publish(""));
    }

    #[test]
    fn node_subscribes_only_with_literal_first_levels() {
        let p = Principal::node("n1");
        assert!(p.may_subscribe("nodes/n1/control/#"));
        assert!(p.may_subscribe("nodes/n1/control/+"));
        assert!(p.may_subscribe("nodes/n1/net/tablequery/result"));
        assert!(!p.may_subscribe("nodes/+/net/tablequery/result"));
        assert!(p.may_subscribe("nodes/n1/#"));
        assert!(p.may_subscribe("nodes/n1"));
        assert!(!p.may_subscribe("nodes/+/control/deploy"));
        assert!(!p.may_subscribe("nodes/#"));
        assert!(!p.may_subscribe("#"));
        assert!(!p.may_subscribe("+/n1/control"));
        assert!(!p.may_subscribe("nodes/n2/#"));
        assert!(!p.may_subscribe("nodes/n10/#"));
        assert!(!p.may_subscribe("nodes"));
    }

    #[test]
    fn unrestricted_may_do_anything() {
        let p = Principal::Unrestricted("ops".into());
        assert!(p.may_publish("nodes/n2/control/deploy"));
        assert!(p.may_subscribe("#"));
    }

    #[test]
    fn node_ids_that_would_escape_their_prefix_are_rejected() {
        assert!(Principal::node("n1").is_well_formed());
        assert!(Principal::node("0f3a-4b").is_well_formed());
        for bad in ["", "a/b", "+", "#", "a#", "x\0"] {
            assert!(!Principal::node(bad).is_well_formed(), "{bad:?}");
        }
        assert!(!Principal::Unrestricted(String::new()).is_well_formed());
    }

    #[test]
    fn static_authorizer_checks_user_and_password() {
        let auth = StaticAuthorizer::new().with_node("n1", "pw");
        assert_eq!(auth.authenticate("c", Some("n1"), Some(b"pw")), Ok(Principal::node("n1")));
        assert_eq!(auth.authenticate("c", Some("n1"), Some(b"px")), Err(AuthError::BadCredentials));
        assert_eq!(auth.authenticate("c", Some("n1"), Some(b"pw2")), Err(AuthError::BadCredentials));
        assert_eq!(auth.authenticate("c", Some("n2"), Some(b"pw")), Err(AuthError::BadCredentials));
        assert_eq!(auth.authenticate("c", None, None), Err(AuthError::BadCredentials));
        assert_eq!(auth.authenticate("c", Some("n1"), None), Err(AuthError::BadCredentials));
    }

    #[test]
    fn closures_are_authorizers() {
        let auth = from_fn(
            |client_id, _user, _pw| {
                if client_id == "ok" {
                    Ok(Principal::node("n1"))
                } else {
                    Err(AuthError::BadClientId)
                }
            },
        );
        assert_eq!(auth.authenticate("ok", None, None), Ok(Principal::node("n1")));
        assert_eq!(auth.authenticate("no", None, None), Err(AuthError::BadClientId));
    }
}
