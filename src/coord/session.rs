//! One etcd session after another: lease, membership, election, watch, and the commands the
//! monitor and the admin port send. When etcd cannot be reached (or the lease cannot be
//! renewed in time) the session ends, this proxy stops leading, and the next one starts when
//! etcd answers again.
//!
//! Transport only: across sessions it keeps what talking to etcd needs (its election key,
//! fence writes etcd has not taken, requests already handed over, a lease to revoke). What
//! etcd says goes to the monitor as [`Event`]s; the monitor's machine keeps the one copy of
//! what the proxies share, and decides.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, KeyValue, PutOptions, WatchOptions};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::cluster::{MemberView, Request};
use crate::config::CoordinationConfig;

use super::election::Election;
use super::event::{Event, SharedFence, Snapshot};
use super::fences::FenceQueue;
use super::keys::{Decoded, Keys, Kv, Shared};
use super::{connection, forward, gate, lease};
use super::{Cmd, CoordError, Figures, SharedWrite};

/// The coordinator's ends of its channels.
pub(super) struct Channels {
    /// etcd's news, to the monitor.
    pub events: mpsc::Sender<Vec<Event>>,
    /// Requests followers handed to this proxy (while it leads), to the admin port.
    pub requests: mpsc::Sender<Request>,
    /// What the monitor and the admin port ask for.
    pub cmds: mpsc::UnboundedReceiver<Cmd>,
    /// This proxy's view, as the monitor last published it.
    pub view: watch::Receiver<Option<MemberView>>,
    /// The sessions' figures, for the status.
    pub figures: watch::Sender<Figures>,
}

/// What the transport keeps from one session to the next.
struct Link {
    /// The key names of this proxy's cluster.
    keys: Keys,
    /// This proxy's `coordination.name`.
    name: String,
    /// Who leads, and this proxy's election key while it leads.
    election: Election,
    /// Fence changes etcd has not taken yet.
    fences: FenceQueue,
    /// Requests seen and handed to the admin port (when leading).
    handled: HashSet<String>,
    /// The lease of a session that ended in an error: revoked as soon as etcd answers again,
    /// so its keys (an election key, the view) do not linger until it expires.
    old_lease: Option<i64>,
}

/// How a session's loop goes on after a command: `Err` ends the session.
type Flow = Result<(), String>;

pub(super) async fn run(cfg: CoordinationConfig, mut ch: Channels, shutdown: CancellationToken) {
    let mut link = Link {
        keys: Keys::new(&cfg.cluster),
        name: cfg.name.clone(),
        election: Election::default(),
        fences: FenceQueue::default(),
        handled: HashSet::new(),
        old_lease: None,
    };
    let third = cfg.lease_ttl / 3;
    loop {
        let ended = session(&cfg, &mut link, &mut ch, &shutdown).await;
        if link.election.step_down() {
            tracing::warn!("stepped down as the coordinating leader");
        }
        let _ = ch.events.send(vec![Event::EtcdUp(false), link.election.leadership(&link.name)]).await;
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
                    Some(cmd) => refuse(cmd, CoordError::EtcdUnreachable, &mut link),
                },
            }
        }
    }
}

/// Answers a command that cannot be carried out now. Fence changes are not lost: they wait
/// for the next session.
fn refuse(cmd: Cmd, why: CoordError, link: &mut Link) {
    match cmd {
        Cmd::Record { reply, .. } => {
            let _ = reply.send(Err(why));
        }
        Cmd::Confirm { reply } => {
            let _ = reply.send(Err(why));
        }
        Cmd::Forward { reply, .. } => {
            let _ = reply.send(Err(why));
        }
        Cmd::PutFence { backend, fence, while_record } => link.fences.put(backend, fence, while_record),
        Cmd::DeleteFence { backend, revision } => link.fences.delete(backend, revision),
        Cmd::Respond { .. } => {}
        Cmd::Share { reply, .. } => {
            let _ = reply.send(Err(why));
        }
    }
}

/// Hands a batch of news to the monitor, if there is any.
async fn tell(ch: &Channels, news: Vec<Event>) {
    if !news.is_empty() {
        let _ = ch.events.send(news).await;
    }
}

