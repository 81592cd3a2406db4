//! One etcd session after another: lease, membership, election, watch, and the writes the
//! monitor and the admin port ask for. When etcd cannot be reached (or the lease cannot be
//! renewed in time) the session ends, this proxy stops leading, and the next one starts
//! when etcd answers again.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, OpenSslClientConfig, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::CoordinationConfig;

use super::records::{FenceRecord, KeyKind, Keys, MemberView, PrimaryRecord, Request, Response};
use super::{Cmd, CoordStatus, Event};

/// The coordinator's ends of its channels.
pub(super) struct Channels {
    pub events: mpsc::Sender<Vec<Event>>,
    pub requests: mpsc::Sender<Request>,
    pub cmds: mpsc::UnboundedReceiver<Cmd>,
    pub view: watch::Receiver<Option<MemberView>>,
    pub status: watch::Sender<CoordStatus>,
}

/// What this proxy knows of the shared keys, kept across sessions.
struct Mirror {
    keys: Keys,
    name: String,
    /// Election keys: key → (create revision, candidate name).
    election: BTreeMap<String, (i64, String)>,
    members: BTreeMap<String, MemberView>,
    record: Option<PrimaryRecord>,
    /// The record's mod revision (0: none): a new record must replace exactly this one.
    record_rev: i64,
    fences: BTreeMap<String, FenceRecord>,
    /// Each shared fence's mod revision: a fence is lifted only if nobody changed it since.
    fence_revs: BTreeMap<String, i64>,
    /// Fence changes etcd has not taken yet (refused while it was away, or failed): the
    /// latest per backend, written as soon as it answers again.
    pending: BTreeMap<String, Pending>,
    /// Requests seen and handed to the admin port (when leading).
    handled: HashSet<String>,
    /// This proxy's own election key and its create revision, while it leads.
    leading: Option<(String, i64)>,
    /// The lease of a session that ended in an error: revoked as soon as etcd answers again,
    /// so its keys (an election key, the view) do not linger until it expires.
    old_lease: Option<i64>,
    status: CoordStatus,
}

impl Mirror {
    fn leader(&self) -> Option<String> {
        self.election.values().min_by_key(|(rev, _)| *rev).map(|(_, name)| name.clone())
    }

    /// Leads: won the election, and its key is still the oldest.
    fn leadership(&self) -> Event {
        let leader = self.leader();
        let own = self.leading.as_ref().is_some_and(|(k, _)| self.election.contains_key(k));
        Event::Leadership { is_leader: own && leader.as_deref() == Some(self.name.as_str()), leader }
    }
}

/// A fence change still to be written.
#[derive(Clone, Debug, PartialEq)]
enum Pending {
    Put(FenceRecord),
    /// Lift the fence if it still has this mod revision (0: whatever it is; negative: it
    /// could not be read, so it is never lifted from here).
    Delete(i64),
}

/// The mod revision recorded for a fence key this proxy cannot read.
const UNREADABLE: i64 = -1;

/// Aborts a spawned task when the session that started it ends, however it ends.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a session's loop goes on after a command.
type Flow = Result<(), String>;

pub(super) async fn run(cfg: CoordinationConfig, mut ch: Channels, shutdown: CancellationToken) {
    let mut m = Mirror {
        keys: Keys::new(&cfg.cluster),
        name: cfg.name.clone(),
        election: BTreeMap::new(),
        members: BTreeMap::new(),
        record: None,
        record_rev: 0,
        fences: BTreeMap::new(),
        fence_revs: BTreeMap::new(),
        pending: BTreeMap::new(),
        handled: HashSet::new(),
        leading: None,
        old_lease: None,
        status: ch.status.borrow().clone(),
    };
    let third = cfg.lease_ttl / 3;
    loop {
        let ended = session(&cfg, &mut m, &mut ch, &shutdown).await;
        if m.leading.take().is_some() {
            tracing::warn!("stepped down as the coordinating leader");
        }
        m.status.is_leader = false;
        m.status.etcd_reachable = false;
        ch.status.send_replace(m.status.clone());
        let _ = ch.events.send(vec![Event::EtcdUp(false), m.leadership()]).await;
        match ended {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "etcd unreachable: coordination paused (no proxy promotes until it is back)"),
        }
        // Wait a third of the TTL, answering whoever asks meanwhile.
        let retry = tokio::time::sleep(third);
        tokio::pin!(retry);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut retry => break,
                cmd = ch.cmds.recv() => match cmd {
                    None => return,
                    Some(cmd) => refuse(cmd, "etcd is unreachable", &mut m),
                },
            }
        }
    }
}

