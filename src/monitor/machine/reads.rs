//! Which backends the read-only port may use, and why the others may not.
//!
//! A standby serves reads while it answers, is in recovery, belongs to the cluster, is not
//! fenced, follows the routed primary (streaming on its timeline), and is within both
//! `[read]` bounds: WAL bytes its replay is behind the primary's last seen position, and its
//! replay delay (the age of its last replayed commit while it has received WAL it has not
//! replayed; an idle cluster is not behind). During a failover (no primary routed), standbys
//! on the lost primary's timeline keep serving, their delay counted from the moment the
//! primary was lost, until they are too far behind.

use crate::cluster::BackendId;
use std::time::{Duration, Instant};

use crate::route::{ReadRoute, ReadTarget};

use super::Machine;

/// One backend's standing on the read-only port.
#[derive(Clone, Debug, PartialEq)]
pub enum ReadStanding {
    Serves { lag_bytes: u64, lag: Duration },
    Not(String),
}

impl Machine {
    /// Every backend's standing, in config order.
    pub fn read_standing(&self, now: Instant) -> Vec<ReadStanding> {
        self.backends.ids().map(|i| self.read_standing_of(i, now)).collect()
    }

    fn read_standing_of(&self, i: BackendId, now: Instant) -> ReadStanding {
        let r = &self.settings.read;
        let b = &self.backends[i];
        let not = |why: String| ReadStanding::Not(why);
        if self.route == Some(i) {
            return if r.include_primary {
                ReadStanding::Serves { lag_bytes: 0, lag: Duration::ZERO }
            } else {
                not("the primary (read.include_primary is off)".into())
            };
        }
        if !b.healthy || !b.fresh() {
            return not(match &b.last_error {
                Some(e) => format!("checks fail: {e}"),
                None => "not checked yet".into(),
            });
        }
        let Some(obs) = &b.obs else { return not("not checked yet".into()) };
        if !obs.in_recovery {
            return not("not a standby".into());
        }
        if !self.same_cluster(i) {
            return not("belongs to another cluster".into());
        }
        if let Some(f) = &b.fence {
            return not(format!("fenced: {}", f.reason));
        }
        // What it must follow, how far the primary's WAL is, and since when the primary is
        // gone (during a failover).
        let (reference_lsn, lost_since) = match (self.route, &self.in_flight) {
            (Some(w), _) => {
                if !self.following(i, w) {
                    return not(format!("not following the primary {}", self.backends[w].name));
                }
                (self.backends[w].lsn(), None)
            }
            (None, Some(f)) => {
                if f.from_timeline.is_none_or(|tl| b.timeline() != tl) {
                    return not("not on the lost primary's timeline".into());
                }
                (f.from_lsn, Some(f.started))
            }
            (None, None) => return not("no primary is known yet".into()),
        };
        let replayed = obs.replay_lsn.or(obs.lsn());
        let lag_bytes = match (reference_lsn, replayed) {
            (Some(p), Some(s)) => p.saturating_sub(s),
            _ => return not("reports no WAL position".into()),
        };
        if lag_bytes > r.max_lag_bytes {
            return not(format!("replay {lag_bytes} bytes behind the primary (read.max_lag_bytes {})", r.max_lag_bytes));
        }
        // A server that replayed no commit since it started cannot date its replay: count
        // from when the checks first saw it behind.
        let delay = match (obs.replay_delay, b.behind_since) {
            (Some(d), _) => d,
            (None, Some(since)) => now.saturating_duration_since(since),
            (None, None) => Duration::ZERO,
        };
        let lag = delay.max(lost_since.map(|t| now.saturating_duration_since(t)).unwrap_or_default());
        if lag > r.max_lag {
            return not(format!("replay {} behind (read.max_lag {})", humantime::format_duration(round_ms(lag)), humantime::format_duration(r.max_lag)));
        }
        ReadStanding::Serves { lag_bytes, lag }
    }

    /// The read route to publish (its epoch is set by the writer).
    pub fn read_route(&self, now: Instant) -> ReadRoute {
        let standing = self.read_standing(now);
        let targets: Vec<ReadTarget> = self
            .backends
            .ids()
            .zip(&standing)
            .filter_map(|(i, s)| match s {
                ReadStanding::Serves { lag_bytes, lag } => {
                    Some(ReadTarget { backend: i, lag_bytes: *lag_bytes, lag: *lag, replay_lsn: self.replay_position(i) })
                }
                ReadStanding::Not(_) => None,
            })
            .collect();
        let live = self.backends.ids().filter(|i| self.backends[*i].healthy && self.backends[*i].fence.is_none()).collect();
        let reason = if targets.is_empty() {
            let each: Vec<String> = self
                .backends
                .ids()
                .zip(&standing)
                .filter_map(|(i, s)| match s {
                    ReadStanding::Not(why) => Some(format!("{}: {why}", self.backends[i].name)),
                    ReadStanding::Serves { .. } => None,
                })
                .collect();
            format!("no standby qualifies for reads ({})", each.join("; "))
        } else {
            String::new()
        };
        ReadRoute { epoch: 0, targets, primary: self.route, live, reason: reason.into() }
    }
}

impl Machine {
    /// How far `i` has replayed, for a session's `min_lsn`: the primary has everything.
    fn replay_position(&self, i: BackendId) -> u64 {
        if self.route == Some(i) {
            return u64::MAX;
        }
        self.backends[i].obs.as_ref().and_then(|o| o.replay_lsn.or(o.lsn())).unwrap_or(0)
    }
}

/// Whole milliseconds, for people.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