async fn session(cfg: &CoordinationConfig, link: &mut Link, ch: &mut Channels, shutdown: &CancellationToken) -> Result<(), String> {
    let third = cfg.lease_ttl / 3;
    let e = |what: &'static str| move |err: etcd_client::Error| format!("{what}: {err}");
    let mut client = connection::connect(cfg).await?;
    if let Some(old) = link.old_lease {
        // This proxy is back: the last session's keys go now rather than at its expiry. The
        // lease is forgotten only once etcd has revoked it (or it has expired).
        match client.lease_revoke(old).await {
            Ok(_) => link.old_lease = None,
            Err(etcd_client::Error::GRpcStatus(status)) if status.code() == tonic::Code::NotFound => link.old_lease = None,
            Err(err) => return Err(format!("revoke the last session's lease: {err}")),
        }
    }
    // Fence changes made while etcd was away, before anything is read.
    let mut news = Vec::new();
    link.fences.flush(&mut client, &link.keys, &mut news).await;
    tell(ch, news).await;
    let asked = Instant::now();
    let grant = client.lease_grant(cfg.lease_ttl.as_secs().max(1) as i64, None).await.map_err(e("lease grant"))?;
    let (lease, ttl) = (grant.id(), Duration::from_secs(grant.ttl().max(1) as u64));
    link.old_lease = Some(lease);
    let margin = ttl / 6;

    // Another live proxy with this proxy's name would make the quorum count two as one.
    if let Ok(r) = client.get(link.keys.member(&link.name), None).await {
        if let Some(kv) = r.kvs().first().filter(|kv| kv.lease() != lease) {
            tracing::error!(name = %link.name, lease = format!("{:x}", kv.lease()), "another live proxy uses this proxy's name: give every proxy its own coordination.name");
        }
    }

    // Everything there is now, then every change after it.
    let all = client.get(link.keys.prefix.clone(), Some(GetOptions::new().with_prefix())).await.map_err(e("read the cluster's keys"))?;
    let revision = all.header().map(|h| h.revision()).unwrap_or(0);
    let batch = load(link, all.kvs());
    ch.figures.send_modify(|f| f.last_revision = revision);
    let _ = ch.events.send(batch).await;
    tracing::info!(endpoints = %cfg.etcd_endpoints.join(","), lease = format!("{lease:x}"), "etcd session started");
    let view = ch.view.borrow_and_update().clone();
    if let Some(v) = view {
        put_view(&mut client, link, &v, lease).await?;
    }
    let mut watch = client
        .watch(link.keys.prefix.clone(), Some(WatchOptions::new().with_prefix().with_start_revision(revision + 1).with_prev_key()))
        .await
        .map_err(e("watch"))?;

    let (renewed_tx, mut renewed) = watch::channel((asked, ch.figures.borrow().lease_renewal_failures));
    let _keeper = AbortOnDropHandle::new(tokio::spawn(lease::keep_alive(client.clone(), lease, ttl, renewed_tx)));
    // The campaign blocks until this proxy leads: its own client, without a request timeout.
    let campaign_opts = connection::options(cfg, None)?;
    let (endpoints, election, name) = (cfg.etcd_endpoints.clone(), link.keys.election(), link.name.clone());
    let mut campaign = AbortOnDropHandle::new(tokio::spawn(async move {
        let mut c = Client::connect(&endpoints, Some(campaign_opts)).await?;
        let won = c.campaign(election, name, lease).await?;
        Ok::<_, etcd_client::Error>(won.leader().map(|k| (String::from_utf8_lossy(k.key()).into_owned(), k.rev())))
    }));
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
                let failures = renewed.borrow().1;
                ch.figures.send_modify(|f| f.lease_renewal_failures = failures);
            }
            cmd = ch.cmds.recv() => match cmd {
                None => break Ok(()),
                Some(cmd) => {
                    let mut news = Vec::new();
                    let flow = handle(cmd, &mut client, link, lease, deadline, &mut news).await;
                    tell(ch, news).await;
                    if let Err(why) = flow {
                        break Err(why);
                    }
                }
            },
            won = &mut campaign, if campaigning => {
                campaigning = false;
                match won {
                    Ok(Ok(Some((key, rev)))) => {
                        // The key may have gone with the lease since the campaign answered.
                        match client.get(key.clone(), None).await {
                            Ok(r) if r.kvs().first().is_some_and(|kv| kv.create_revision() == rev) => {}
                            Ok(_) => break Err("elected, but the election key was already gone".into()),
                            Err(err) => break Err(format!("check the election key: {err}")),
                        }
                        tracing::warn!(name = %link.name, "elected the coordinating leader");
                        link.election.won(key, rev, &link.name);
                        let _ = ch.events.send(vec![link.election.leadership(&link.name)]).await;
                        let view = ch.view.borrow().clone();
                        if let Some(v) = view {
                            put_view(&mut client, link, &v, lease).await?;
                        }
                        forward::dispatch_waiting(&mut client, &link.keys, &mut link.handled, &ch.requests).await;
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
                        ch.figures.send_modify(|f| f.last_revision = h.revision());
                    }
                    let mut batch = Vec::new();
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        apply(link, kv, ev.event_type() == EventType::Delete, &mut batch, &ch.requests).await;
                    }
                    tell(ch, batch).await;
                    if link.election.lost() {
                        break Err("this proxy's election key is gone".into());
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
                    if let Err(err) = put_view(&mut client, link, &v, lease).await {
                        tracing::warn!(error = %err, "could not publish this proxy's view");
                    }
                }
            }
            _ = retry.tick(), if !link.fences.is_empty() => {
                // Never past the step-down deadline.
                let mut news = Vec::new();
                let _ = tokio::time::timeout_at(deadline.into(), link.fences.flush(&mut client, &link.keys, &mut news)).await;
                tell(ch, news).await;
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
            refuse(cmd, CoordError::Stopping, link);
        }
        // Nobody decides on news any more: the monitor has stopped.
        let mut news = Vec::new();
        let _ = tokio::time::timeout(third, link.fences.flush(&mut client, &link.keys, &mut news)).await;
        let _ = tokio::time::timeout(third, client.lease_revoke(lease)).await;
        link.old_lease = None;
    }
    result
}

