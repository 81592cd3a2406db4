//! Which standby could take over: lag, timelines, whom it follows, and re-pointing the ones
//! left behind by a failover.

use crate::cluster::BackendId;
use std::time::Duration;

use crate::monitor::observation::format_lsn;

use super::{Action, Machine, Now, Repoint};

/// A failed or ignored re-point is tried again after this.
const REPOINT_RETRY: Duration = Duration::from_secs(10);

/// The primary a standby must follow to be eligible.
enum Reference {
    /// The routed primary.
    Routed(BackendId),
    /// During a failover: the lost primary's timeline.
    Lost(u32),
    /// Nothing known (start-up).
    None,
}

impl Machine {
    pub(super) fn same_cluster(&self, i: BackendId) -> bool {
        self.backends[i].obs.as_ref().map(|o| o.system_identifier) == self.system_identifier
    }

    fn reference(&self) -> Reference {
        match (self.route, &self.in_flight) {
            (Some(w), _) => Reference::Routed(w),
            (None, Some(f)) => f.from_timeline.map_or(Reference::None, Reference::Lost),
            (None, None) => Reference::None,
        }
    }

    /// Replication lag of backend `i` in bytes behind the reference primary position.
    pub fn lag_bytes(&self, i: BackendId) -> Option<u64> {
        let b = &self.backends[i];
        let obs = b.obs.as_ref().filter(|o| o.in_recovery)?;
        Some(self.reference_lsn()?.saturating_sub(obs.lsn()?))
    }

    /// The furthest WAL position known on the routed primary's timeline (or the lost
    /// primary's): the reference for standby lag.
    pub(super) fn reference_lsn(&self) -> Option<u64> {
        let from = self.in_flight.as_ref().and_then(|f| f.from_lsn);
        match self.route {
            Some(w) => self.backends[w].lsn(),
            None => self
                .backends
                .ids()
                .filter(|i| self.backends[*i].fence.is_none() && self.same_cluster(*i))
                .filter_map(|i| self.backends[i].lsn())
                .chain(from)
                .max(),
        }
    }

    /// Standby `s` streams from the routed primary `w`: in recovery, a WAL receiver
    /// streaming on `w`'s timeline, and not from a fenced backend.
    pub fn following(&self, s: BackendId, w: BackendId) -> bool {
        let b = &self.backends[s];
        b.in_recovery() && b.streaming() && b.timeline() == self.backends[w].timeline() && self.fenced_upstream(s).is_none()
    }

    /// The fenced backend `s` streams from, if its upstream address names one.
    fn fenced_upstream(&self, s: BackendId) -> Option<BackendId> {
        let up = self.backends[s].upstream()?;
        self.backends.ids().find(|i| *i != s && self.backends[*i].fence.is_some() && !self.backends[*i].address.is_empty() && self.backends[*i].address == up)
    }

    /// Whether backend `i` could be promoted now; `None` = eligible, else why not.
    pub fn not_eligible(&self, i: BackendId) -> Option<String> {
        let b = &self.backends[i];
        if let Some(e) = b.problem() {
            return Some(format!("checks fail ({}): {e}", e.kind().as_str()));
        }
        if !b.healthy {
            return Some(format!("unhealthy ({})", b.last_error.as_ref().map(|e| e.to_string()).unwrap_or_else(|| "not checked yet".into())));
        }
        let Some(obs) = &b.obs else { return Some("not checked yet".into()) };
        if !obs.in_recovery {
            return Some("not a standby (reports not-in-recovery)".into());
        }
        if Some(obs.system_identifier) != self.system_identifier {
            return Some("belongs to another cluster (system identifier differs)".into());
        }
        if let Some(f) = &b.fence {
            return Some(format!("fenced: {}", f.reason));
        }
        match self.reference() {
            Reference::Routed(w) if !self.following(i, w) => return Some(self.not_following(i, w)),
            Reference::Lost(tl) if b.timeline() != tl => {
                return Some(format!("on timeline {}, while the lost primary was on timeline {tl}: it was not following it", b.timeline()));
            }
            _ => {}
        }
        match self.lag_bytes(i) {
            Some(lag) if lag > self.settings.max_lag_bytes => Some(format!("lag {lag} bytes exceeds max_lag_bytes {}", self.settings.max_lag_bytes)),
            None if obs.lsn().is_none() => Some("reports no WAL position".into()),
            _ => None,
        }
    }

