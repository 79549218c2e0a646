//! Password hashing with Argon2id (PHC strings stored, never the password), and the bounded
//! pool request handlers run it in.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::Semaphore;

use crate::error::{ApiError, ApiResult};

/// Minimum length of passwords users choose (the bootstrap `Admin` default is exempt and warned about).
pub const MIN_PASSWORD_LEN: usize = 8;

pub fn hash(password: &str) -> String {
    let mut salt = [0u8; 16];
    crate::ids::random_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes always encode as a salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

/// True if `password` matches the stored hash; a corrupt hash never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// How long a request waits for a turn at hashing before it is answered 429.
const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Runs argon2 (tens of milliseconds of CPU) on blocking threads, at most `permits` at once:
/// a flood of logins neither stalls the async runtime nor starts unbounded blocking threads.
/// Requests wait up to [`QUEUE_WAIT`] for a turn, then get 429 with `Retry-After`.
pub struct PasswordWork {
    permits: Arc<Semaphore>,
    /// Hash of a random password, verified against for unknown users so that they cost as much
    /// time as known ones (no user enumeration by timing).
    dummy_hash: String,
}

impl PasswordWork {
    /// A pool of `permits` concurrent hash operations; makes the dummy hash (one argon2 run).
    pub fn new(permits: usize) -> Self {
        let mut secret = [0u8; 16];
        crate::ids::random_bytes(&mut secret);
        Self { permits: Arc::new(Semaphore::new(permits.max(1))), dummy_hash: hash(&hex::encode(secret)) }
    }

    /// One permit per core, at least 2 and at most 8 (each argon2 run holds 19 MiB).
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::new(cores.clamp(2, 8))
    }

    /// Whether `password` matches `stored`; with no stored hash (unknown user) the same work is
    /// done against the dummy hash and the answer is `false`.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> ApiResult<bool> {
        let known = stored.is_some();
        let stored = stored.unwrap_or(&self.dummy_hash).to_string();
        let password = password.to_string();
        let matches = self.run(move || verify(&password, &stored)).await?;
        Ok(known && matches)
    }

    /// A new hash of `password`.
    pub async fn hash(&self, password: &str) -> ApiResult<String> {
        let password = password.to_string();
        self.run(move || hash(&password)).await
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
        let busy = || ApiError::TooManyRequests {
            message: "the server is busy checking passwords; try again shortly".into(),
            retry_after_secs: 1,
        };
        let permit = tokio::time::timeout(QUEUE_WAIT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| ApiError::Internal(format!("password hashing failed: {e}")))
    }
}

/// Rejects passwords too short to be worth having.
pub fn check_strength(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        Err(format!("the password must have at least {MIN_PASSWORD_LEN} characters"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let h = super::hash("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify("correct horse", &h));
        assert!(!super::verify("wrong", &h));
        assert!(!super::verify("x", "not a hash"));
    }

    #[tokio::test]
    async fn unknown_users_cost_a_verification_and_never_match() {
        let work = super::PasswordWork::new(2);
        let h = work.hash("correct horse").await.unwrap();
        assert!(work.verify("correct horse", Some(&h)).await.unwrap());
        assert!(!work.verify("correct horse", None).await.unwrap());
        assert!(!work.verify("wrong", Some(&h)).await.unwrap());
    }
}