/// Answers a command that cannot be carried out now. Fence changes are not lost: they wait
/// for the next session.
fn refuse(cmd: Cmd, why: &str, m: &mut Mirror) {
    match cmd {
        Cmd::Record { reply, .. } => {
            let _ = reply.send(Err(why.to_string()));
        }
        Cmd::Confirm { reply } => {
            let _ = reply.send(Err(why.to_string()));
        }
        Cmd::Forward { reply, .. } => {
            let _ = reply.send(Err(why.to_string()));
        }
        Cmd::PutFence(backend, f) => {
            m.pending.insert(backend, Pending::Put(f));
        }
        Cmd::DeleteFence(backend) => {
            let rev = m.fence_revs.get(&backend).copied().unwrap_or(0);
            m.pending.insert(backend, Pending::Delete(rev));
        }
        Cmd::Respond { .. } => {}
    }
}

fn options(cfg: &CoordinationConfig, request_timeout: Option<Duration>) -> Result<ConnectOptions, String> {
    let third = cfg.lease_ttl / 3;
    // No HTTP/2 keep-alive pings: etcd closes connections that ping more often than every
    // 5 s (its --grpc-keepalive-min-time), and the lease renewals every third of the TTL,
    // each with a deadline, already notice a dead connection.
    let mut o = ConnectOptions::new().with_connect_timeout(third.max(Duration::from_millis(500)));
    if let Some(t) = request_timeout {
        o = o.with_timeout(t);
    }
    if let Some(u) = &cfg.user {
        // etcd forgets a token unused for --auth-token-ttl (5 min): the lease renewals do not
        // use it, so an idle leader's next write would fail for ever without a new one.
        o = o.with_user(u.clone(), cfg.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default()).with_auto_token_refresh(true);
    }
    if cfg.etcd_endpoints.iter().any(|e| e.starts_with("https://")) {
        let read = |p: &Option<std::path::PathBuf>| -> Result<Vec<u8>, String> {
            match p {
                Some(p) => std::fs::read(p).map_err(|e| format!("{}: {e}", p.display())),
                None => Ok(Vec::new()),
            }
        };
        let mut tls = OpenSslClientConfig::default();
        if cfg.ca_file.is_some() {
            tls = tls.ca_cert_pem(&read(&cfg.ca_file)?);
        }
        if cfg.cert_file.is_some() {
            tls = tls.client_cert_pem_and_key(&read(&cfg.cert_file)?, &read(&cfg.key_file)?);
        }
        o = o.with_openssl_tls(tls);
    }
    Ok(o)
}

/// Renews the lease every third of the TTL, each renewal bounded by a third; reports when the
/// last successful renewal was *sent* (the lease runs at least the TTL from then) and how
/// many failed. A renewal that timed out gets a new stream, so a late answer to it is never
/// taken for a newer renewal.
async fn keep_alive(mut client: Client, lease: i64, ttl: Duration, renewed: watch::Sender<(Instant, u64)>) {
    let third = ttl / 3;
    let mut stream = None;
    let mut tick = tokio::time::interval(third);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first renewal at once: the deadline counts from the grant until then.
    loop {
        tick.tick().await;
        let sent = Instant::now();
        let attempt = tokio::time::timeout(third, async {
            if stream.is_none() {
                stream = Some(client.lease_keep_alive(lease).await?);
            }
            let (keeper, replies) = stream.as_mut().expect("opened above");
            keeper.keep_alive().await?;
            replies.message().await
        })
        .await;
        match attempt {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {
                renewed.send_modify(|(at, _)| *at = sent);
            }
            other => {
                let expired = matches!(other, Ok(Ok(Some(_))));
                stream = None;
                renewed.send_modify(|(_, failures)| *failures += 1);
                tracing::warn!(outcome = ?other.map(|r| r.map(|x| x.map(|x| x.ttl()))), "etcd lease renewal failed");
                if expired {
                    // The lease is gone (ttl 0): the session ends at its deadline.
                    return;
                }
            }
        }
    }
}