/// The initial read: every key as it is now, as one batch of events.
fn load(link: &mut Link, kvs: &[KeyValue]) -> Vec<Event> {
    link.election.clear();
    let mut snapshot = Snapshot::default();
    for kv in kvs {
        match link.keys.decode(Kv::from(kv), false) {
            Decoded::Record(record, rev) => (snapshot.record, snapshot.record_revision) = (record, rev),
            Decoded::Election(key, candidate) => link.election.set(key, candidate),
            Decoded::Member(name, Some(view)) => {
                snapshot.members.insert(name, view);
            }
            Decoded::Fence(backend, fence) => {
                if fence == SharedFence::Unreadable {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "ignoring a fence key that cannot be read");
                }
                snapshot.fences.insert(backend, fence);
            }
            Decoded::Pause(p) => snapshot.pause = p,
            Decoded::Drain(d) => snapshot.drain = d,
            Decoded::Maintenance(m) => snapshot.maintenance = m,
            _ => {}
        }
    }
    vec![Event::EtcdUp(true), link.election.leadership(&link.name), Event::Loaded(snapshot)]
}

/// One watched change, as events added to `batch` (a request goes to the admin port).
async fn apply(link: &mut Link, kv: &KeyValue, deleted: bool, batch: &mut Vec<Event>, requests: &mpsc::Sender<Request>) {
    match link.keys.decode(Kv::from(kv), deleted) {
        Decoded::Record(record, rev) => batch.push(Event::Record(record, rev)),
        Decoded::Election(key, candidate) => {
            // Its own key gone: not the leader from this event on (the session ends).
            link.election.set(key, candidate);
            batch.push(link.election.leadership(&link.name));
        }
        Decoded::Member(name, view) => batch.push(Event::Member { name, view }),
        Decoded::Fence(backend, fence) => {
            if fence == SharedFence::Unreadable {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "ignoring a fence key that cannot be read");
            }
            batch.push(Event::Fence { backend, fence });
        }
        Decoded::Request(id, request) if link.election.own().is_some() && link.handled.insert(id.clone()) => {
            let _ = requests.send(request).await;
        }
        Decoded::Pause(p) => batch.push(Event::Pause(p)),
        Decoded::Drain(d) => batch.push(Event::Drain(d)),
        Decoded::Maintenance(m) => batch.push(Event::Maintenance(m)),
        _ => {}
    }
}

