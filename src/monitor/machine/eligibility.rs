//! Which standby could take over: lag, timelines, whom it follows, the configured policy,
//! and every reason one cannot.

use crate::cluster::BackendId;

use crate::monitor::observation::format_lsn;

use super::{Machine, Purpose};

/// Why a standby cannot be promoted, as a code for programs and a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    /// Which rule: what programs (and the tests) look at.
    pub kind: ReasonKind,
    /// The sentence people read, with the facts behind it.
    pub text: String,
}

impl Reason {
    fn new(kind: ReasonKind, text: String) -> Reason {
        Reason { kind, text }
    }
}

/// The kinds of [`Reason`] (`/failover/candidates` shows them in snake case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonKind {
    /// Its checks are turned away (misconfigured, overloaded): its state is unknown.
    ChecksFail,
    Unhealthy,
    Unchecked,
    NotStandby,
    OtherCluster,
    Fenced,
    /// No WAL receiver streaming from the primary (or from a fenced backend).
    NotStreaming,
    WrongTimeline,
    /// Further behind than `failover.max_lag_bytes`.
    Lagging,
    NoPosition,
    /// `nofailover = true`.
    NoFailover,
    /// In another zone than the primary, with `zone_policy = "same_only"`.
    Zone,
    /// Synchronous mode: not one of the standbys that may hold every acknowledged write.
    NotSynchronous,
    /// Synchronous mode: another synchronous standby has more WAL (only it is sure to hold
    /// every acknowledged write).
    BehindSynchronous,
}

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

    /// The routed primary `p` lists a standby as streaming under its backend name, caught up
    /// past the point where `p`'s timeline began: that standby is on `p`'s timeline, even if
    /// no check of its own saw it streaming there before `p` was lost (its WAL receiver's
    /// timeline is gone with the connection).
    pub(super) fn learn_timelines(&mut self, p: BackendId) {
        let b = &self.backends[p];
        let Some(obs) = b.obs.as_ref().filter(|o| self.route == Some(p) && !o.in_recovery) else { return };
        let (tl, fork) = (b.timeline(), b.fork_lsn.unwrap_or(0));
        let on_it: Vec<BackendId> = obs
            .senders
            .iter()
            .filter(|x| x.streaming() && x.flush_lsn.is_some_and(|f| f >= fork))
            .filter_map(|x| self.backends.find(&x.name))
            .filter(|s| *s != p && self.backends[*s].in_recovery() && self.same_cluster(*s))
            .collect();
        for s in on_it {
            let st = &mut self.backends[s].streamed_timeline;
            *st = (*st).max(Some(tl));
        }
    }

    /// Standby `s` follows `p` and, as far as its upstream address tells, streams from `p`
    /// itself rather than cascading from another configured backend (an address in another
    /// form than the configured one counts as `p`'s).
    pub(super) fn streams_from(&self, s: BackendId, p: BackendId) -> bool {
        let other = self.backends[s].upstream().is_some_and(|up| self.backends.ids().any(|i| i != p && i != s && self.backends[i].address == up));
        self.following(s, p) && !other
    }

    /// The fenced backend `s` streams from, if its upstream address names one.
    pub(super) fn fenced_upstream(&self, s: BackendId) -> Option<BackendId> {
        let up = self.backends[s].upstream()?;
        self.backends.ids().find(|i| *i != s && self.backends[*i].fence.is_some() && !self.backends[*i].address.is_empty() && self.backends[*i].address == up)
    }

    /// Whether backend `i` could be promoted automatically now; `None` = eligible, else the
    /// first reason why not.
    pub fn not_eligible(&self, i: BackendId) -> Option<String> {
        self.reasons(i, Purpose::Failover).into_iter().next().map(|r| r.text)
    }

    /// Every reason backend `i` cannot be promoted now for `purpose` (empty: it can).
    /// Health, role and cluster first; replication (only for a standby of this cluster);
    /// then the configured policy: `nofailover`, the zone (`same_only`), and with
    /// `failover.synchronous` (failovers only: a switchover catches up first) whether it
    /// was synchronous.
    pub fn reasons(&self, i: BackendId, purpose: Purpose) -> Vec<Reason> {
        let b = &self.backends[i];
        let mut out = Vec::new();
        if let Some(e) = b.problem() {
            out.push(Reason::new(ReasonKind::ChecksFail, format!("checks fail ({}): {e}", e.kind().as_str())));
        } else if !b.healthy {
            let e = b.last_error.as_ref().map(|e| e.to_string()).unwrap_or_else(|| "not checked yet".into());
            out.push(Reason::new(ReasonKind::Unhealthy, format!("unhealthy ({e})")));
        }
        match &b.obs {
            None => out.push(Reason::new(ReasonKind::Unchecked, "not checked yet".into())),
            Some(obs) if !obs.in_recovery => out.push(Reason::new(ReasonKind::NotStandby, "not a standby (reports not-in-recovery)".into())),
            Some(obs) if Some(obs.system_identifier) != self.system_identifier => {
                out.push(Reason::new(ReasonKind::OtherCluster, "belongs to another cluster (system identifier differs)".into()))
            }
            // Checks that fail leave an old observation: its replication facts are stale.
            Some(_) if !b.healthy => {}
            Some(obs) => {
                if let Some(f) = &b.fence {
                    out.push(Reason::new(ReasonKind::Fenced, format!("fenced: {}", f.reason)));
                }
                match self.reference() {
                    Reference::Routed(w) if !self.following(i, w) => {
                        let kind = if b.timeline() != self.backends[w].timeline() { ReasonKind::WrongTimeline } else { ReasonKind::NotStreaming };
                        out.push(Reason::new(kind, self.not_following(i, w)));
                    }
                    Reference::Lost(tl) if b.timeline() != tl => out.push(Reason::new(
                        ReasonKind::WrongTimeline,
                        format!("on timeline {}, while the lost primary was on timeline {tl}: it was not following it", b.timeline()),
                    )),
                    _ => {}
                }
                match self.lag_bytes(i) {
                    Some(lag) if lag > self.settings.max_lag_bytes => {
                        out.push(Reason::new(ReasonKind::Lagging, format!("lag {lag} bytes exceeds max_lag_bytes {}", self.settings.max_lag_bytes)))
                    }
                    None if obs.lsn().is_none() => out.push(Reason::new(ReasonKind::NoPosition, "reports no WAL position".into())),
                    _ => {}
                }
            }
        }
        if b.fence.is_some() && !out.iter().any(|r| r.kind == ReasonKind::Fenced) {
            out.push(Reason::new(ReasonKind::Fenced, format!("fenced: {}", b.fence.as_ref().map(|f| f.reason.as_str()).unwrap_or_default())));
        }
        let from = self.reference_primary();
        if self.settings.policy(i).nofailover {
            out.push(Reason::new(ReasonKind::NoFailover, "nofailover = true: pgfailover never promotes it".into()));
        }
        if let Some(why) = from.filter(|p| *p != i).and_then(|p| self.zone_refusal(i, p)) {
            out.push(Reason::new(ReasonKind::Zone, why));
        }
        if purpose == Purpose::Failover {
            if let Some(why) = self.not_synchronous(i) {
                out.push(Reason::new(ReasonKind::NotSynchronous, why));
            }
        }
        out
    }

    /// Why an operator's trigger naming `i` is refused, if it is: as [`Machine::reasons`],
    /// but the zone policy is the operator's to override by naming, and `force` accepts a
    /// standby that was not synchronous (the loss that may come with it).
    pub(super) fn named_refusal(&self, i: BackendId, switchover: bool, force: bool) -> Option<String> {
        let purpose = if switchover { Purpose::Switchover } else { Purpose::Failover };
        self.reasons(i, purpose).into_iter().find(|r| r.kind != ReasonKind::Zone && !(force && r.kind == ReasonKind::NotSynchronous)).map(|r| {
            if r.kind == ReasonKind::NotSynchronous {
                format!("{}; add \"force\": true to promote it anyway (writes the primary acknowledged may be lost)", r.text)
            } else {
                r.text
            }
        })
    }

    /// The primary the standbys are judged against: the routed one, or the one a running
    /// failover lost.
    pub(super) fn reference_primary(&self) -> Option<BackendId> {
        self.route.or_else(|| self.in_flight.as_ref().and_then(|f| f.from))
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
}
