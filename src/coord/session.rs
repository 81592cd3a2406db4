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

/// What this proxy knows of the shared keys, kept across sessions.
struct Mirror {
    keys: Keys,
    name: String,
    /// Election keys: key → (create revision, candidate name).
    election: BTreeMap<String, (i64, String)>,
    members: BTreeMap<String, MemberView>,
    record: Option<PrimaryRecord>,
    fences: BTreeMap<String, FenceRecord>,
    /// Requests seen and handed to the admin port (when leading).
    handled: HashSet<String>,
    /// This proxy's own election key and its create revision, while it leads.
    leading: Option<(String, i64)>,
    view: Option<MemberView>,
    status: CoordStatus,
}

impl Mirror {
    fn leader(&self) -> Option<String> {
        self.election.values().min_by_key(|(rev, _)| *rev).map(|(_, name)| name.clone())
    }
}

type Out<'a> = (&'a mpsc::Sender<Event>, &'a mpsc::Sender<Request>, &'a watch::Sender<CoordStatus>);

pub(super) async fn run(
    cfg: CoordinationConfig,
    events: mpsc::Sender<Event>,
    requests: mpsc::Sender<Request>,
    mut cmds: mpsc::Receiver<Cmd>,
    status: watch::Sender<CoordStatus>,
    shutdown: CancellationToken,
) {
    let mut m = Mirror {
        keys: super::records::Keys::new(&cfg.cluster),
        name: cfg.name.clone(),
        election: BTreeMap::new(),
        members: BTreeMap::new(),
        record: None,
        fences: BTreeMap::new(),
        handled: HashSet::new(),
        leading: None,
        view: None,
        status: status.borrow().clone(),
    };
    let out = (&events, &requests, &status);
    let third = cfg.lease_ttl / 3;
    loop {
        let ended = session(&cfg, &mut m, &mut cmds, out, &shutdown).await;
        step_down(&mut m, out).await;
        m.status.etcd_reachable = false;
        let _ = events.send(Event::EtcdUp(false)).await;
        status.send_replace(m.status.clone());
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
                cmd = cmds.recv() => match cmd {
                    None => return,
                    Some(cmd) => refuse(cmd, "etcd is unreachable"),
                },
            }
        }
    }
}

/// Answers a command that cannot be carried out now.
fn refuse(cmd: Cmd, why: &str) {
    match cmd {
        Cmd::Record { reply, .. } => {
            let _ = reply.send(Err(why.to_string()));
        }
        Cmd::Forward { reply, .. } => {
            let _ = reply.send(Err(why.to_string()));
        }
        Cmd::PutFence(..) | Cmd::DeleteFence(_) | Cmd::View(_) | Cmd::Respond { .. } => {}
    }
}

