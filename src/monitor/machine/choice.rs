//! Which standby a failover or switchover promotes, and the "what if the primary died now"
//! answer built from the same rule ([`Candidates`]).
//!
//! Among the standbys with no [`Reason`](super::Reason) against them, the order is: the
//! lost primary's zone first (`zone_policy = "prefer_same"`: another zone only as a last
//! resort), then the most WAL, then the highest `priority`, then config order. So
//! `priority` decides between standbys that received the same WAL (the usual case when the
//! primary dies idle), and never promotes one that would lose more.
//!
//! Synchronous mode adds, for a failover: the standbys that may hold an acknowledged write
//! ([`Machine::synchronous_set`]) must be seen in enough number (`members − n + 1`, with
//! positions read since the outage began) that one of them holds every such write, and
//! only the ones with the most WAL among them may be promoted. Otherwise nothing is
//! promoted, and the reason says what is awaited.

use std::cmp::Reverse;
use std::time::Instant;

use crate::cluster::BackendId;
use crate::config::{SyncMode, ZonePolicy};

use super::{Machine, Reason, ReasonKind};

/// What a choice is for: a failover (the primary's writes may be lost with it) or a
/// switchover (the candidate catches up first, so synchronous state does not matter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Failover,
    Switchover,
}

/// A choice of standby.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Choice {
    /// The standby to promote, if one may be.
    pub to: Option<BackendId>,
    /// Every standby that may be promoted now, best first (`to` is the first).
    pub ranked: Vec<BackendId>,
    /// Synchronous mode: standbys without a reason against them, passed over because
    /// another synchronous standby has more WAL.
    pub behind: Vec<BackendId>,
    /// Why nothing may be promoted although some standby has no reason against it.
    pub wait: Option<String>,
    /// Synchronous mode: why promoting `to` loses no acknowledged write (for the history).
    pub note: Option<String>,
}

/// "What if the primary died now?": every standby with its reasons and rank, and the
/// choice.
#[derive(Clone, Debug, Default)]
pub struct Candidates {
    /// The primary it is about: the routed one, or the one a running failover lost.
    pub from: Option<BackendId>,
    /// The choice a failover from `from` would make now.
    pub choice: Choice,
    /// Every backend but `from`, in config order, with every reason it would not be
    /// promoted (empty: it is ranked).
    pub standbys: Vec<(BackendId, Vec<Reason>)>,
    /// Synchronous mode: the standbys that may hold an acknowledged write of `from`.
    pub synchronous: Option<super::SyncSet>,
}

impl Machine {
    /// Chooses the standby to promote in place of `from` (`excluding` some), for `purpose`.
    /// `since`: positions must have been read after it (a failover's outage).
    pub(super) fn choose(&self, from: Option<BackendId>, purpose: Purpose, excluding: &[BackendId], since: Option<Instant>) -> Choice {
        let mut pool: Vec<BackendId> = self
            .backends
            .ids()
            .filter(|i| Some(*i) != from && Some(*i) != self.route && !excluding.contains(i))
            .filter(|i| self.reasons(*i, purpose).is_empty())
            .collect();
        let mut choice = Choice::default();
        let synchronous = self.settings.synchronous != SyncMode::Off && purpose == Purpose::Failover;
        let mut known = 0;
        if let Some(p) = from.filter(|_| synchronous && !pool.is_empty()) {
            let set = self.synchronous_set(p);
            let seen: Vec<BackendId> = set.members.iter().copied().filter(|i| self.position_known(*i, since)).collect();
            let pname = &self.backends[p].name;
            if seen.len() < set.need {
                let unknown: Vec<&str> = set.members.iter().filter(|i| !seen.contains(i)).map(|i| self.backends[*i].name.as_str()).collect();
                choice.wait = Some(format!(
                    "synchronous mode: waiting for the position of {} (synchronous on {pname}): {} of the {} synchronous standbys must answer, so that the one promoted holds every write {pname} acknowledged",
                    unknown.join(", "),
                    set.need,
                    set.members.len()
                ));
                return choice;
            }
            let top = seen.iter().filter_map(|i| self.backends[*i].lsn()).max();
            let (ahead, behind): (Vec<BackendId>, Vec<BackendId>) = pool.into_iter().partition(|i| self.backends[*i].lsn() == top);
            choice.behind = behind;
            pool = ahead;
            if pool.is_empty() {
                let leaders: Vec<String> = seen
                    .iter()
                    .filter(|i| self.backends[**i].lsn() == top)
                    .map(|i| format!("{} ({})", self.backends[*i].name, self.reasons(*i, purpose).first().map(|r| r.text.as_str()).unwrap_or("excluded")))
                    .collect();
                choice.wait = Some(format!(
                    "synchronous mode: the synchronous standby with the most WAL cannot be promoted: {}; the others may lack writes {pname} acknowledged",
                    leaders.join(", ")
                ));
                return choice;
            }
            known = seen.len();
        }
        pool.sort_by_key(|i| Reverse((self.zone_rank(*i, from), self.backends[*i].lsn(), self.settings.policy(*i).priority, Reverse(*i))));
        choice.to = pool.first().copied();
        if let (Some(c), Some(p)) = (choice.to.filter(|_| synchronous), from) {
            let set = self.synchronous_set(p);
            choice.note = Some(format!(
                "{} was synchronous on {} ({}) and has the most WAL of the {known} of {} synchronous standbys that answered: no write {} acknowledged is lost",
                self.backends[c].name,
                self.backends[p].name,
                set.seen,
                set.members.len(),
                self.backends[p].name
            ));
        }
        choice.ranked = pool;
        choice
    }

    /// 1 for a standby in `from`'s zone (or when zones do not matter), 0 for another zone
    /// under `prefer_same`: ranked after every standby of the same zone.
    fn zone_rank(&self, i: BackendId, from: Option<BackendId>) -> u8 {
        let other = self.settings.zone_policy == ZonePolicy::PreferSame && from.is_some_and(|p| !self.same_zone(i, p));
        u8::from(!other)
    }

    /// Its latest check succeeded, and began after `since` when given.
    fn position_known(&self, i: BackendId, since: Option<Instant>) -> bool {
        let b = &self.backends[i];
        b.fresh() && since.is_none_or(|t| b.success_started.is_some_and(|s| s >= t))
    }

    /// "What if the primary died now?" — or, during a failover, what it is choosing.
    pub fn candidates(&self) -> Candidates {
        let from = self.reference_primary();
        let (excluding, since) = match &self.in_flight {
            Some(f) => (f.failed.clone(), f.from.and_then(|p| self.backends[p].failing_since)),
            None => (Vec::new(), None),
        };
        let choice = self.choose(from, Purpose::Failover, &excluding, since);
        let standbys = self
            .backends
            .ids()
            .filter(|i| Some(*i) != from)
            .map(|i| {
                let mut reasons = self.reasons(i, Purpose::Failover);
                if choice.behind.contains(&i) {
                    let ahead = choice.to.map(|c| self.backends[c].name.as_str()).unwrap_or("another synchronous standby");
                    reasons.push(Reason {
                        kind: ReasonKind::BehindSynchronous,
                        text: format!("{ahead} has more WAL; promoting this one could lose acknowledged writes"),
                    });
                }
                (i, reasons)
            })
            .collect();
        let synchronous = from.filter(|_| self.settings.synchronous != SyncMode::Off).map(|p| self.synchronous_set(p));
        Candidates { from, choice, standbys, synchronous }
    }
}
