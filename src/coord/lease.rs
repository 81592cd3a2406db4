//! The session's lease, kept alive: renewed every third of its TTL, each renewal bounded by a
//! third. The session steps down before the lease can expire when renewals stop succeeding.

use std::time::{Duration, Instant};

use etcd_client::Client;
use tokio::sync::watch;

/// Renews `lease` until it is gone or the task is aborted; reports when the last successful
/// renewal was *sent* (the lease runs at least the TTL from then) and how many failed. A
/// renewal that timed out gets a new stream, so a late answer to it is never taken for a
/// newer renewal.
pub(super) async fn keep_alive(mut client: Client, lease: i64, ttl: Duration, renewed: watch::Sender<(Instant, u64)>) {
    let third = ttl / 3;
    let mut stream = None;
    let mut tick = tokio::time::interval(third);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first renewal at once: the deadline counts from the grant until then.
    loop {
        tick.tick().await;
        let sent = Instant::now();
        let attempt = tokio::time::timeout(third, async {
            if stream.is_none() {
                stream = Some(client.lease_keep_alive(lease).await?);
            }
            let (keeper, replies) = stream.as_mut().expect("opened above");
            keeper.keep_alive().await?;
            replies.message().await
        })
        .await;
        match attempt {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {
                renewed.send_modify(|(at, _)| *at = sent);
            }
            other => {
                let expired = matches!(other, Ok(Ok(Some(_))));
                stream = None;
                renewed.send_modify(|(_, failures)| *failures += 1);
                tracing::warn!(outcome = ?other.map(|r| r.map(|x| x.map(|x| x.ttl()))), "etcd lease renewal failed");
                if expired {
                    // The lease is gone (ttl 0): the session ends at its deadline.
                    return;
                }
            }
        }
    }
}
