//! `/failover/candidates`: "what if the primary died now?" — every standby's eligibility
//! with every reason against it, its rank, positions, lag, synchronous state, zone and
//! priority; which one would be promoted, and the most that could be lost. Built from the
//! machine's own rule ([`Machine::candidates`]) after every input, like the status.

use serde::Serialize;

use crate::cluster::BackendId;
use crate::config::{PromoteMode, SyncMode, ZonePolicy};

use super::machine::{Machine, ReasonKind};
use super::observation::format_lsn;

/// The whole answer.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidatesView {
    /// Coordinated: the proxy whose view this is (the leader's, unless it could not be
    /// asked); set by the admin port.
    pub answered_by: Option<String>,
    /// Why this is not the leader's view, when it is not.
    pub note: Option<String>,
    /// The primary the question is about: the routed one, or the one a running failover
    /// lost.
    pub primary: Option<String>,
    /// Its `zone`: what `zone_policy` compares with.
    pub primary_zone: Option<String>,
    /// Its WAL position when last seen.
    pub primary_lsn: Option<String>,
    /// A failover is running: this is what it is choosing.
    pub failover_in_progress: bool,
    /// `failover.promote`: with `never`, nothing would be promoted by pgfailover.
    pub promote: Option<PromoteMode>,
    /// `failover.synchronous`: whether only a synchronous standby may be promoted.
    pub synchronous: Option<SyncMode>,
    /// `failover.zone_policy`: how the zones order (or exclude) the standbys.
    pub zone_policy: Option<ZonePolicy>,
    /// Synchronous mode: the primary's `synchronous_standby_names` as last seen.
    pub synchronous_list: Option<String>,
    /// Synchronous mode: the standbys that may hold a write it acknowledged.
    pub synchronous_standbys: Option<Vec<String>>,
    /// The standby that would be promoted.
    pub would_promote: Option<String>,
    /// Why none would, when none would.
    pub why_none: Option<String>,
    /// What promoting it would lose.
    pub max_loss: Option<MaxLoss>,
    /// Every other backend, in config order.
    pub candidates: Vec<CandidateView>,
}

/// The most a failover now could lose.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MaxLoss {
    /// WAL the candidate lacks of the primary's last seen position.
    pub wal_bytes: Option<u64>,
    /// Synchronous mode: the candidate holds every write the primary acknowledged.
    pub acknowledged_writes_safe: bool,
    /// The same in words, for the on-call engineer.
    pub explanation: String,
}

/// One standby's standing.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidateView {
    /// Its backend name.
    pub name: String,
    /// It would be promoted if ranked first.
    pub eligible: bool,
    /// Its place in the order of promotion (1 = would be promoted); absent when not
    /// eligible.
    pub rank: Option<usize>,
    /// Every reason it would not be promoted.
    pub reasons: Vec<ReasonView>,
    /// What it said at its last check: `standby`, `primary`, `unknown`.
    pub role: &'static str,
    /// Its checks succeed (below the failure threshold).
    pub healthy: bool,
    /// No traffic may go to it (and it is never promoted).
    pub fenced: bool,
    /// The timeline it is on: it must be the primary's.
    pub timeline: Option<u32>,
    /// WAL received (flushed) and replayed.
    pub receive_lsn: Option<String>,
    pub replay_lsn: Option<String>,
    /// Behind the primary's position, in bytes.
    pub lag_bytes: Option<u64>,
    /// Its replay delay (ms): the age of its last replayed commit while WAL waits.
    pub lag_ms: Option<f64>,
    /// How the primary counts it (`quorum`, `sync`, `potential`, `async`).
    pub sync_state: Option<String>,
    /// Synchronous mode: it may hold every write the primary acknowledged.
    pub synchronous: bool,
    /// Its `zone`.
    pub zone: Option<String>,
    /// In the primary's zone (or zones play no part).
    pub same_zone: bool,
    /// Its `priority`: decides between standbys with the same WAL.
    pub priority: u32,
    /// Its `nofailover`: never promoted.
    pub nofailover: bool,
}

/// One reason, as a code and a sentence.
#[derive(Clone, Debug, Serialize)]
pub struct ReasonView {
    /// For programs (snake case).
    pub code: ReasonKind,
    /// For people.
    pub message: String,
}

