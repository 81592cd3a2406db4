//! Fixtures for the tests and benchmarks, compiled only with the `testkit` feature (which the
//! tests and benchmarks turn on through the crate's dev-dependency on itself): never in a
//! release build.
//!
//! - [`etcd`]: a throw-away etcd (one or three members) for the coordination tests.
//! - [`socket_activated`]: starts a program as a systemd socket unit would.
//! - [`crash_monitor_from_env`]: crash injection, for the binary's own tests.
//!
//! The local PostgreSQL clusters ([`crate::localpg`]) are not here: the demo runs them too.

pub mod etcd;

pub use crate::takeover::socket_activated;

/// The variable [`crash_monitor_from_env`] reads.
pub const CRASH_MONITOR_AFTER: &str = "PGFAILOVER_DEBUG_CRASH_MONITOR_AFTER";

/// `PGFAILOVER_DEBUG_CRASH_MONITOR_AFTER=<duration>` makes `proxy`'s health monitor panic that
/// long after the start, so a test of the binary sees it fail closed. Needs a runtime.
pub fn crash_monitor_from_env(proxy: &crate::server::Proxy) {
    let Some(after) = std::env::var(CRASH_MONITOR_AFTER).ok().and_then(|v| crate::duration::parse_duration(&v).ok()) else {
        return;
    };
    let monitor = proxy.monitor.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        monitor.crash_for_test().await;
    });
}