async fn session(cfg: &CoordinationConfig, m: &mut Mirror, ch: &mut Channels, shutdown: &CancellationToken) -> Result<(), String> {
    let third = cfg.lease_ttl / 3;
    let e = |what: &'static str| move |err: etcd_client::Error| format!("{what}: {err}");
    let mut client = Client::connect(&cfg.etcd_endpoints, Some(options(cfg, Some(third.max(Duration::from_millis(500))))?)).await.map_err(e("connect"))?;
    if let Some(old) = m.old_lease {
        // This proxy is back: the last session's keys go now rather than at its expiry. The
        // lease is forgotten only once etcd has revoked it (or it has expired).
        match client.lease_revoke(old).await {
            Ok(_) => m.old_lease = None,
            Err(err) if err.to_string().contains("not found") => m.old_lease = None,
            Err(err) => return Err(format!("revoke the last session's lease: {err}")),
        }
    }
    // Fence changes made while etcd was away, before anything is read.
    flush_pending(&mut client, m).await;
    let asked = Instant::now();
    let grant = client.lease_grant(cfg.lease_ttl.as_secs().max(1) as i64, None).await.map_err(e("lease grant"))?;
    let (lease, ttl) = (grant.id(), Duration::from_secs(grant.ttl().max(1) as u64));
    m.old_lease = Some(lease);
    let margin = ttl / 6;

    // Another live proxy with this proxy's name would make the quorum count two as one.
    if let Ok(r) = client.get(m.keys.member(&m.name), None).await {
        if let Some(kv) = r.kvs().first().filter(|kv| kv.lease() != lease) {
            tracing::error!(name = %m.name, lease = format!("{:x}", kv.lease()), "another live proxy uses this proxy's name: give every proxy its own coordination.name");
        }
    }

    // Everything there is now, then every change after it.
    let all = client.get(m.keys.prefix.clone(), Some(GetOptions::new().with_prefix())).await.map_err(e("read the cluster's keys"))?;
    let revision = all.header().map(|h| h.revision()).unwrap_or(0);
    let batch = load(m, all.kvs());
    m.status.etcd_reachable = true;
    m.status.last_revision = revision;
    ch.status.send_replace(m.status.clone());
    let _ = ch.events.send(batch).await;
    tracing::info!(endpoints = %cfg.etcd_endpoints.join(","), lease = format!("{lease:x}"), "etcd session started");
    let view = ch.view.borrow_and_update().clone();
    if let Some(v) = view {
        put_view(&mut client, m, &v, lease).await?;
    }
    let mut watch = client
        .watch(m.keys.prefix.clone(), Some(WatchOptions::new().with_prefix().with_start_revision(revision + 1).with_prev_key()))
        .await
        .map_err(e("watch"))?;

    let (renewed_tx, mut renewed) = watch::channel((asked, m.status.lease_renewal_failures));
    let _keeper = AbortOnDrop(tokio::spawn(keep_alive(client.clone(), lease, ttl, renewed_tx)).abort_handle());
    // The campaign blocks until this proxy leads: its own client, without a request timeout.
    let campaign_opts = options(cfg, None)?;
    let (endpoints, election, name) = (cfg.etcd_endpoints.clone(), m.keys.election(), m.name.clone());
    let mut campaign = tokio::spawn(async move {
        let mut c = Client::connect(&endpoints, Some(campaign_opts)).await?;
        let won = c.campaign(election, name, lease).await?;
        Ok::<_, etcd_client::Error>(won.leader().map(|k| (String::from_utf8_lossy(k.key()).into_owned(), k.rev())))
    });
    let _campaign_guard = AbortOnDrop(campaign.abort_handle());
    let mut campaigning = true;
    let mut retry = tokio::time::interval(third);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        let deadline = renewed.borrow().0 + ttl - margin;
        tokio::select! {
            biased;
            // Step down before the lease can expire: another proxy may lead after it.
            _ = tokio::time::sleep_until(deadline.into()) => {
                break Err(format!("the lease was not renewed for {}", humantime::format_duration(renewed.borrow().0.elapsed())));
            }
            _ = shutdown.cancelled() => break Ok(()),
            changed = renewed.changed() => {
                if changed.is_err() {
                    break Err("the lease expired".into());
                }
                m.status.lease_renewal_failures = renewed.borrow().1;
                ch.status.send_replace(m.status.clone());
            }
            cmd = ch.cmds.recv() => match cmd {
                None => break Ok(()),
                Some(cmd) => {
                    if let Err(why) = handle(cmd, &mut client, m, lease, deadline).await {
                        break Err(why);
                    }
                }
            },
            won = &mut campaign, if campaigning => {
                campaigning = false;
                match won {
                    Ok(Ok(Some(key))) => {
                        // The key may have gone with the lease since the campaign answered.
                        match client.get(key.0.clone(), None).await {
                            Ok(r) if r.kvs().first().is_some_and(|kv| kv.create_revision() == key.1) => {}
                            Ok(_) => break Err("elected, but the election key was already gone".into()),
                            Err(err) => break Err(format!("check the election key: {err}")),
                        }
                        tracing::warn!(name = %m.name, "elected the coordinating leader");
                        // Its own put, and the deletion of every older key (the campaign waited
                        // for them), may still be on their way through the watch.
                        m.election.retain(|_, (rev, _)| *rev >= key.1);
                        m.election.insert(key.0.clone(), (key.1, m.name.clone()));
                        m.leading = Some(key);
                        m.status.is_leader = true;
                        m.status.leader = Some(m.name.clone());
                        ch.status.send_replace(m.status.clone());
                        let _ = ch.events.send(vec![m.leadership()]).await;
                        let view = ch.view.borrow().clone();
                        if let Some(v) = view {
                            put_view(&mut client, m, &v, lease).await?;
                        }
                        dispatch_requests(&mut client, m, &ch.requests).await;
                    }
                    Ok(Ok(None)) => break Err("the election answered without a leader key".into()),
                    Ok(Err(err)) => break Err(format!("campaign: {err}")),
                    Err(err) => break Err(format!("campaign task: {err}")),
                }
            }
            msg = watch.message() => match msg {
                Ok(Some(resp)) => {
                    if resp.canceled() {
                        break Err(format!("the watch was cancelled: {}", resp.cancel_reason()));
                    }
                    if let Some(h) = resp.header() {
                        m.status.last_revision = h.revision();
                    }
                    let mut batch = Vec::new();
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        apply(m, kv, ev.event_type() == EventType::Delete, &mut batch, &ch.requests).await;
                    }
                    // The status first: the monitor publishes it with the events' effects.
                    ch.status.send_replace(m.status.clone());
                    if !batch.is_empty() {
                        let _ = ch.events.send(batch).await;
                    }
                    if let Some((key, _)) = &m.leading {
                        if !m.election.contains_key(key) {
                            break Err("this proxy's election key is gone".into());
                        }
                    }
                }
                Ok(None) => break Err("the watch ended".into()),
                Err(err) => break Err(format!("watch: {err}")),
            },
            changed = ch.view.changed() => {
                if changed.is_err() {
                    // The monitor is gone: so is this proxy.
                    break Ok(());
                }
                let view = ch.view.borrow_and_update().clone();
                if let Some(v) = view {
                    if let Err(err) = put_view(&mut client, m, &v, lease).await {
                        tracing::warn!(error = %err, "could not publish this proxy's view");
                    }
                }
            }
            _ = retry.tick(), if !m.pending.is_empty() => {
                // Never past the step-down deadline.
                let _ = tokio::time::timeout_at(deadline.into(), flush_pending(&mut client, m)).await;
            }
        }
    };
    if result.is_ok() {
        // The last fence changes (a takeover's new process restores fences from disk and
        // keeps only those etcd has), then leaving for good: the lease's keys go at once
        // instead of after the TTL. After an error they stay until the next session revokes
        // them (or the lease expires): this proxy's view keeps counting toward the quorum
        // while etcd is away for a moment.
        while let Ok(cmd) = ch.cmds.try_recv() {
            refuse(cmd, "this proxy is stopping", m);
        }
        let _ = tokio::time::timeout(third, flush_pending(&mut client, m)).await;
        let _ = tokio::time::timeout(third, client.lease_revoke(lease)).await;
        m.old_lease = None;
    }
    result
}

