//! Access and refresh tokens: HS256 JWTs signed with a key generated once per data directory.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use oak_store::UserRecord;
use serde::{Deserialize, Serialize};

/// Access tokens live 10 minutes, as in the original.
pub const ACCESS_TTL_SECS: u64 = 10 * 60;
/// Refresh tokens live 7 days (the original meant to, but issued 30-day ones).
pub const REFRESH_TTL_SECS: u64 = 7 * 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Access,
    Refresh,
}

/// Claims of both token kinds (names as flask-jwt-extended uses them, plus `user`, `roles`,
/// `organization`, `uid` and `gen`). `roles` are for clients only: requests read them anew.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub user: String,
    /// The account's id: a new account of the same name does not inherit old tokens.
    pub uid: String,
    /// The account's token generation at issue; a token of an older one is revoked.
    #[serde(rename = "gen")]
    pub generation: u64,
    pub roles: Vec<String>,
    /// Organization id the roles belong to.
    pub organization: String,
    #[serde(rename = "type")]
    pub kind: TokenKind,
    pub fresh: bool,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
}

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl TokenKeys {
    pub fn from_secret(secret: &[u8]) -> Self {
        Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret) }
    }

    /// Signs a token of `kind` for `user` (at its current token generation) with `roles` in
    /// `organization`.
    pub fn issue(
        &self,
        kind: TokenKind,
        user: &UserRecord,
        roles: &[String],
        organization: &str,
        fresh: bool,
    ) -> String {
        let now = crate::ids::now() as u64;
        let ttl = match kind {
            TokenKind::Access => ACCESS_TTL_SECS,
            TokenKind::Refresh => REFRESH_TTL_SECS,
        };
        let claims = Claims {
            sub: user.name.clone(),
            user: user.name.clone(),
            uid: user.id.clone(),
            generation: user.token_generation,
            roles: roles.to_vec(),
            organization: organization.to_string(),
            kind,
            fresh,
            iat: now,
            nbf: now,
            exp: now + ttl,
            jti: crate::ids::new_id(),
        };
        self.sign(&claims)
    }

    fn sign(&self, claims: &Claims) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Checks signature, expiry, not-before and kind (5 s leeway for clock skew); the error
    /// says what is wrong with the token. Whether its account and generation are current is
    /// the extractor's check.
    pub fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, String> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub", "nbf"]);
        let claims = decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
                jsonwebtoken::errors::ErrorKind::InvalidSignature => "the token's signature is invalid".to_string(),
                _ => "the token is malformed".to_string(),
            })?
            .claims;
        if claims.kind != kind {
            return Err(match kind {
                TokenKind::Access => "a refresh token cannot authorize requests; use it with /api/auth/refresh".into(),
                TokenKind::Refresh => "an access token cannot be refreshed; send the refresh token".into(),
            });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> UserRecord {
        UserRecord {
            id: "id-admin".into(),
            name: "Admin".into(),
            email: String::new(),
            created_at: String::new(),
            password_hash: String::new(),
            token_generation: 3,
        }
    }

    #[test]
    fn issue_and_verify() {
        let keys = TokenKeys::from_secret(b"0123456789abcdef0123456789abcdef");
        let t = keys.issue(TokenKind::Access, &admin(), &["Admin".into()], "org", true);
        let c = keys.verify(&t, TokenKind::Access).unwrap();
        assert_eq!((c.user.as_str(), c.roles.as_slice()), ("Admin", &["Admin".to_string()][..]));
        assert_eq!((c.uid.as_str(), c.generation), ("id-admin", 3));
        assert!(keys.verify(&t, TokenKind::Refresh).unwrap_err().contains("access token"));
        let other = TokenKeys::from_secret(b"another key of thirty-two bytes!");
        assert!(other.verify(&t, TokenKind::Access).unwrap_err().contains("signature"));
        assert!(keys.verify("garbage", TokenKind::Access).unwrap_err().contains("malformed"));
    }

    #[test]
    fn a_token_not_valid_yet_is_refused() {
        let keys = TokenKeys::from_secret(b"0123456789abcdef0123456789abcdef");
        let t = keys.issue(TokenKind::Access, &admin(), &[], "org", true);
        let mut claims = keys.verify(&t, TokenKind::Access).unwrap();
        claims.nbf += 3600;
        let err = keys.verify(&keys.sign(&claims), TokenKind::Access).unwrap_err();
        assert!(err.contains("not valid yet"), "{err}");
        // within the leeway it passes
        claims.nbf -= 3600 - 2;
        keys.verify(&keys.sign(&claims), TokenKind::Access).unwrap();
    }
}
