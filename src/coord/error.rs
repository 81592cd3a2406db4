//! Why the coordinator did not do what it was asked: the promotion gate's answers (recording
//! a primary, confirming the leadership) and a forwarded request's. Callers act on the
//! variant, never on the text.

use std::time::Duration;

/// Why a request to the coordinator failed. Nothing was written when it did.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoordError {
    /// This proxy does not hold an election key: only the leader records a primary, promotes
    /// or stops writes.
    #[error("this proxy does not lead (only the leader promotes)")]
    NotLeader,
    /// Its election key is gone (its lease lapsed, or etcd deleted it): the session ends and
    /// this proxy leads no more.
    #[error("this proxy's leadership ended (its election key is gone)")]
    LeadershipLost,
    /// The recorded primary is not the one the decision was made on any more: the new record
    /// (at `revision`, 0 when there is none) is on its way through the watch, and the
    /// decision is made again on it.
    #[error("the recorded primary changed meanwhile (now at revision {revision}); deciding again on the new record")]
    RecordMoved { revision: i64 },
    /// Nobody leads: a follower's request has no one to go to.
    #[error("no proxy leads right now (etcd election)")]
    NoLeader,
    /// etcd cannot be reached (between two sessions).
    #[error("etcd is unreachable")]
    EtcdUnreachable,
    /// An etcd request failed; the text is the etcd client's.
    #[error("etcd: {0}")]
    Etcd(String),
    /// The watch for the leader's answer to a forwarded request ended first.
    #[error("the watch for the leader's answer ended")]
    AnswerLost,
    /// The leader's answer to a forwarded request is no [`crate::cluster::Response`].
    #[error("the leader's answer: {0}")]
    BadAnswer(String),
    /// The leader did not answer a forwarded request within the wait.
    #[error("the leader did not answer within {}", humantime::format_duration(*.0))]
    NoAnswer(Duration),
    /// This proxy is stopping: nothing new is asked of etcd.
    #[error("this proxy is stopping")]
    Stopping,
    /// The coordinator's task is gone.
    #[error("the coordinator stopped")]
    Stopped,
}

impl CoordError {
    /// A failed etcd request.
    pub(super) fn etcd(e: etcd_client::Error) -> CoordError {
        CoordError::Etcd(e.to_string())
    }
}