impl CandidatesView {
    pub fn build(m: &Machine) -> CandidatesView {
        let c = m.candidates();
        let s = m.settings();
        let name = |i: BackendId| m.backends()[i].name.clone();
        let from = c.from;
        let from_lsn = from.and_then(|p| m.backends()[p].lsn());
        let senders = from.and_then(|p| m.backends()[p].obs.as_ref()).map(|o| o.senders.clone()).unwrap_or_default();
        let candidates = c
            .standbys
            .iter()
            .map(|(i, reasons)| {
                let b = &m.backends()[*i];
                let obs = b.obs.as_ref();
                let rank = c.choice.ranked.iter().position(|r| r == i).map(|p| p + 1);
                CandidateView {
                    name: b.name.clone(),
                    eligible: rank.is_some(),
                    rank,
                    reasons: reasons.iter().map(|r| ReasonView { code: r.kind, message: r.text.clone() }).collect(),
                    role: b.role(),
                    healthy: b.healthy,
                    fenced: b.fence.is_some(),
                    timeline: obs.map(|_| b.timeline()),
                    receive_lsn: obs.and_then(|o| o.receive_lsn).map(format_lsn),
                    replay_lsn: obs.and_then(|o| o.replay_lsn).map(format_lsn),
                    lag_bytes: m.lag_bytes(*i),
                    lag_ms: obs.and_then(|o| o.replay_delay).map(crate::duration::as_millis_f64),
                    sync_state: senders.iter().find(|x| x.name == b.name).map(|x| x.sync_state.clone()),
                    synchronous: c.synchronous.as_ref().is_some_and(|set| set.members.contains(i)),
                    zone: s.policy(*i).zone.clone(),
                    same_zone: from.is_none_or(|p| m.same_zone(*i, p)),
                    priority: s.policy(*i).priority,
                    nofailover: s.policy(*i).nofailover,
                }
            })
            .collect();
        // Without a known primary (start-up) and no failover running, there is nothing to
        // fail over from.
        let known = from.is_some() || m.in_flight().is_some();
        let would = c.choice.to.filter(|_| m.settings().promote == PromoteMode::Auto && known);
        let why_none = match (would, &c.choice.wait) {
            (Some(_), _) => None,
            _ if m.settings().promote == PromoteMode::Never => Some("failover.promote = \"never\": pgfailover promotes nothing; another manager would".into()),
            _ if !known => Some("no primary is known yet: nothing to fail over from".into()),
            (None, Some(w)) => Some(w.clone()),
            (None, None) => Some("no standby can be promoted (see each one's reasons)".into()),
        };
        let max_loss = would.map(|w| {
            let wal = from_lsn.zip(m.backends()[w].lsn()).map(|(a, b)| a.saturating_sub(b));
            let (p, wn) = (from.map(name).unwrap_or_default(), name(w));
            let bytes = wal.map(|b| format!("{b} bytes")).unwrap_or_else(|| "an unknown amount".into());
            match &c.choice.note {
                Some(_) => MaxLoss {
                    wal_bytes: wal,
                    acknowledged_writes_safe: true,
                    explanation: format!("synchronous: {wn} holds every write {p} acknowledged; only transactions not yet acknowledged ({bytes} of WAL now) would be lost"),
                },
                None => MaxLoss {
                    wal_bytes: wal,
                    acknowledged_writes_safe: false,
                    explanation: format!(
                        "asynchronous: {wn} lacks {bytes} of {p}'s WAL as last seen, acknowledged writes included, plus whatever {p} wrote since; a failover promotes only within failover.max_lag_bytes ({})",
                        s.max_lag_bytes
                    ),
                },
            }
        });
        CandidatesView {
            answered_by: None,
            note: None,
            primary: from.map(name),
            primary_zone: from.and_then(|p| s.policy(p).zone.clone()),
            primary_lsn: from_lsn.map(format_lsn),
            failover_in_progress: m.in_flight().is_some(),
            promote: Some(s.promote),
            synchronous: Some(s.synchronous),
            zone_policy: Some(s.zone_policy),
            synchronous_list: c.synchronous.as_ref().map(|set| set.seen.clone()),
            synchronous_standbys: c.synchronous.as_ref().map(|set| set.members.iter().map(|i| name(*i)).collect()),
            would_promote: would.map(name),
            why_none,
            max_loss,
            candidates,
        }
    }
}