async fn step_down(m: &mut Mirror, (events, _, status): Out<'_>) {
    if m.leading.take().is_some() {
        tracing::warn!("stepped down as the coordinating leader");
    }
    m.status.is_leader = false;
    let _ = events.send(Event::Leadership { leader: m.leader(), is_leader: false }).await;
    status.send_replace(m.status.clone());
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
        o = o.with_user(u.clone(), cfg.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default());
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

async fn session(cfg: &CoordinationConfig, m: &mut Mirror, cmds: &mut mpsc::Receiver<Cmd>, out: Out<'_>, shutdown: &CancellationToken) -> Result<(), String> {
    let (events, requests, status) = out;
    let ttl = cfg.lease_ttl;
    let third = ttl / 3;
    let e = |what: &'static str| move |err: etcd_client::Error| format!("{what}: {err}");
    let mut client = Client::connect(&cfg.etcd_endpoints, Some(options(cfg, Some(third.max(Duration::from_millis(500))))?)).await.map_err(e("connect"))?;
    let lease = client.lease_grant(ttl.as_secs().max(1) as i64, None).await.map_err(e("lease grant"))?.id();
    let (mut keeper, mut renewals) = client.lease_keep_alive(lease).await.map_err(e("lease keep-alive"))?;
    let mut last_renewed = Instant::now();

    // Everything there is now, then every change after it.
    let all = client.get(m.keys.prefix.clone(), Some(GetOptions::new().with_prefix())).await.map_err(e("read the cluster's keys"))?;
    let revision = all.header().map(|h| h.revision()).unwrap_or(0);
    load(m, all.kvs(), events).await;
    m.status.etcd_reachable = true;
    m.status.last_revision = revision;
    let _ = events.send(Event::EtcdUp(true)).await;
    status.send_replace(m.status.clone());
    tracing::info!(endpoints = %cfg.etcd_endpoints.join(","), lease = format!("{lease:x}"), "etcd session started");
    if let Some(v) = m.view.clone() {
        put_view(&mut client, m, &v, lease).await?;
    }
    let mut watch = client
        .watch(m.keys.prefix.clone(), Some(WatchOptions::new().with_prefix().with_start_revision(revision + 1).with_prev_key()))
        .await
        .map_err(e("watch"))?;

    // The campaign blocks until this proxy leads: its own client, without a request timeout.
    let campaign_opts = options(cfg, None)?;
    let (endpoints, election, name) = (cfg.etcd_endpoints.clone(), m.keys.election(), m.name.clone());
    let mut campaign = tokio::spawn(async move {
        let mut c = Client::connect(&endpoints, Some(campaign_opts)).await?;
        let won = c.campaign(election, name, lease).await?;
        Ok::<_, etcd_client::Error>(won.leader().map(|k| (String::from_utf8_lossy(k.key()).into_owned(), k.rev())))
    });
    let mut campaigning = true;
    let mut renew = tokio::time::interval(third);
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = renew.tick() => {
                let renewed = tokio::time::timeout(third, async {
                    keeper.keep_alive().await?;
                    renewals.message().await
                }).await;
                match renewed {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => last_renewed = Instant::now(),
                    other => {
                        m.status.lease_renewal_failures += 1;
                        status.send_replace(m.status.clone());
                        tracing::warn!(outcome = ?other.map(|r| r.map(|x| x.map(|x| x.ttl()))), "etcd lease renewal failed");
                    }
                }
                // Step down before the lease can expire: another proxy may lead after it.
                if last_renewed.elapsed() >= ttl - third {
                    break Err(format!("the lease was not renewed for {}", humantime::format_duration(last_renewed.elapsed())));
                }
            }
            won = &mut campaign, if campaigning => {
                campaigning = false;
                match won {
                    Ok(Ok(Some(key))) => {
                        tracing::warn!(name = %m.name, "elected the coordinating leader");
                        // Its own put may still be on its way through the watch.
                        m.election.insert(key.0.clone(), (key.1, m.name.clone()));
                        m.leading = Some(key);
                        m.status.is_leader = true;
                        m.status.leader = Some(m.name.clone());
                        let _ = events.send(Event::Leadership { leader: Some(m.name.clone()), is_leader: true }).await;
                        status.send_replace(m.status.clone());
                        if let Some(v) = m.view.clone() {
                            put_view(&mut client, m, &v, lease).await?;
                        }
                        dispatch_requests(m, requests).await;
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
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        apply(m, kv, ev.event_type() == EventType::Delete, events, requests).await;
                    }
                    status.send_replace(m.status.clone());
                    if let Some((key, _)) = &m.leading {
                        if !m.election.contains_key(key) {
                            break Err("this proxy's election key is gone".into());
                        }
                    }
                }
                Ok(None) => break Err("the watch ended".into()),
                Err(err) => break Err(format!("watch: {err}")),
            },
            cmd = cmds.recv() => match cmd {
                None => break Ok(()),
                Some(cmd) => handle(cmd, &mut client, m, lease).await,
            },
        }
    };
    campaign.abort();
    // Leaving for good: the lease's keys go at once instead of after the TTL. After an error
    // they stay until the lease expires: this proxy's view keeps counting toward the quorum
    // while it may merely have lost etcd for a moment.
    if result.is_ok() {
        let _ = tokio::time::timeout(third, client.lease_revoke(lease)).await;
    }
    result
}

