//! Password hashing with Argon2id (PHC strings stored, never the password).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

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
}
