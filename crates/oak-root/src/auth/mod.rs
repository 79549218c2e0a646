//! Authentication: password hashes, signed tokens, the login rate limit and the request
//! extractors that turn a bearer token into a caller.

pub mod accounts;
pub mod extract;
pub mod limiter;
pub mod passwords;
pub mod tokens;