/// The initial read: every key as it is now.
async fn load(m: &mut Mirror, kvs: &[KeyValue], events: &mpsc::Sender<Event>) {
    let old_fences: Vec<String> = m.fences.keys().cloned().collect();
    m.election.clear();
    m.members.clear();
    m.fences.clear();
    let mut record = None;
    for kv in kvs {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        match m.keys.parse(&key) {
            Some(KeyKind::Primary) => record = serde_json::from_slice::<PrimaryRecord>(kv.value()).ok(),
            Some(KeyKind::Election(_)) => {
                m.election.insert(key.clone(), (kv.create_revision(), String::from_utf8_lossy(kv.value()).into_owned()));
            }
            Some(KeyKind::Member(name)) => {
                if let Ok(v) = serde_json::from_slice::<MemberView>(kv.value()) {
                    m.members.insert(name.to_string(), v);
                }
            }
            Some(KeyKind::Fence(b)) => {
                if let Ok(f) = serde_json::from_slice::<FenceRecord>(kv.value()) {
                    m.fences.insert(b.to_string(), f);
                }
            }
            _ => {}
        }
    }
    m.record = record.clone();
    m.status.recorded_primary = record.clone();
    m.status.leader = m.leader();
    m.status.members = m.members.values().cloned().collect();
    let _ = events.send(Event::Record(record)).await;
    for b in old_fences.iter().filter(|b| !m.fences.contains_key(*b)) {
        let _ = events.send(Event::Fence { backend: b.clone(), fence: None }).await;
    }
    for (b, f) in &m.fences {
        let _ = events.send(Event::Fence { backend: b.clone(), fence: Some(f.clone()) }).await;
    }
    let _ = events.send(Event::Members(m.members.clone())).await;
    let _ = events.send(Event::Leadership { leader: m.leader(), is_leader: false }).await;
}

/// One watched change.
async fn apply(m: &mut Mirror, kv: &KeyValue, deleted: bool, events: &mpsc::Sender<Event>, requests: &mpsc::Sender<Request>) {
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    match m.keys.parse(&key) {
        Some(KeyKind::Primary) => {
            let record = if deleted { None } else { serde_json::from_slice::<PrimaryRecord>(kv.value()).ok() };
            m.record = record.clone();
            m.status.recorded_primary = record.clone();
            let _ = events.send(Event::Record(record)).await;
        }
        Some(KeyKind::Election(_)) => {
            if deleted {
                m.election.remove(&key);
            } else {
                m.election.insert(key.clone(), (kv.create_revision(), String::from_utf8_lossy(kv.value()).into_owned()));
            }
            let leader = m.leader();
            if leader != m.status.leader {
                m.status.leader = leader.clone();
                let _ = events.send(Event::Leadership { leader, is_leader: m.leading.is_some() }).await;
            }
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
            let _ = events.send(Event::Members(m.members.clone())).await;
        }
        Some(KeyKind::Fence(b)) => {
            let fence = if deleted { None } else { serde_json::from_slice::<FenceRecord>(kv.value()).ok() };
            match &fence {
                Some(f) => m.fences.insert(b.to_string(), f.clone()),
                None => m.fences.remove(b),
            };
            let _ = events.send(Event::Fence { backend: b.to_string(), fence }).await;
        }
        Some(KeyKind::Request(id)) if !deleted && m.leading.is_some() && m.handled.insert(id.to_string()) => {
            if let Ok(r) = serde_json::from_slice::<Request>(kv.value()) {
                let _ = requests.send(r).await;
            }
        }
        _ => {}
    }
}

