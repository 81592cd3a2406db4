//! Bearer-token check for POST endpoints, and who the caller is for logs and history.

use std::net::SocketAddr;

use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Request, StatusCode};

use super::{error, Reply};
use crate::config::Secret;

/// Optional header naming the person or tool behind a POST; recorded with the peer address.
pub const USER_HEADER: &str = "x-admin-user";

/// Ok when the request carries the configured token. No token configured → 403 with how to
/// set one; missing or wrong token → 401.
// The error is the reply itself, handed straight back to hyper: boxing it buys nothing.
#[allow(clippy::result_large_err)]
pub fn check<B>(req: &Request<B>, token: Option<&Secret>) -> Result<(), Reply> {
    let Some(token) = token else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "POST endpoints are disabled because no admin token is configured; set PGFAILOVER_ADMIN_TOKEN, PGFAILOVER_ADMIN_TOKEN_FILE, or admin_token_file in proxy.toml",
        ));
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(str::trim);
    let reason = match given {
        Some(g) if token_matches(g.as_bytes(), token.expose().as_bytes()) => return Ok(()),
        Some(_) => "invalid admin token",
        None => "missing Authorization: Bearer <token> header",
    };
    let mut r = error(StatusCode::UNAUTHORIZED, reason);
    r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"pgfailover\""));
    Err(r)
}

/// Compares the SHA-256 digests in constant time: equal lengths whatever was sent, so the
/// timing reveals neither the token's length nor how much of a guess matched.
fn token_matches(given: &[u8], token: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    openssl::sha::sha256(given).ct_eq(&openssl::sha::sha256(token)).into()
}

/// "alice@127.0.0.1" with the optional user header, else the peer address.
pub fn caller<B>(req: &Request<B>, peer: SocketAddr) -> String {
    let user = req
        .headers()
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().filter(|c| c.is_ascii_graphic()).take(64).collect::<String>())
        .filter(|s| !s.is_empty());
    match user {
        Some(u) => format!("{u}@{}", peer.ip()),
        None => format!("admin@{}", peer.ip()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abc", b"abd"));
        assert!(!token_matches(b"abc", b"abcd"));
        assert!(!token_matches(b"", b"a"));
    }
}