    /// Why standby `s` does not follow the routed primary `w`, with what the proxy did
    /// about it.
    fn not_following(&self, s: BackendId, w: BackendId) -> String {
        let (b, p) = (&self.backends[s], &self.backends[w]);
        let mut why = if let Some(f) = self.fenced_upstream(s) {
            format!("streams from {}, which is fenced", self.backends[f].name)
        } else if b.timeline() != p.timeline() {
            format!("on timeline {} while the primary {} is on timeline {}: not following it", b.timeline(), p.name, p.timeline())
        } else {
            match b.obs.as_ref().and_then(|o| o.receiver.as_ref()) {
                Some(r) => format!("its WAL receiver is {:?}, not streaming from {}", r.status, p.name),
                None => format!("no WAL receiver runs: not streaming from {}", p.name),
            }
        };
        if b.timeline() < p.timeline() {
            if let (Some(lsn), Some(fork)) = (b.lsn(), p.fork_lsn) {
                if lsn > fork {
                    why.push_str(&format!(
                        "; its WAL reaches {} on the old timeline, past {}, {}'s first position on its new timeline: it has diverged and must be rebuilt (pg_rewind or pg_basebackup)",
                        format_lsn(lsn),
                        format_lsn(fork),
                        p.name
                    ));
                }
            }
        }
        match b.repoint.as_ref().filter(|r| r.primary == w).map(|r| &r.outcome) {
            Some(None) => why.push_str(&format!("; re-pointing it at {}", p.name)),
            Some(Some(Ok(()))) => why.push_str(&format!("; re-pointed at {}, waiting for it to stream", p.name)),
            Some(Some(Err(e))) => why.push_str(&format!("; re-pointing it at {} failed: {e}", p.name)),
            None => {}
        }
        why
    }

    pub fn eligible(&self, i: BackendId) -> bool {
        self.not_eligible(i).is_none()
    }

    pub(super) fn eligibility_report(&self) -> String {
        let parts: Vec<String> = self
            .backends
            .ids()
            .filter(|i| Some(*i) != self.route && self.in_flight.as_ref().and_then(|f| f.from) != Some(*i))
            .map(|i| format!("{}: {}", self.backends[i].name, self.not_eligible(i).unwrap_or_else(|| "eligible".into())))
            .collect();
        if parts.is_empty() {
            "no standbys are configured".into()
        } else {
            parts.join("; ")
        }
    }

    /// After a failover (or whenever a standby stops following), points standbys at the
    /// routed primary: at once when a standby is on another timeline, after three intervals
    /// without streaming otherwise; again every [`REPOINT_RETRY`] while it still does not
    /// follow.
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
            if !(b.fresh() && b.healthy && b.in_recovery() && self.same_cluster(s) && b.fence.is_none()) || self.following(s, w) {
                continue;
            }
            // Never towards a lower timeline: a standby ahead of the routed primary means
            // the route is the stale one.
            if b.timeline() > self.backends[w].timeline() {
                continue;
            }
            let other_timeline = b.timeline() != self.backends[w].timeline();
            let stalled = b.not_streaming_since.is_some_and(|t| now.mono.saturating_duration_since(t) >= stalled_after);
            let recent = b.repoint.as_ref().is_some_and(|r| r.primary == w && now.mono.saturating_duration_since(r.at) < REPOINT_RETRY);
            if !(other_timeline || stalled || self.fenced_upstream(s).is_some()) || recent {
                continue;
            }
            self.backends[s].repoint = Some(Repoint { primary: w, at: now.mono, outcome: None });
            acts.push(Action::Repoint { standby: s, primary: w });
        }
    }
}
