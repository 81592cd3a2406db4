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

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::connection;
use super::keys::Keys;
use crate::config::CoordinationConfig;

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
    let opts = connection::options(cfg, Some(bound)).map_err(AccessError::Tls)?;
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

/// [`check`] before a proxy starts: a refusal is an error (the running process, if any, keeps
/// serving); etcd not answering is logged, and coordination waits for it.
pub async fn check_at_start(cfg: &CoordinationConfig) -> Result<(), AccessError> {
    match check(cfg).await? {
        Access::Granted => tracing::debug!(cluster = %cfg.cluster, "etcd grants this proxy read and write on its cluster's keys"),
        Access::Unknown(why) => tracing::warn!(error = %why, "could not check the etcd user's access now (etcd does not answer); coordination waits for etcd"),
    }
    Ok(())
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