/// Requests left by followers before this proxy led.
async fn dispatch_requests(m: &mut Mirror, _requests: &mpsc::Sender<Request>) {
    // Requests are only dispatched as they arrive (a follower's request waits at most a few
    // seconds and is retried by nobody): old ones are left to expire with their lease.
    m.handled.clear();
}

async fn put_view(client: &mut Client, m: &Mirror, v: &MemberView, lease: i64) -> Result<(), String> {
    let mut v = v.clone();
    v.leader = m.leading.is_some();
    let json = serde_json::to_vec(&v).unwrap_or_default();
    client.put(m.keys.member(&m.name), json, Some(PutOptions::new().with_lease(lease))).await.map_err(|e| format!("publish this proxy's view: {e}"))?;
    Ok(())
}

async fn handle(cmd: Cmd, client: &mut Client, m: &mut Mirror, lease: i64) {
    match cmd {
        Cmd::PutFence(backend, f) => {
            if m.fences.get(&backend) != Some(&f) {
                let json = serde_json::to_vec(&f).unwrap_or_default();
                if let Err(err) = client.put(m.keys.fence(&backend), json, None).await {
                    tracing::warn!(%backend, error = %err, "could not share a fence in etcd");
                }
            }
        }
        Cmd::DeleteFence(backend) => {
            if m.fences.contains_key(&backend) {
                if let Err(err) = client.delete(m.keys.fence(&backend), None).await {
                    tracing::warn!(%backend, error = %err, "could not lift a shared fence in etcd");
                }
            }
        }
        Cmd::View(v) => {
            if m.view.as_ref() != Some(&v) {
                m.view = Some(v.clone());
                if let Err(err) = put_view(client, m, &v, lease).await {
                    tracing::warn!(error = %err, "could not publish this proxy's view");
                }
            }
        }
        Cmd::Record { record, fences, reply } => {
            let outcome = match &m.leading {
                None => Err("this proxy does not lead (only the leader promotes)".to_string()),
                Some((key, rev)) => {
                    // Fences first: a proxy that applies the watch events one by one never
                    // sees the new record while the old primary is still unfenced.
                    let mut ops: Vec<TxnOp> =
                        fences.iter().map(|(b, f)| TxnOp::put(m.keys.fence(b), serde_json::to_vec(f).unwrap_or_default(), None)).collect();
                    ops.push(TxnOp::put(m.keys.primary(), serde_json::to_vec(&record).unwrap_or_default(), None));
                    let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, *rev)]).and_then(ops);
                    match client.txn(txn).await {
                        Ok(r) if r.succeeded() => Ok(()),
                        Ok(_) => Err("this proxy's leadership ended before it could record the promotion".to_string()),
                        Err(err) => Err(format!("etcd: {err}")),
                    }
                }
            };
            let _ = reply.send(outcome);
        }
        Cmd::Forward { request, wait, reply } => {
            if m.status.leader.is_none() {
                let _ = reply.send(Err("no proxy leads right now (etcd election)".into()));
                return;
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
}

/// A follower's request: written on its lease, answered by the leader under `responses/`.
async fn forward(c: &mut Client, keys: &Keys, request: Request, wait: Duration, lease: i64) -> Result<Response, String> {
    let id = request.id.clone();
    let json = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    c.put(keys.request(&id), json, Some(PutOptions::new().with_lease(lease))).await.map_err(|e| format!("etcd: {e}"))?;
    let deadline = Instant::now() + wait;
    loop {
        let got = c.get(keys.response(&id), None).await.map_err(|e| format!("etcd: {e}"))?;
        if let Some(kv) = got.kvs().first() {
            let _ = c.delete(keys.response(&id), None).await;
            return serde_json::from_slice(kv.value()).map_err(|e| format!("the leader's answer: {e}"));
        }
        if Instant::now() >= deadline {
            let _ = c.delete(keys.request(&id), None).await;
            return Err(format!("the leader did not answer within {}", humantime::format_duration(wait)));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
