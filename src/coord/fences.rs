//! Fence changes on their way to etcd. Each is queued (the latest per backend wins) and
//! written as soon as etcd answers; one etcd refuses or cannot take stays for the next try,
//! so a change made while etcd is away is not lost. What to write, and on which condition, is
//! the machine's decision; this only carries it out.

use std::collections::BTreeMap;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use crate::cluster::FenceRecord;

use super::event::Event;
use super::keys::{Decoded, Keys, Kv};

/// The mod revision the machine gives for a fence key this proxy cannot read.
pub const UNREADABLE: i64 = -1;

/// A fence change still to be written.
#[derive(Clone, Debug, PartialEq)]
enum Pending {
    /// Share the fence; with `while_record`, only while the recorded primary's key still has
    /// that mod revision (the decision to share it rested on that record).
    Put { fence: FenceRecord, while_record: Option<i64> },
    /// Lift the fence if it still has this mod revision (0: whatever it is; negative: it
    /// could not be read, so it is never lifted from here).
    Delete(i64),
}

/// The fence changes etcd has not taken yet.
#[derive(Debug, Default)]
pub(super) struct FenceQueue {
    /// The latest change per backend name.
    pending: BTreeMap<String, Pending>,
}

impl FenceQueue {
    pub fn put(&mut self, backend: String, fence: FenceRecord, while_record: Option<i64>) {
        self.pending.insert(backend, Pending::Put { fence, while_record });
    }

    pub fn delete(&mut self, backend: String, revision: i64) {
        self.pending.insert(backend, Pending::Delete(revision));
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Writes what is queued; what etcd does not take stays queued. A conditional put that
    /// found the record moved is dropped, and `news` gets the record as etcd has it now and
    /// the refusal, for the machine to decide again. (`news` is the caller's, so nothing is
    /// lost when a deadline cuts the flush short.)
    pub async fn flush(&mut self, client: &mut Client, keys: &Keys, news: &mut Vec<Event>) {
        // One at a time, each removed once written: a flush cut short loses nothing.
        let ops: Vec<(String, Pending)> = self.pending.iter().map(|(b, op)| (b.clone(), op.clone())).collect();
        for (backend, op) in ops {
            let key = keys.fence(&backend);
            let done = match &op {
                Pending::Put { fence, while_record: None } => client.put(key, serde_json::to_vec(fence).unwrap_or_default(), None).await.map(|_| ()),
                Pending::Put { fence, while_record: Some(rev) } => {
                    let txn = Txn::new()
                        .when([Compare::mod_revision(keys.primary(), CompareOp::Equal, *rev)])
                        .and_then([TxnOp::put(key, serde_json::to_vec(fence).unwrap_or_default(), None)])
                        .or_else([TxnOp::get(keys.primary(), None)]);
                    client.txn(txn).await.map(|r| {
                        if !r.succeeded() {
                            tracing::warn!(%backend, "not sharing the fence: the recorded primary changed since it was decided (deciding again on the new record)");
                            news.push(current_record(keys, r.op_responses()));
                            news.push(Event::FenceRefused { backend: backend.clone() });
                        }
                    })
                }
                Pending::Delete(rev) if *rev < 0 => {
                    tracing::warn!(%backend, "not lifting a shared fence this proxy cannot read");
                    Ok(())
                }
                // Lifted only if nobody fenced it anew since this proxy saw it.
                Pending::Delete(rev) if *rev > 0 => {
                    let txn = Txn::new().when([Compare::mod_revision(key.clone(), CompareOp::Equal, *rev)]).and_then([TxnOp::delete(key, None)]);
                    client.txn(txn).await.map(|r| {
                        if !r.succeeded() {
                            tracing::info!(%backend, "not lifting the shared fence: another proxy changed it meanwhile");
                        }
                    })
                }
                Pending::Delete(_) => client.delete(key, None).await.map(|_| ()),
            };
            match done {
                Ok(()) => {
                    if self.pending.get(&backend) == Some(&op) {
                        self.pending.remove(&backend);
                    }
                }
                Err(err) => tracing::warn!(%backend, error = %err, "could not share a fence change in etcd (tried again shortly)"),
            }
        }
    }
}

/// The record a failed conditional put read in its failure branch, as an event.
fn current_record(keys: &Keys, reads: Vec<TxnOpResponse>) -> Event {
    let kv = reads.iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    });
    match kv.as_ref().map(|kv| keys.decode(Kv::from(kv), false)) {
        Some(Decoded::Record(record, rev)) => Event::Record(record, rev),
        _ => Event::Record(None, 0),
    }
}
