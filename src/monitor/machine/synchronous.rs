//! Synchronous mode (`failover.synchronous = on | strict`): the machine owns every server's
//! `synchronous_standby_names`.
//!
//! - The routed primary lists, as `ANY n ("name", …)`, the standbys that *qualify*: healthy,
//!   streaming from it under their backend name, of this cluster, unfenced, not
//!   `nofailover`, and (with `zone_policy = "same_only"`) in its zone. `n` is
//!   `synchronous_count`, or fewer when fewer qualify. The list follows standbys that leave
//!   and return.
//! - None qualifies: with `on` the list is emptied so writes go on, unprotected; with
//!   `strict` it names every standby that could qualify (configured, promotable, in the
//!   zone), so writes wait until one streams. Both are logged, recorded in history and
//!   exported ([`SyncHealth`]).
//! - Standbys' lists are emptied (a standby ignores its list; one promoted later starts
//!   from what the machine gives it). A standby about to be promoted gets the list it will
//!   need as a primary before `pg_promote` ([`Machine::start_list`]), so `strict` never
//!   runs a write unprotected after a failover.
//! - What may hold an acknowledged write ([`Machine::synchronous_set`]): the standbys the
//!   primary's list named when it was last seen, those of a list asked for and not yet
//!   seen in force, and those dropped from its list until the remaining ones have flushed
//!   past the point where the shorter list took effect (*retired*); but not a listed standby
//!   never seen connected to that primary and silent since before its last check. A
//!   failover promotes one of them only (`choice`).
//! - `off`: nothing is managed; a list this process changed is given back (`RESET`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::cluster::BackendId;
use crate::config::{SyncMode, ZonePolicy};
use crate::monitor::event::EventKind;
use crate::monitor::standby_names::{self, StandbyNames};

use super::{Action, Machine, Now, SyncAsk, Trigger};

/// A change of a list that failed, or that the checks do not show yet, is asked again
/// after this.
const ASK_RETRY: Duration = Duration::from_secs(2);

/// What synchronous replication protects on the routed primary, as last decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncHealth {
    /// `failover.synchronous = "off"`.
    Off,
    /// No primary is routed.
    Unknown,
    /// A standby qualifies: writes wait for it.
    Protected,
    /// `on`, and none qualifies: the list is empty, writes are acknowledged without a
    /// standby, and an automatic failover cannot promote (none was synchronous).
    Unprotected,
    /// `strict`, and none qualifies: writes wait until one streams.
    Blocked,
}

/// The machine's book on the routed primary's list.
#[derive(Clone, Debug)]
pub struct SyncBook {
    /// The primary the rest is about (another routed primary starts a new book).
    primary: Option<BackendId>,
    /// Standbys dropped from its list that may hold writes it acknowledged which the
    /// remaining ones lack yet; each with the primary's position once the shorter list was
    /// seen in force (`None` until then). The remaining ones must flush past it.
    retired: BTreeMap<BackendId, Option<u64>>,
    /// Standbys seen connected to it (in its `pg_stat_replication`, in any state) at one
    /// of its checks: one never seen, and down since before its last check, cannot have
    /// acknowledged a write of it.
    seen: BTreeSet<BackendId>,
    /// As last decided.
    health: SyncHealth,
    /// Why, when not protected (for the status and the history).
    reason: String,
}

impl Default for SyncBook {
    fn default() -> Self {
        SyncBook { primary: None, retired: BTreeMap::new(), seen: BTreeSet::new(), health: SyncHealth::Off, reason: String::new() }
    }
}

/// The standbys that may hold a write primary `p` acknowledged, and how many of them must
/// be seen to be sure one of those seen holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncSet {
    /// The standbys that may hold such a write.
    pub members: BTreeSet<BackendId>,
    /// At least this many members' positions must be known (`members − n + 1` for the
    /// smallest `n` of the lists involved).
    pub need: usize,
    /// The list as last seen on `p`, for people.
    pub seen: String,
}

impl Machine {
    /// What synchronous replication protects now, and why when it does not.
    pub fn sync_health(&self) -> (SyncHealth, &str) {
        (self.sync.health, &self.sync.reason)
    }

