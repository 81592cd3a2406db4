//! How this proxy reaches etcd: the endpoints, the user, TLS, and the bounds on connecting
//! and on each request, from `[coordination]`.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, OpenSslClientConfig};

use crate::config::CoordinationConfig;

/// The shortest bound on connecting or on one request, however short the lease.
const MIN_WAIT: Duration = Duration::from_millis(500);

/// A client for the session's requests, each bounded by a third of the lease's TTL.
pub(super) async fn connect(cfg: &CoordinationConfig) -> Result<Client, String> {
    let opts = options(cfg, Some((cfg.lease_ttl / 3).max(MIN_WAIT)))?;
    Client::connect(&cfg.etcd_endpoints, Some(opts)).await.map_err(|e| format!("connect: {e}"))
}

/// The options of a client; `request_timeout` `None` for the campaign's own client (it
/// blocks until this proxy leads).
pub(super) fn options(cfg: &CoordinationConfig, request_timeout: Option<Duration>) -> Result<ConnectOptions, String> {
    let third = cfg.lease_ttl / 3;
    // No HTTP/2 keep-alive pings: etcd closes connections that ping more often than every
    // 5 s (its --grpc-keepalive-min-time), and the lease renewals every third of the TTL,
    // each with a deadline, already notice a dead connection.
    let mut o = ConnectOptions::new().with_connect_timeout(third.max(MIN_WAIT));
    if let Some(t) = request_timeout {
        o = o.with_timeout(t);
    }
    if let Some(u) = &cfg.user {
        // etcd forgets a token unused for --auth-token-ttl (5 min): the lease renewals do not
        // use it, so an idle leader's next write would fail for ever without a new one.
        o = o.with_user(u.clone(), cfg.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default()).with_auto_token_refresh(true);
    }
    if cfg.etcd_endpoints.iter().any(|e| e.starts_with("https://")) {
        let read = |p: &Option<PathBuf>| -> Result<Vec<u8>, String> {
            match p {
                Some(p) => std::fs::read(p).map_err(|e| format!("{}: {e}", p.display())),
                None => Ok(Vec::new()),
            }
        };
        let mut tls = OpenSslClientConfig::default();
        if cfg.ca_file.is_some() {
            tls = tls.ca_cert_pem(&read(&cfg.ca_file)?);
        }
        if cfg.cert_file.is_some() {
            tls = tls.client_cert_pem_and_key(&read(&cfg.cert_file)?, &read(&cfg.key_file)?);
        }
        o = o.with_openssl_tls(tls);
    }
    Ok(o)
}
