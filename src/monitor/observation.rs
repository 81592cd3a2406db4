//! What one successful health check learns about a server.

use std::time::Duration;

/// A server's own answers about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// `pg_is_in_recovery()`: a standby (or a primary being demoted) says true.
    pub in_recovery: bool,
    /// `pg_control_system().system_identifier`: which cluster this server belongs to.
    pub system_identifier: u64,
    /// Primary: timeline of its current WAL file; standby: `received_tli`.
    pub timeline: Option<u32>,
    /// `pg_current_wal_lsn()` on a primary.
    pub current_lsn: Option<u64>,
    /// `pg_last_wal_receive_lsn()` on a standby.
    pub receive_lsn: Option<u64>,
    /// `pg_last_wal_replay_lsn()` on a standby.
    pub replay_lsn: Option<u64>,
    /// Connect (if needed) + query.
    pub response_time: Duration,
    /// A standby's WAL receiver, when one runs (`pg_stat_wal_receiver`).
    pub receiver: Option<Receiver>,
    /// A standby's replay delay: the age of its last replayed commit while it has received
    /// WAL it has not replayed yet, zero when it has replayed all it received (an idle
    /// cluster is not behind); `None` when unknown (nothing replayed yet).
    pub replay_delay: Option<Duration>,
    /// Its `synchronous_standby_names` (a primary waits for these; on a standby it waits
    /// for a promotion). `None` when the check did not read it.
    pub sync_names: Option<String>,
    /// The standbys streaming from it (`pg_stat_replication`), by `application_name`: who a
    /// primary can count as synchronous, and who already cascades from a standby.
    pub senders: Vec<Sender>,
}

/// One WAL sender of a server: a standby (or a base backup) receiving from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sender {
    /// The receiver's `application_name` (pgfailover sets the backend's name).
    pub name: String,
    /// `startup`, `catchup`, `streaming`, `backup`, `stopping`.
    pub state: String,
    /// `async`, `potential`, `sync` or `quorum`, as the server counts it for its
    /// `synchronous_standby_names`.
    pub sync_state: String,
    /// WAL the receiver has flushed to disk: what a synchronous commit waited for.
    pub flush_lsn: Option<u64>,
}

impl Sender {
    /// Streaming, past its catch-up.
    pub fn streaming(&self) -> bool {
        self.state == "streaming"
    }

    /// The server counts it for its synchronous commits.
    pub fn synchronous(&self) -> bool {
        self.sync_state == "sync" || self.sync_state == "quorum"
    }
}

/// Reads the check's `json_agg` of `pg_stat_replication` rows (`[name, state, sync_state,
/// flush_lsn]` each; NULL when there is none). Rows it cannot read are left out.
pub fn parse_senders(json: Option<&str>) -> Vec<Sender> {
    let Some(rows) = json.and_then(|j| serde_json::from_str::<Vec<[Option<String>; 4]>>(j).ok()) else { return Vec::new() };
    rows.into_iter()
        .filter_map(|[name, state, sync, flush]| {
            Some(Sender {
                name: name?,
                state: state.unwrap_or_default(),
                sync_state: sync.unwrap_or_default(),
                flush_lsn: flush.as_deref().and_then(parse_lsn),
            })
        })
        .collect()
}

/// A standby's WAL receiver: whom it streams from, and on which timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receiver {
    /// `streaming`, `starting`, `waiting`, …
    pub status: String,
    /// `received_tli`: the timeline of the WAL it last received.
    pub timeline: Option<u32>,
    /// `sender_host:sender_port`, the upstream it is connected to.
    pub upstream: Option<String>,
}

impl Receiver {
    pub fn streaming(&self) -> bool {
        self.status == "streaming"
    }
}

impl Observation {
    /// The WAL position that matters for routing and promotion: written on a primary,
    /// received (or at least replayed) on a standby.
    pub fn lsn(&self) -> Option<u64> {
        if self.in_recovery {
            self.receive_lsn.max(self.replay_lsn)
        } else {
            self.current_lsn
        }
    }

    /// A standby streaming from an upstream right now.
    pub fn streaming(&self) -> bool {
        self.receiver.as_ref().is_some_and(Receiver::streaming)
    }
}

/// Parses PostgreSQL's `X/Y` LSN text (each half 1 to 8 hex digits; a client's
/// `pgfailover.min_lsn` too, so surrounding blanks are allowed and anything else refused).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let valid = |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid(hi) || !valid(lo) {
        return None;
    }
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Formats an LSN the way PostgreSQL does.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_are_read_from_json() {
        let rows = parse_senders(Some(r#"[["pg-b", "streaming", "quorum", "0/3000060"], [null, "startup", null, null], ["x", "catchup", "async", null]]"#));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], Sender { name: "pg-b".into(), state: "streaming".into(), sync_state: "quorum".into(), flush_lsn: Some(0x3000060) });
        assert!(rows[0].streaming() && rows[0].synchronous() && !rows[1].streaming() && !rows[1].synchronous());
        assert!(parse_senders(None).is_empty());
        assert!(parse_senders(Some("not json")).is_empty());
    }

    #[test]
    fn lsn_round_trip() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(parse_lsn(" 0/3000060 "), Some(0x300_0060));
        for bad in ["", "0", "/1", "1/", "x/1", "0/123456789", "1/2/3", "-1/0"] {
            assert_eq!(parse_lsn(bad), None, "{bad}");
        }
    }
}