    /// Standby `s`'s zone allows promoting it in place of primary `p`: always, except with
    /// `same_only` for a standby of another zone. A primary without a zone makes every
    /// standby "the same zone".
    pub fn same_zone(&self, s: BackendId, p: BackendId) -> bool {
        match &self.settings.policy(p).zone {
            None => true,
            Some(z) => self.settings.policy(s).zone.as_ref() == Some(z),
        }
    }

    /// Why the zone policy forbids promoting `s` in place of `p`, if it does.
    pub(super) fn zone_refusal(&self, s: BackendId, p: BackendId) -> Option<String> {
        if self.settings.zone_policy != ZonePolicy::SameOnly || self.same_zone(s, p) {
            return None;
        }
        let zone = |i: BackendId| self.settings.policy(i).zone.clone().unwrap_or_else(|| "(none)".into());
        Some(format!("in zone {}, while {} is in zone {} (zone_policy = \"same_only\")", zone(s), self.backends[p].name, zone(p)))
    }

    /// Why standby `s` cannot be synchronous for primary `p`; `None`: it qualifies.
    pub(super) fn not_qualified(&self, s: BackendId, p: BackendId) -> Option<String> {
        let b = &self.backends[s];
        let pname = &self.backends[p].name;
        if self.settings.policy(s).nofailover {
            return Some("nofailover".into());
        }
        if let Some(why) = self.zone_refusal(s, p) {
            return Some(why);
        }
        if !(b.fresh() && b.healthy) {
            return Some("down".into());
        }
        if !b.in_recovery() || !self.same_cluster(s) {
            return Some("not a standby of this cluster".into());
        }
        if b.fence.is_some() {
            return Some("fenced".into());
        }
        let senders = self.backends[p].obs.as_ref().map(|o| o.senders.as_slice()).unwrap_or_default();
        match senders.iter().find(|x| x.name == b.name) {
            Some(x) if x.streaming() => None,
            Some(x) => Some(format!("{} from {pname} ({}), not streaming yet", x.state, b.name)),
            None if self.streams_from(s, p) => {
                Some(format!("streams from {pname}, but not under its name {:?} (re-pointing it sets its application_name)", b.name))
            }
            None => Some(format!("does not stream from {pname}")),
        }
    }

    /// Standby `s` would qualify for primary `p` but streams from it under another name,
    /// and pgfailover is naming it (re-pointing it): not asked yet, running, or done so
    /// recently that the name may not show yet. A re-point that failed, or after which the
    /// name still does not show, is no reason to wait.
    fn being_named(&self, s: BackendId, p: BackendId, now: Now) -> bool {
        let b = &self.backends[s];
        let naming = match b.repoint.as_ref().filter(|r| r.primary == p) {
            None => true,
            Some(r) => match &r.outcome {
                None => true,
                Some(Ok(())) => now.mono.saturating_duration_since(r.at) < super::repoints::REPOINT_RETRY,
                Some(Err(_)) => false,
            },
        };
        let policy = self.settings.policy(s);
        let named = self.backends[p].obs.as_ref().is_some_and(|o| o.senders.iter().any(|x| x.name == b.name));
        naming
            && self.settings.repoint_standbys
            && !policy.nofailover
            && self.zone_refusal(s, p).is_none()
            && b.fresh()
            && b.fence.is_none()
            && self.streams_from(s, p)
            && !named
    }

    /// The standbys that qualify for primary `p`, in config order.
    pub fn qualified(&self, p: BackendId) -> Vec<BackendId> {
        self.backends.ids().filter(|s| *s != p && self.not_qualified(*s, p).is_none()).collect()
    }

    /// `strict` without a qualifying standby: every standby that could qualify.
    fn fallback(&self, p: BackendId) -> Vec<BackendId> {
        let promotable = |s: &BackendId| *s != p && !self.settings.policy(*s).nofailover;
        let in_zone: Vec<BackendId> = self.backends.ids().filter(promotable).filter(|s| self.zone_refusal(*s, p).is_none()).collect();
        if in_zone.is_empty() {
            self.backends.ids().filter(promotable).collect()
        } else {
            in_zone
        }
    }