/// Writes or deletes one of the single shared keys (the drain on this session's lease).
async fn share(client: &mut Client, keys: &Keys, what: SharedWrite, lease: i64) -> Result<(), CoordError> {
    let (key, value, on_lease) = match &what {
        SharedWrite::Pause(p) => (keys.shared(Shared::Pause), p.as_ref().map(serde_json::to_vec), false),
        SharedWrite::Drain(d) => (keys.shared(Shared::Drain), d.as_ref().map(serde_json::to_vec), true),
        SharedWrite::Maintenance(m) => (keys.shared(Shared::Maintenance), m.as_ref().map(serde_json::to_vec), false),
    };
    match value {
        Some(json) => {
            let json = json.map_err(|e| CoordError::Etcd(e.to_string()))?;
            let options = on_lease.then(|| PutOptions::new().with_lease(lease));
            client.put(key, json, options).await.map(|_| ()).map_err(CoordError::etcd)
        }
        None => client.delete(key, None).await.map(|_| ()).map_err(CoordError::etcd),
    }
}

async fn put_view(client: &mut Client, link: &Link, v: &MemberView, lease: i64) -> Result<(), String> {
    let mut v = v.clone();
    v.leader = link.election.own().is_some();
    let json = serde_json::to_vec(&v).unwrap_or_default();
    client.put(link.keys.member(&link.name), json, Some(PutOptions::new().with_lease(lease))).await.map_err(|e| format!("publish this proxy's view: {e}"))?;
    Ok(())
}

/// Carries out one command; `Err` ends the session (this proxy does not lead any more).
/// What the machine must hear of it goes to `news`.
async fn handle(cmd: Cmd, client: &mut Client, link: &mut Link, lease: i64, deadline: Instant, news: &mut Vec<Event>) -> Flow {
    match cmd {
        // Queued as while etcd is away (so a write etcd does not take is tried again), then
        // written at once, never past the step-down deadline.
        Cmd::PutFence { backend, fence, while_record } => {
            link.fences.put(backend, fence, while_record);
            let _ = tokio::time::timeout_at(deadline.into(), link.fences.flush(client, &link.keys, news)).await;
        }
        Cmd::DeleteFence { backend, revision } => {
            link.fences.delete(backend, revision);
            let _ = tokio::time::timeout_at(deadline.into(), link.fences.flush(client, &link.keys, news)).await;
        }
        Cmd::Record { record, fences, expect, reply } => {
            let Some(own) = link.election.own().cloned() else {
                let _ = reply.send(Err(CoordError::NotLeader));
                return Ok(());
            };
            let result = gate::record(client, &link.keys, &own, &record, &fences, expect).await;
            let lost = result == Err(CoordError::LeadershipLost);
            let _ = reply.send(result);
            if lost {
                return Err(CoordError::LeadershipLost.to_string());
            }
        }
        Cmd::Confirm { reply } => {
            let Some(own) = link.election.own().cloned() else {
                let _ = reply.send(Err(CoordError::NotLeader));
                return Ok(());
            };
            let result = gate::confirm(client, &own).await;
            let lost = result == Err(CoordError::LeadershipLost);
            let _ = reply.send(result);
            if lost {
                return Err(CoordError::LeadershipLost.to_string());
            }
        }
        Cmd::Forward { request, wait, reply } => {
            if link.election.leader().is_none() {
                let _ = reply.send(Err(CoordError::NoLeader));
                return Ok(());
            }
            let (mut c, keys) = (client.clone(), link.keys.clone());
            tokio::spawn(async move {
                let _ = reply.send(forward::forward(&mut c, &keys, request, wait, lease).await);
            });
        }
        Cmd::Respond { id, response } => forward::respond(client, &link.keys, &id, &response, lease).await,
        Cmd::Share { what, reply } => {
            let _ = reply.send(share(client, &link.keys, what, lease).await);
        }
    }
    Ok(())
}
