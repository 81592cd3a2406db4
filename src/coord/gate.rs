//! The promotion gate: transactions that succeed only while this proxy still holds its
//! election key with the create revision its campaign won (a fencing token). A leader that
//! lost its key (its lease lapsed while it was frozen) can write nothing.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse, TxnResponse};

use crate::cluster::{FenceRecord, PrimaryRecord};

use super::error::CoordError;
use super::keys::Keys;

/// Records `record` while this proxy holds `own` (its election key and the key's create
/// revision) and the record key still has mod revision `expect` (0: no record), writing
/// `fences` first: a proxy that applies the watch's events one by one never sees the new
/// record while the old primary is still unfenced. Returns the revision written.
pub(super) async fn record(
    client: &mut Client,
    keys: &Keys,
    own: &(String, i64),
    record: &PrimaryRecord,
    fences: &[(String, FenceRecord)],
    expect: i64,
) -> Result<i64, CoordError> {
    let (key, rev) = own;
    let mut ops: Vec<TxnOp> = fences.iter().map(|(b, f)| TxnOp::put(keys.fence(b), serde_json::to_vec(f).unwrap_or_default(), None)).collect();
    ops.push(TxnOp::put(keys.primary(), serde_json::to_vec(record).unwrap_or_default(), None));
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, *rev), Compare::mod_revision(keys.primary(), CompareOp::Equal, expect)])
        .and_then(ops)
        .or_else([TxnOp::get(keys.primary(), None), TxnOp::get(key.clone(), None)]);
    match client.txn(txn).await {
        Ok(r) if r.succeeded() => Ok(r.header().map(|h| h.revision()).unwrap_or(0)),
        Ok(r) => Err(token_failed(&r, *rev)),
        Err(err) => Err(CoordError::etcd(err)),
    }
}

/// Whether this proxy still holds `own`, its election key (before a switchover stops
/// writes).
pub(super) async fn confirm(client: &mut Client, own: &(String, i64)) -> Result<(), CoordError> {
    let (key, rev) = own;
    let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, *rev)]);
    match client.txn(txn).await {
        Ok(r) if r.succeeded() => Ok(()),
        Ok(_) => Err(CoordError::LeadershipLost),
        Err(err) => Err(CoordError::etcd(err)),
    }
}

/// Why a fencing-token transaction failed, from the reads its failure branch made (the
/// record, then the election key): the leadership was lost, or the record moved (someone
/// else's decision is on its way through the watch).
fn token_failed(r: &TxnResponse, rev: i64) -> CoordError {
    let mut reads = r.op_responses().into_iter().filter_map(|op| match op {
        TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| (kv.create_revision(), kv.mod_revision()))),
        _ => None,
    });
    let (record, election) = (reads.next().flatten(), reads.next().flatten());
    match election {
        Some((created, _)) if created == rev => CoordError::RecordMoved { revision: record.map(|(_, modified)| modified).unwrap_or(0) },
        _ => CoordError::LeadershipLost,
    }
}