/// The initial read: every key as it is now, as one batch of events.
fn load(m: &mut Mirror, kvs: &[KeyValue]) -> Vec<Event> {
    let old_fences = std::mem::take(&mut m.fences);
    m.election.clear();
    m.members.clear();
    m.fence_revs.clear();
    let mut record = None;
    m.record_rev = 0;
    for kv in kvs {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        match m.keys.parse(&key) {
            Some(KeyKind::Primary) => {
                record = serde_json::from_slice::<PrimaryRecord>(kv.value()).ok();
                m.record_rev = kv.mod_revision();
            }
            Some(KeyKind::Election(_)) => {
                m.election.insert(key.clone(), (kv.create_revision(), String::from_utf8_lossy(kv.value()).into_owned()));
            }
            Some(KeyKind::Member(name)) => {
                if let Ok(v) = serde_json::from_slice::<MemberView>(kv.value()) {
                    m.members.insert(name.to_string(), v);
                }
            }
            Some(KeyKind::Fence(b)) => {
                match serde_json::from_slice::<FenceRecord>(kv.value()) {
                    Ok(f) => {
                        m.fence_revs.insert(b.to_string(), kv.mod_revision());
                        m.fences.insert(b.to_string(), f);
                    }
                    Err(err) => {
                        m.fence_revs.insert(b.to_string(), UNREADABLE);
                        // Not ours to judge (a newer proxy's format?): the fence stays as it was.
                        tracing::warn!(key = %key, error = %err, "ignoring a fence key that cannot be read");
                        if let Some(f) = old_fences.get(b) {
                            m.fences.insert(b.to_string(), f.clone());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    m.record = record.clone();
    m.status.recorded_primary = record.clone();
    m.status.leader = m.leader();
    m.status.members = m.members.values().cloned().collect();
    let mut batch = vec![Event::EtcdUp(true), Event::Record(record, m.record_rev)];
    for b in old_fences.keys().filter(|b| !m.fences.contains_key(*b)) {
        batch.push(Event::Fence { backend: b.clone(), fence: None });
    }
    for (b, f) in &m.fences {
        batch.push(Event::Fence { backend: b.clone(), fence: Some(f.clone()) });
    }
    batch.push(Event::Members(m.members.clone()));
    batch.push(m.leadership());
    batch.push(Event::Loaded);
    batch
}

/// One watched change, as events added to `batch`.
async fn apply(m: &mut Mirror, kv: &KeyValue, deleted: bool, batch: &mut Vec<Event>, requests: &mpsc::Sender<Request>) {
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    match m.keys.parse(&key) {
        Some(KeyKind::Primary) => {
            let record = if deleted { None } else { serde_json::from_slice::<PrimaryRecord>(kv.value()).ok() };
            m.record_rev = if deleted { 0 } else { kv.mod_revision() };
            m.record = record.clone();
            m.status.recorded_primary = record.clone();
            batch.push(Event::Record(record, m.record_rev));
        }
        Some(KeyKind::Election(_)) => {
            if deleted {
                // Its own key gone: not the leader from this event on (the session ends).
                m.election.remove(&key);
            } else {
                m.election.insert(key.clone(), (kv.create_revision(), String::from_utf8_lossy(kv.value()).into_owned()));
            }
            m.status.leader = m.leader();
            let lead = m.leadership();
            if let Event::Leadership { is_leader, .. } = &lead {
                m.status.is_leader = *is_leader;
            }
            batch.push(lead);
        }
        Some(KeyKind::Member(name)) => {
            match (deleted, serde_json::from_slice::<MemberView>(kv.value())) {
                (false, Ok(v)) => {
                    m.members.insert(name.to_string(), v);
                }
                (true, _) => {
                    m.members.remove(name);
                }
                _ => return,
            }
            m.status.members = m.members.values().cloned().collect();
            batch.push(Event::Members(m.members.clone()));
        }
        Some(KeyKind::Fence(b)) => {
            let fence = if deleted {
                m.fence_revs.remove(b);
                None
            } else {
                match serde_json::from_slice::<FenceRecord>(kv.value()) {
                    Ok(f) => {
                        m.fence_revs.insert(b.to_string(), kv.mod_revision());
                        Some(f)
                    }
                    Err(err) => {
                        m.fence_revs.insert(b.to_string(), UNREADABLE);
                        tracing::warn!(key = %key, error = %err, "ignoring a fence key that cannot be read");
                        return;
                    }
                }
            };
            match &fence {
                Some(f) => m.fences.insert(b.to_string(), f.clone()),
                None => m.fences.remove(b),
            };
            batch.push(Event::Fence { backend: b.to_string(), fence });
        }
        Some(KeyKind::Request(id)) if !deleted && m.leading.is_some() && m.handled.insert(id.to_string()) => {
            if let Ok(r) = serde_json::from_slice::<Request>(kv.value()) {
                let _ = requests.send(r).await;
            }
        }
        _ => {}
    }
}

/// Requests followers left before this proxy led (their proxy still waits for an answer).
async fn dispatch_requests(client: &mut Client, m: &mut Mirror, requests: &mpsc::Sender<Request>) {
    m.handled.clear();
    let prefix = m.keys.request("");
    let Ok(r) = client.get(prefix, Some(GetOptions::new().with_prefix())).await else { return };
    for kv in r.kvs() {
        if let Ok(req) = serde_json::from_slice::<Request>(kv.value()) {
            if m.handled.insert(req.id.clone()) {
                let _ = requests.send(req).await;
            }
        }
    }
}

async fn put_view(client: &mut Client, m: &Mirror, v: &MemberView, lease: i64) -> Result<(), String> {
    let mut v = v.clone();
    v.leader = m.leading.is_some();
    let json = serde_json::to_vec(&v).unwrap_or_default();
    client.put(m.keys.member(&m.name), json, Some(PutOptions::new().with_lease(lease))).await.map_err(|e| format!("publish this proxy's view: {e}"))?;
    Ok(())
}

/// Writes the fence changes still to be written; those etcd does not take stay for later.
async fn flush_pending(client: &mut Client, m: &mut Mirror) {
    // One at a time, each removed once written: a flush cut short loses nothing.
    let ops: Vec<(String, Pending)> = m.pending.iter().map(|(b, op)| (b.clone(), op.clone())).collect();
    for (backend, op) in ops {
        let key = m.keys.fence(&backend);
        let done = match &op {
            Pending::Put(f) => {
                if f.fence.kind == crate::monitor::machine::FenceKind::SplitBrain && m.record.as_ref().is_some_and(|r| r.name == backend) {
                    tracing::warn!(%backend, "not sharing a split-brain fence on the recorded primary (decided on a stale view)");
                    Ok(())
                } else if m.fences.get(&backend) == Some(f) {
                    Ok(())
                } else {
                    let json = serde_json::to_vec(f).unwrap_or_default();
                    client.put(key, json, None).await.map(|r| {
                        if let Some(h) = r.header() {
                            m.fence_revs.insert(backend.clone(), h.revision());
                        }
                    })
                }
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
            Pending::Delete(_) => match m.fences.contains_key(&backend) {
                true => client.delete(key, None).await.map(|_| ()),
                false => Ok(()),
            },
        };
        match done {
            Ok(()) => {
                if m.pending.get(&backend) == Some(&op) {
                    m.pending.remove(&backend);
                }
            }
            Err(err) => tracing::warn!(%backend, error = %err, "could not share a fence change in etcd (tried again shortly)"),
        }
    }
}

/// Why a fencing-token transaction failed: leadership lost (the session ends) or the record
/// moved (someone else's decision is on its way through the watch).
async fn token_failed(client: &mut Client, m: &Mirror, key: &str, rev: i64) -> Result<String, String> {
    match client.get(key, None).await {
        Ok(r) if r.kvs().first().is_some_and(|kv| kv.create_revision() == rev) => {
            Ok("the recorded primary changed meanwhile; deciding again on the new record".into())
        }
        Ok(_) => Err("this proxy's leadership ended (its election key is gone)".into()),
        Err(err) => Err(format!("etcd: {err} (after the transaction of {} failed)", m.name)),
    }
}

/// Carries out one command; `Err` ends the session (this proxy does not lead any more).
async fn handle(cmd: Cmd, client: &mut Client, m: &mut Mirror, lease: i64, deadline: Instant) -> Flow {
    match cmd {
        cmd @ (Cmd::PutFence(..) | Cmd::DeleteFence(_)) => {
            // Queued as while etcd is away, then written at once.
            refuse(cmd, "", m);
            let _ = tokio::time::timeout_at(deadline.into(), flush_pending(client, m)).await;
        }
        Cmd::Record { record, fences, expect, reply } => {
            let Some((key, rev)) = m.leading.clone() else {
                let _ = reply.send(Err("this proxy does not lead (only the leader promotes)".into()));
                return Ok(());
            };
            // Fences first: a proxy that applies the watch events one by one never sees the
            // new record while the old primary is still unfenced.
            let mut ops: Vec<TxnOp> = fences.iter().map(|(b, f)| TxnOp::put(m.keys.fence(b), serde_json::to_vec(f).unwrap_or_default(), None)).collect();
            ops.push(TxnOp::put(m.keys.primary(), serde_json::to_vec(&record).unwrap_or_default(), None));
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, rev), Compare::mod_revision(m.keys.primary(), CompareOp::Equal, expect)])
                .and_then(ops);
            match client.txn(txn).await {
                Ok(r) if r.succeeded() => {
                    let written = r.header().map(|h| h.revision()).unwrap_or(0);
                    for (b, _) in &fences {
                        m.fence_revs.insert(b.clone(), written);
                    }
                    let _ = reply.send(Ok(written));
                }
                Ok(_) => match token_failed(client, m, &key, rev).await {
                    Ok(why) => {
                        let _ = reply.send(Err(why));
                    }
                    Err(why) => {
                        let _ = reply.send(Err(why.clone()));
                        return Err(why);
                    }
                },
                Err(err) => {
                    let _ = reply.send(Err(format!("etcd: {err}")));
                }
            }
        }
        Cmd::Confirm { reply } => {
            let Some((key, rev)) = m.leading.clone() else {
                let _ = reply.send(Err("this proxy does not lead".into()));
                return Ok(());
            };
            let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, rev)]);
            match client.txn(txn).await {
                Ok(r) if r.succeeded() => {
                    let _ = reply.send(Ok(()));
                }
                Ok(_) => {
                    let why = "this proxy's leadership ended (its election key is gone)".to_string();
                    let _ = reply.send(Err(why.clone()));
                    return Err(why);
                }
                Err(err) => {
                    let _ = reply.send(Err(format!("etcd: {err}")));
                }
            }
        }
        Cmd::Forward { request, wait, reply } => {
            if m.status.leader.is_none() {
                let _ = reply.send(Err("no proxy leads right now (etcd election)".into()));
                return Ok(());
            }
            let (mut c, keys) = (client.clone(), m.keys.clone());
            tokio::spawn(async move {
                let _ = reply.send(forward(&mut c, &keys, request, wait, lease).await);
            });
        }
        Cmd::Respond { id, response } => {
            let json = serde_json::to_vec(&response).unwrap_or_default();
            if let Err(err) = client.put(m.keys.response(&id), json, Some(PutOptions::new().with_lease(lease))).await {
                tracing::warn!(%id, error = %err, "could not answer a forwarded request");
            }
            let _ = client.delete(m.keys.request(&id), None).await;
        }
    }
    Ok(())
}

/// A follower's request: written on its lease, answered by the leader under `responses/`,
/// which this waits for with a watch.
async fn forward(c: &mut Client, keys: &Keys, request: Request, wait: Duration, lease: i64) -> Result<Response, String> {
    let id = request.id.clone();
    let json = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    let answer = async {
        let mut stream = c.watch(keys.response(&id), None).await.map_err(|e| format!("etcd: {e}"))?;
        c.put(keys.request(&id), json, Some(PutOptions::new().with_lease(lease))).await.map_err(|e| format!("etcd: {e}"))?;
        loop {
            match stream.message().await.map_err(|e| format!("etcd: {e}"))? {
                None => return Err("the watch for the leader's answer ended".to_string()),
                Some(resp) => {
                    if let Some(kv) = resp.events().iter().filter(|e| e.event_type() == EventType::Put).find_map(|e| e.kv()) {
                        return serde_json::from_slice::<Response>(kv.value()).map_err(|e| format!("the leader's answer: {e}"));
                    }
                }
            }
        }
    };
    let got = tokio::time::timeout(wait, answer).await;
    let _ = c.delete(keys.request(&id), None).await;
    let _ = c.delete(keys.response(&id), None).await;
    match got {
        Ok(r) => r,
        Err(_) => Err(format!("the leader did not answer within {}", humantime::format_duration(wait))),
    }
}