    /// The `synchronous_standby_names` primary `p` should have now.
    pub fn wanted_list(&self, p: BackendId) -> String {
        let qualified = self.qualified(p);
        let listed = match (qualified.is_empty(), self.settings.synchronous) {
            (false, _) => qualified,
            (true, SyncMode::Strict) => self.fallback(p),
            (true, _) => return String::new(),
        };
        let names: Vec<&str> = listed.iter().map(|s| self.backends[*s].name.as_str()).collect();
        standby_names::render((self.settings.synchronous_count as usize).min(names.len()), &names)
    }

    /// The list standby `c` needs as a primary, when it differs from its own (set before it
    /// is promoted); `None` when nothing is to be set.
    pub(super) fn start_list(&self, c: BackendId) -> Option<String> {
        if self.settings.synchronous == SyncMode::Off || !self.may_promote() {
            return None;
        }
        let want = self.wanted_list(c);
        (self.backends[c].obs.as_ref().and_then(|o| o.sync_names.as_deref()) != Some(want.as_str())).then_some(want)
    }

    /// The standbys that may hold a write `p` acknowledged (see the module's notes).
    pub fn synchronous_set(&self, p: BackendId) -> SyncSet {
        let others: Vec<BackendId> = self.backends.ids().filter(|s| *s != p).collect();
        let members_of = |l: &StandbyNames| -> BTreeSet<BackendId> { others.iter().copied().filter(|s| l.matches(&self.backends[*s].name)).collect() };
        let seen = self.backends[p].obs.as_ref().and_then(|o| o.sync_names.clone());
        let mut members = BTreeSet::new();
        let mut n = u32::MAX;
        match seen.as_deref().map(standby_names::parse) {
            Some(Ok(Some(l))) => {
                members.extend(members_of(&l));
                n = n.min(l.num.max(1));
            }
            Some(Ok(None)) => {}
            // Unreadable, or never read: any standby may have acknowledged.
            _ => {
                members.extend(others.iter().copied());
                n = 1;
            }
        }
        if let Some(value) = self.unseen_ask(p) {
            if let Ok(Some(l)) = standby_names::parse(&value) {
                members.extend(members_of(&l));
                n = n.min(l.num.max(1));
            }
        }
        if self.sync.primary == Some(p) && !self.sync.retired.is_empty() {
            members.extend(self.sync.retired.keys().copied());
            n = 1;
        }
        // Never connected to it, and silent since before its last check began: nothing it
        // acknowledged can be on them (the strict list names standbys that may come back).
        let checked = self.backends[p].success_started;
        members.retain(|s| {
            let b = &self.backends[*s];
            let silent = !b.fresh() && b.failing_since.zip(checked).is_some_and(|(down, c)| down <= c);
            !(silent && !(self.sync.primary == Some(p) && self.sync.seen.contains(s)))
        });
        let need = if members.is_empty() { 0 } else { members.len() - (n.min(members.len() as u32) as usize - 1) };
        SyncSet { members, need, seen: seen.map(|s| if s.is_empty() { "empty".into() } else { s }).unwrap_or_else(|| "unknown".into()) }
    }

    /// The value of a change asked of `p` that its checks do not show in force yet.
    fn unseen_ask(&self, p: BackendId) -> Option<String> {
        let b = &self.backends[p];
        let ask = b.sync_asked.as_ref()?;
        let value = ask.value.clone()?;
        let seen = match ask.done {
            Some((done, _)) => b.success_started.is_some_and(|s| s > done) && b.obs.as_ref().and_then(|o| o.sync_names.as_ref()) == Some(&value),
            None => false,
        };
        (!seen).then_some(value)
    }

    /// Synchronous mode: why standby `s` is not among those that may hold every write the
    /// reference primary acknowledged; `None` when it is (or the mode is off).
    pub(super) fn not_synchronous(&self, s: BackendId) -> Option<String> {
        if self.settings.synchronous == SyncMode::Off {
            return None;
        }
        let Some(p) = self.reference_primary().filter(|p| *p != s) else {
            return Some("not synchronous: no primary was seen, so no standby is known to hold its writes".into());
        };
        let set = self.synchronous_set(p);
        (!set.members.contains(&s)).then(|| {
            let name = &self.backends[p].name;
            format!("not synchronous: {name}'s synchronous_standby_names ({}) did not name it when {name} was last seen", set.seen)
        })
    }

