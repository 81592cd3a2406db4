//! Re-pointing standbys at the routed primary: the ones a failover left behind, the ones
//! that stopped streaming, and (with `failover.synchronous`) the ones that stream under
//! another name than their backend's, which the primary's list could not name.

use std::time::Duration;

use crate::cluster::BackendId;
use crate::config::SyncMode;

use super::{Action, Machine, Now, Repoint};

/// A failed or ignored re-point is tried again after this.
pub(super) const REPOINT_RETRY: Duration = Duration::from_secs(10);

impl Machine {
    /// After a failover (or whenever a standby stops following), points standbys at the
    /// routed primary: at once when a standby is on another timeline, after three intervals
    /// without streaming otherwise; again every [`REPOINT_RETRY`] while it still does not
    /// follow. With synchronous mode, a standby that has streamed from the primary for an
    /// interval without appearing under its name there is re-pointed too (which sets its
    /// `application_name`).
    pub(super) fn plan_repoints(&mut self, now: Now, acts: &mut Vec<Action>) {
        if !self.settings.repoint_standbys || !self.may_promote() || self.in_flight.is_some() {
            return;
        }
        let Some(w) = self.route else { return };
        // Only a primary known to be the only one is followed: every backend checked, no
        // other writable server of the cluster answering.
        let all_checked = self.backends.iter().all(|b| b.last_check.is_some());
        let another = self.backends.ids().any(|i| i != w && self.backends[i].fresh() && self.backends[i].claims_primary() && self.same_cluster(i));
        if !all_checked || another {
            return;
        }
        let stalled_after = self.settings.interval * 3;
        for s in self.backends.ids().filter(|s| *s != w) {
            let b = &self.backends[s];
            if !(b.fresh() && b.healthy && b.in_recovery() && self.same_cluster(s) && b.fence.is_none()) {
                continue;
            }
            let recent = b.repoint.as_ref().is_some_and(|r| r.primary == w && now.mono.saturating_duration_since(r.at) < REPOINT_RETRY);
            if self.following(s, w) {
                if self.unnamed(s, w) && !recent {
                    tracing::info!(standby = %b.name, primary = %self.backends[w].name, "the standby streams under another application_name; re-pointing it to name it");
                    self.backends[s].repoint = Some(Repoint { primary: w, at: now.mono, outcome: None });
                    acts.push(Action::Repoint { standby: s, primary: w });
                }
                continue;
            }
            // Never towards a lower timeline: a standby ahead of the routed primary means
            // the route is the stale one.
            if b.timeline() > self.backends[w].timeline() {
                continue;
            }
            let other_timeline = b.timeline() != self.backends[w].timeline();
            let stalled = b.not_streaming_since.is_some_and(|t| now.mono.saturating_duration_since(t) >= stalled_after);
            if !(other_timeline || stalled || self.fenced_upstream(s).is_some()) || recent {
                continue;
            }
            self.backends[s].repoint = Some(Repoint { primary: w, at: now.mono, outcome: None });
            acts.push(Action::Repoint { standby: s, primary: w });
        }
    }

    /// Synchronous mode: standby `s` streams from primary `w` (not cascading from another
    /// backend) but `w` lists no WAL sender under its name, in a check that began an
    /// interval or more after `s` was seen streaming.
    pub(super) fn unnamed(&self, s: BackendId, w: BackendId) -> bool {
        if self.settings.synchronous == SyncMode::Off {
            return false;
        }
        let (b, p) = (&self.backends[s], &self.backends[w]);
        let Some(obs) = p.obs.as_ref().filter(|_| p.fresh()) else { return false };
        if !self.streams_from(s, w) {
            return false;
        }
        let settled = match (b.streaming_since, p.success_started) {
            (Some(since), Some(checked)) => checked >= since + self.settings.interval,
            _ => false,
        };
        settled && !obs.senders.iter().any(|x| x.name == b.name)
    }
}
