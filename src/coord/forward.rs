//! Admin requests handed from a follower to the leader, through etcd: the follower writes
//! the request on its lease under `requests/` and watches for the answer under `responses/`;
//! the leader hands every request it sees to its admin port and writes the answer on its own
//! lease.

use std::collections::HashSet;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, PutOptions};
use tokio::sync::mpsc;

use crate::cluster::{Request, Response};

use super::error::CoordError;
use super::keys::Keys;

/// A follower's request: written on its lease, answered by the leader under `responses/`,
/// which this waits for (up to `wait`) with a watch. Both keys are deleted afterwards.
pub(super) async fn forward(c: &mut Client, keys: &Keys, request: Request, wait: Duration, lease: i64) -> Result<Response, CoordError> {
    let id = request.id.clone();
    let json = serde_json::to_vec(&request).unwrap_or_default();
    let answer = async {
        let mut stream = c.watch(keys.response(&id), None).await.map_err(CoordError::etcd)?;
        c.put(keys.request(&id), json, Some(PutOptions::new().with_lease(lease))).await.map_err(CoordError::etcd)?;
        loop {
            match stream.message().await.map_err(CoordError::etcd)? {
                None => return Err(CoordError::AnswerLost),
                Some(resp) => {
                    if let Some(kv) = resp.events().iter().filter(|e| e.event_type() == EventType::Put).find_map(|e| e.kv()) {
                        return serde_json::from_slice::<Response>(kv.value()).map_err(|e| CoordError::BadAnswer(e.to_string()));
                    }
                }
            }
        }
    };
    let got = tokio::time::timeout(wait, answer).await;
    let _ = c.delete(keys.request(&id), None).await;
    let _ = c.delete(keys.response(&id), None).await;
    got.unwrap_or(Err(CoordError::NoAnswer(wait)))
}

/// The leader's answer to request `id`, on its lease; the request is done.
pub(super) async fn respond(client: &mut Client, keys: &Keys, id: &str, response: &Response, lease: i64) {
    let json = serde_json::to_vec(response).unwrap_or_default();
    if let Err(err) = client.put(keys.response(id), json, Some(PutOptions::new().with_lease(lease))).await {
        tracing::warn!(%id, error = %err, "could not answer a forwarded request");
    }
    let _ = client.delete(keys.request(id), None).await;
}

/// Just elected: the requests followers left before this proxy led (their proxy still waits
/// for an answer) go to the admin port. `handled` starts again from them.
pub(super) async fn dispatch_waiting(client: &mut Client, keys: &Keys, handled: &mut HashSet<String>, requests: &mpsc::Sender<Request>) {
    handled.clear();
    let Ok(r) = client.get(keys.request(""), Some(GetOptions::new().with_prefix())).await else { return };
    for kv in r.kvs() {
        if let Ok(req) = serde_json::from_slice::<Request>(kv.value()) {
            if handled.insert(req.id.clone()) {
                let _ = requests.send(req).await;
            }
        }
    }
}