    /// Carries out synchronous mode after every decision (see the module's notes).
    pub(super) fn plan_synchronous(&mut self, now: Now, acts: &mut Vec<Action>) {
        if self.settings.synchronous == SyncMode::Off {
            self.sync = SyncBook::default();
            self.give_back(now, acts);
            return;
        }
        let managing = self.may_promote() && self.in_flight.is_none();
        let Some(p) = self.route.filter(|_| self.in_flight.is_none()) else {
            self.sync.health = SyncHealth::Unknown;
            return;
        };
        if self.sync.primary != Some(p) {
            self.sync.primary = Some(p);
            self.sync.retired.clear();
            self.sync.seen.clear();
        }
        if let Some(obs) = self.backends[p].obs.as_ref().filter(|_| self.backends[p].fresh()) {
            let connected: Vec<BackendId> = obs.senders.iter().filter_map(|x| self.backends.find(&x.name)).collect();
            self.sync.seen.extend(connected);
        }
        self.settle_retired(p);
        // A standby streaming under another name is being named (re-pointed): until then the
        // list stays as it is rather than emptied or set to names nobody answers to yet.
        let naming = self.qualified(p).is_empty() && self.backends.ids().any(|s| s != p && self.being_named(s, p, now));
        if naming {
            // What protected the writes before still does (or still does not).
            if self.sync.health == SyncHealth::Off {
                self.sync.health = SyncHealth::Unknown;
            }
            return;
        }
        if managing && self.backends[p].fresh() {
            let want = self.wanted_list(p);
            if self.backends[p].obs.as_ref().and_then(|o| o.sync_names.as_deref()) != Some(want.as_str()) {
                self.ask(p, Some(want), now, acts);
            }
            for s in self.backends.ids().filter(|s| *s != p) {
                let b = &self.backends[s];
                let listed = b.obs.as_ref().and_then(|o| o.sync_names.as_deref()).is_some_and(|v| !v.is_empty());
                if b.fresh() && b.in_recovery() && self.same_cluster(s) && listed {
                    self.ask(s, Some(String::new()), now, acts);
                }
            }
        }
        self.judge(p, managing, now, acts);
    }

    /// Asks for `value` on backend `i`, unless the same was asked for recently.
    fn ask(&mut self, i: BackendId, value: Option<String>, now: Now, acts: &mut Vec<Action>) {
        let b = &self.backends[i];
        if b.sync_asked.as_ref().is_some_and(|a| a.value == value && (a.done.is_none() || now.mono.saturating_duration_since(a.at) < ASK_RETRY)) {
            return;
        }
        if Some(i) == self.sync.primary {
            // Standbys this list drops may hold writes the others lack yet.
            let set = self.synchronous_set(i);
            let keep = value.as_deref().and_then(|v| standby_names::parse(v).ok().flatten());
            let kept = |r: &BackendId| keep.as_ref().is_some_and(|l| l.matches(&self.backends[*r].name));
            for r in set.members.iter().filter(|r| !kept(r)) {
                self.sync.retired.entry(*r).or_insert(None);
            }
            // Listed again: the new list counts it (until it is in force, as asked for).
            self.sync.retired.retain(|r, _| !kept(r));
        }
        tracing::info!(backend = %b.name, value = value.as_deref().unwrap_or("(reset)"), "setting synchronous_standby_names");
        self.backends[i].sync_asked = Some(SyncAsk { value: value.clone(), at: now.mono, done: None });
        acts.push(Action::SetSynchronous { backend: i, value });
    }

