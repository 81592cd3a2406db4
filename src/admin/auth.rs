//! Who may do what on the admin port, and who the caller is for logs and history.
//!
//! - POST endpoints need the admin token (`admin_token`); without one configured they are
//!   off (403).
//! - Every GET endpoint but the probes needs the read token (`admin_read_token`) when one is
//!   configured, or the admin token: they show addresses, server errors and configuration.
//!   The probes `/health`, `/ready` and `/ready/ro` stay open for load balancers and
//!   orchestrators; `/metrics` is open only with `admin_metrics_open`. A GET endpoint added
//!   later is protected unless it is named here.

use std::net::SocketAddr;

use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Request, StatusCode};

use super::{error, AdminLive, Reply};
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
    let reason = match bearer(req) {
        Some(g) if token_matches(g.as_bytes(), token.expose().as_bytes()) => return Ok(()),
        Some(_) => "invalid admin token",
        None => "missing Authorization: Bearer <token> header",
    };
    Err(unauthorized(reason))
}

/// A warning when the read endpoints may answer anyone beyond this host: the admin port is
/// bound to a non-loopback address and no read token is set.
pub fn unprotected_reads(cfg: &crate::config::Config) -> Option<String> {
    (cfg.admin_read_token.is_none() && !cfg.admin_listen.ip().is_loopback()).then(|| {
        format!(
            "admin_listen {} is no loopback address and admin_read_token is not set: whoever can reach the port reads the status, \
             health, history and metrics (backend addresses, server errors, configuration); set admin_read_token, or keep the port \
             private (bind it to 127.0.0.1, publish it on the host's loopback only, or a NetworkPolicy)",
            cfg.admin_listen
        )
    })
}

/// Whether GET `path` answers without a token whatever is configured: the probes, and
/// `/metrics` when `metrics_open`.
pub fn open_to_all(path: &str, metrics_open: bool) -> bool {
    matches!(path, "/health" | "/ready" | "/ready/ro") || (path == "/metrics" && metrics_open)
}

/// Ok when no read token is configured, or when the request carries it or the admin token;
/// 401 otherwise.
// As `check`: the error is the reply itself.
#[allow(clippy::result_large_err)]
pub fn check_read<B>(req: &Request<B>, live: &AdminLive) -> Result<(), Reply> {
    let Some(read) = &live.read_token else { return Ok(()) };
    let Some(given) = bearer(req) else {
        return Err(unauthorized("this endpoint needs the admin read token: send Authorization: Bearer <admin_read_token>"));
    };
    // Both compared, whatever the first says: the timing tells nothing about which matched.
    let as_read = token_matches(given.as_bytes(), read.expose().as_bytes());
    let as_admin = live.token.as_ref().is_some_and(|t| token_matches(given.as_bytes(), t.expose().as_bytes()));
    if as_read | as_admin {
        Ok(())
    } else {
        Err(unauthorized("invalid read token"))
    }
}

/// The bearer token a request carries, if any.
fn bearer<B>(req: &Request<B>) -> Option<&str> {
    req.headers().get(AUTHORIZATION).and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer "))).map(str::trim)
}

fn unauthorized(reason: &str) -> Reply {
    let mut r = error(StatusCode::UNAUTHORIZED, reason);
    r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"pgfailover\""));
    r
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

    fn live(read: Option<&str>, admin: Option<&str>) -> AdminLive {
        let cfg = crate::config::Config { admin_read_token: read.map(Secret::new), admin_token: admin.map(Secret::new), ..Default::default() };
        AdminLive::new(&crate::live::Loaded::now(cfg, None).expect("no TLS files"))
    }

    fn get(token: Option<&str>) -> Request<()> {
        let mut b = Request::get("/failover/status");
        if let Some(t) = token {
            b = b.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_read_token_or_the_admin_token_reads() {
        let open = live(None, Some("w"));
        assert!(check_read(&get(None), &open).is_ok(), "no read token: reads are open");
        let locked = live(Some("r"), Some("w"));
        assert!(check_read(&get(Some("r")), &locked).is_ok());
        assert!(check_read(&get(Some("w")), &locked).is_ok(), "the admin token reads too");
        for bad in [None, Some("x"), Some("")] {
            let r = check_read(&get(bad), &locked).unwrap_err();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{bad:?}");
            assert!(r.headers().contains_key(WWW_AUTHENTICATE));
        }
        assert!(check_read(&get(Some("w")), &live(Some("r"), None)).is_err(), "no admin token configured: only the read token");
    }

    #[test]
    fn the_probes_stay_open_and_metrics_by_its_own_switch() {
        for p in ["/health", "/ready", "/ready/ro"] {
            assert!(open_to_all(p, false), "{p}");
        }
        for p in ["/failover/status", "/failover/health", "/failover/history", "/failover/metrics", "/failover/anything-new", "/metrics"] {
            assert!(!open_to_all(p, false), "{p}");
        }
        assert!(open_to_all("/metrics", true));
        assert!(!open_to_all("/failover/status", true));
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abc", b"abd"));
        assert!(!token_matches(b"abc", b"abcd"));
        assert!(!token_matches(b"", b"a"));
    }
}
