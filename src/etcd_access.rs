//! Whether the etcd user of `[coordination]` may do what coordination needs, asked once
//! before the proxy starts: read and write every key under `/pgfailover/<cluster>/` (the
//! record, fences, members, requests, the election). A user etcd refuses (a wrong password,
//! a role without write access) stops the start with what to grant, instead of a proxy that
//! runs, never leads and logs "permission denied" every second. etcd not answering is no
//! refusal: coordination waits for it, as it does later.
//!
//! The write is checked without writing: a transaction whose comparison cannot hold (a
//! version of -1) and whose other branch would put a key. etcd checks the permissions of
//! every operation of a transaction before it evaluates the comparison.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, OpenSslClientConfig, Txn, TxnOp};

use crate::config::CoordinationConfig;
use crate::coord::records::Keys;

/// gRPC status codes (tonic's `Code` discriminants) that mean "etcd answered: not this user".
const INVALID_ARGUMENT: i32 = 3;
const PERMISSION_DENIED: i32 = 7;
const FAILED_PRECONDITION: i32 = 9;
const UNAUTHENTICATED: i32 = 16;

/// Why the start is refused: etcd answered and said no.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "etcd refused {who} ({what}): {reason}; the proxies need read and write on the prefix {prefix} \
         (etcdctl role grant-permission <role> --prefix=true readwrite {prefix}; see the README's Security section)"
    )]
    Refused { who: String, what: &'static str, prefix: String, reason: String },
    /// The TLS files could not be read.
    #[error("etcd TLS: {0}")]
    Tls(String),
}

/// What came of the check when etcd did not say no.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    /// The user may read and write the prefix.
    Granted,
    /// etcd did not answer in time (or at all): nothing is known; coordination waits for it.
    Unknown(String),
}

/// Client options for `cfg`: credentials, TLS, and `timeout` on each request (`None`: no
/// bound, for calls that block by design).
pub fn connect_options(cfg: &CoordinationConfig, timeout: Option<Duration>) -> Result<ConnectOptions, String> {
    let third = cfg.lease_ttl / 3;
    let mut o = ConnectOptions::new().with_connect_timeout(third.max(Duration::from_millis(500)));
    if let Some(t) = timeout {
        o = o.with_timeout(t);
    }
    if let Some(u) = &cfg.user {
        // etcd forgets a token unused for --auth-token-ttl (5 min); the lease renewals do not
        // use it, so a long-lived client must fetch a new one when told it expired.
        o = o.with_user(u.clone(), cfg.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default()).with_auto_token_refresh(true);
    }
    if cfg.etcd_endpoints.iter().any(|e| e.starts_with("https://")) {
        let read = |p: &Option<std::path::PathBuf>| -> Result<Vec<u8>, String> {
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

/// Reads the cluster's prefix and checks a write to it, each bounded by a third of the lease
/// TTL (at least 500 ms).
pub async fn check(cfg: &CoordinationConfig) -> Result<Access, AccessError> {
    let prefix = Keys::new(&cfg.cluster).prefix;
    let who = cfg.user.as_ref().map(|u| format!("user {u:?}")).unwrap_or_else(|| "this proxy (no etcd user configured)".into());
    let refused = |what: &'static str, e: etcd_client::Error| match refusal(&e) {
        Some(reason) => Err(AccessError::Refused { who: who.clone(), what, prefix: prefix.clone(), reason }),
        None => Ok(Access::Unknown(format!("{what}: {e}"))),
    };
    let bound = (cfg.lease_ttl / 3).max(Duration::from_millis(500));
    let opts = connect_options(cfg, Some(bound)).map_err(AccessError::Tls)?;
    let attempt = async {
        let mut client = match Client::connect(&cfg.etcd_endpoints, Some(opts)).await {
            Ok(c) => c,
            Err(e) => return refused("authentication", e),
        };
        if let Err(e) = client.get(prefix.clone(), Some(GetOptions::new().with_prefix().with_count_only())).await {
            return refused("read", e);
        }
        let probe = format!("{prefix}access-check");
        let txn = Txn::new().when([Compare::version(probe.clone(), CompareOp::Equal, -1)]).and_then([TxnOp::put(probe, "", None)]);
        match client.txn(txn).await {
            Ok(_) => Ok(Access::Granted),
            Err(e) => refused("write", e),
        }
    };
    // Connecting, reading and the transaction: three steps, each bounded.
    tokio::time::timeout(bound * 3, attempt).await.unwrap_or_else(|_| Ok(Access::Unknown("etcd did not answer in time".into())))
}

/// etcd's answer when it is a refusal of this user (not a network problem).
fn refusal(e: &etcd_client::Error) -> Option<String> {
    match e {
        etcd_client::Error::GRpcStatus(s) if [INVALID_ARGUMENT, PERMISSION_DENIED, FAILED_PRECONDITION, UNAUTHENTICATED].contains(&(s.code() as i32)) => {
            Some(s.message().to_string())
        }
        _ => None,
    }
}