    /// Retired standbys stop counting once `n` of the list in force have flushed past the
    /// primary's position when that list was first seen in force.
    fn settle_retired(&mut self, p: BackendId) {
        let b = &self.backends[p];
        let Some(obs) = b.obs.as_ref().filter(|_| b.fresh()) else { return };
        let in_force = b.sync_asked.as_ref().is_some_and(|a| {
            a.done.as_ref().is_some_and(|(done, _)| b.success_started.is_some_and(|s| s > *done)) && a.value.as_ref() == obs.sync_names.as_ref()
        });
        let list = obs.sync_names.as_deref().and_then(|v| standby_names::parse(v).ok().flatten());
        let names: Vec<String> = self.backends.iter().map(|b| b.name.clone()).collect();
        let current = obs.current_lsn;
        self.sync.retired.retain(|r, at| {
            if at.is_none() && in_force {
                *at = current;
            }
            let (Some(l), Some(lsn)) = (list.as_ref(), *at) else { return true };
            let past = obs.senders.iter().filter(|x| x.name != names[r.index()] && l.matches(&x.name) && x.flush_lsn.is_some_and(|f| f >= lsn)).count();
            past < l.num.max(1) as usize
        });
    }

    /// Decides what the routed primary's writes are protected by; a change is logged and,
    /// by the proxy that manages the lists, recorded and counted.
    fn judge(&mut self, p: BackendId, managing: bool, now: Now, acts: &mut Vec<Action>) {
        let qualified = self.qualified(p);
        let name = self.backends[p].name.clone();
        let why = || {
            let each: Vec<String> = self
                .backends
                .ids()
                .filter(|s| *s != p)
                .map(|s| format!("{}: {}", self.backends[s].name, self.not_qualified(s, p).unwrap_or_default()))
                .collect();
            if each.is_empty() {
                "no standby is configured".to_string()
            } else {
                each.join("; ")
            }
        };
        let (health, reason) = match (qualified.is_empty(), self.settings.synchronous) {
            (false, _) => (SyncHealth::Protected, String::new()),
            (true, SyncMode::Strict) => (
                SyncHealth::Blocked,
                format!("no standby can be synchronous for {name} ({}): its writes wait until one streams from it (failover.synchronous = \"strict\")", why()),
            ),
            (true, _) => (
                SyncHealth::Unprotected,
                format!(
                    "no standby can be synchronous for {name} ({}): its synchronous_standby_names is emptied so writes go on, unprotected; no automatic failover until a standby is synchronous again",
                    why()
                ),
            ),
        };
        let before = std::mem::replace(&mut self.sync.health, health);
        self.sync.reason = reason.clone();
        if before == health || !managing {
            return;
        }
        let (kind, text) = match health {
            SyncHealth::Protected if matches!(before, SyncHealth::Unprotected | SyncHealth::Blocked) => {
                let names: Vec<&str> = qualified.iter().map(|s| self.backends[*s].name.as_str()).collect();
                let verb = if names.len() == 1 { "is" } else { "are" };
                (EventKind::SynchronousProtected, format!("{} {verb} synchronous for {name} again", names.join(", ")))
            }
            SyncHealth::Unprotected => {
                self.counters.sync_emptied += 1;
                (EventKind::SynchronousUnprotected, reason)
            }
            SyncHealth::Blocked => (EventKind::SynchronousBlocked, reason),
            _ => return,
        };
        tracing::warn!(primary = %name, %text, "synchronous replication");
        acts.push(self.event(now, kind, Some(p), None, text, Trigger::Automatic));
    }

    /// `off`: lists this process changed go back to the servers' own configuration.
    fn give_back(&mut self, now: Now, acts: &mut Vec<Action>) {
        if !self.may_promote() {
            return;
        }
        for i in self.backends.ids() {
            let b = &self.backends[i];
            match &b.sync_asked {
                Some(SyncAsk { value: None, done: Some((_, Ok(()))), .. }) => self.backends[i].sync_asked = None,
                Some(_) if b.fresh() => self.ask(i, None, now, acts),
                _ => {}
            }
        }
    }

    /// The outcome of an [`Action::SetSynchronous`].
    pub fn synchronous_applied(&mut self, i: BackendId, value: Option<String>, result: Result<(), String>, now: Now) -> Vec<Action> {
        let mut acts = Vec::new();
        if let Err(e) = &result {
            tracing::warn!(backend = %self.backends[i].name, error = %e, "could not set synchronous_standby_names; asking again shortly");
        }
        if let Some(a) = self.backends[i].sync_asked.as_mut().filter(|a| a.value == value) {
            a.done = Some((now.mono, result));
        }
        // See the list in force soon rather than at the next interval.
        acts.push(Action::CheckNow(i));
        self.evaluate(now, &mut acts);
        acts
    }
}
