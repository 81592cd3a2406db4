//! A real etcd for the coordination tests ([`pgfailover::testkit::etcd`]), from async tests.

use std::time::Duration;

pub use pgfailover::testkit::etcd::Etcd;

/// Starts `n` members off the runtime's workers and waits until they are healthy.
pub async fn start(n: usize) -> Etcd {
    super::blocking(move || Etcd::start(n)).await.expect("start etcd")
}

/// Waits (off the workers) until every running member is healthy again.
pub fn wait_ready(e: &Etcd, limit: Duration) {
    tokio::task::block_in_place(|| e.wait_ready(limit)).expect("etcd healthy again");
}

/// A client for the test's own reads of the keys.
pub async fn client(e: &Etcd) -> etcd_client::Client {
    let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(2));
    etcd_client::Client::connect(e.endpoints(), Some(opts)).await.expect("etcd client")
}
