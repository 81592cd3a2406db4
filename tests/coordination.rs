//! Several proxies, one decision: pgfailover processes coordinated through a real etcd, in
//! front of a real primary and standbys. Faults: a killed primary, a frozen leader (SIGSTOP),
//! etcd without a quorum, a path to the primary black-holed for one proxy only.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::binary::Cluster;
use common::etcd;
use common::proxies::*;
use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_one_promotion_everyone_follows_and_the_old_primary_stays_fenced() {
    // Synchronous (ANY 1): an acknowledged commit is on a standby when the primary dies.
    let c = cluster_with(pgfailover::localpg::ClusterOptions { standbys: 2, synchronous: true, ..Default::default() }).await;
    let etcd = etcd::start(1).await;
    let o = Opts::new(&etcd);
    let pw = c.options.password.clone();
    let (p1, p2, p3) = (ProxyProc::start(&c, "p1", &o, &[]).await, ProxyProc::start(&c, "p2", &o, &[]).await, ProxyProc::start(&c, "p3", &o, &[]).await);
    let ps = [&p1, &p2, &p3];
    let lead = agreed(&ps, "pg-a").await;
    // Each proxy publishes its view once it has checked the servers: wait for all three.
    let st = all(&ps, "the primary is recorded and every view published", |_, s| {
        s["coordination"]["recordedPrimary"]["name"] == "pg-a" && s["coordination"]["members"].as_array().is_some_and(|m| m.len() == 3)
    })
    .await;
    assert_eq!(st[0]["coordination"]["members"].as_array().unwrap().len(), 3, "three live members: {:#}", st[0]);
    let follower = *ps.iter().find(|p| p.name != lead).unwrap();

    // Acknowledged writes through a follower while the primary dies.
    let ledger = Ledger::start(follower.listen, &pw).await;
    ledger.advance(30, LIMIT, "writes through a follower").await;
    tokio::task::block_in_place(|| c.kill(0)).unwrap();
    let st = all(&ps, "every proxy routes to one promoted standby", |_, s| matches!(routed(s), Some("pg-b" | "pg-c"))).await;
    let new = routed(&st[0]).unwrap().to_string();
    assert!(st.iter().all(|s| routed(s) == Some(new.as_str())), "all route to {new}: {st:#?}");
    ledger.advance(30, LIMIT, "writes through the follower after the failover").await;
    let new_port = c.nodes[index_of(&new)].port as i32;
    for p in ps {
        assert_eq!(session_port(p.listen, &pw).await, new_port, "{}'s new sessions go to {new}", p.name);
    }
    let acked = ledger.finish().await;
    assert!(missing_on(&c, index_of(&new), &acked).is_empty(), "acknowledged writes lost");

    // Exactly one promotion, by the leader; every proxy's history shows the same one.
    assert_eq!(promotions(&c), 1, "exactly one pg_promote across the three proxies");
    let other = if new == "pg-b" { 2 } else { 1 };
    assert!(in_recovery(&c, other), "the other standby was not promoted");
    for p in ps {
        let f = p.events("failover").await;
        assert_eq!(f.len(), 1, "{}: one failover: {f:#?}", p.name);
        assert_eq!(f[0]["to"], new.as_str(), "{}", p.name);
        assert_eq!(f[0]["from"], "pg-a", "{}", p.name);
    }
    // The old primary's fence came with the record: followers show whose it is.
    for p in ps.iter().filter(|p| p.name != lead) {
        let s = p.status().await;
        let reason = backend_status(&s, "pg-a")["fenceReason"].as_str().unwrap_or_default().to_string();
        assert!(reason.starts_with(&format!("fenced by {lead}")), "{}: {reason}", p.name);
    }
    let mut kv = etcd::client(&etcd).await;
    let rec = kv.get("/pgfailover/main/primary", None).await.unwrap();
    let rec: Value = serde_json::from_slice(rec.kvs()[0].value()).unwrap();
    assert_eq!(rec["name"], new.as_str());
    assert_eq!(rec["by"], lead.as_str());
    assert!(rec["epoch"].as_u64().unwrap() >= 2, "{rec}");
    assert_eq!(kv.get("/pgfailover/main/fences/pg-a", None).await.unwrap().kvs().len(), 1, "the fence is shared");

    // The old primary comes back writable on its old timeline: fenced on all three.
    let mut c = c;
    blocking_mut(&mut c, |c| c.start_node(0)).await.expect("the old primary starts");
    assert!(!in_recovery(&c, 0), "the old primary is writable again");
    all(&ps, "pg-a is back, healthy and fenced on every proxy", |_, s| {
        let b = backend_status(s, "pg-a");
        b["healthy"] == true && b["fenced"] == true && routed(s) == Some(new.as_str())
    })
    .await;
    for p in ps {
        assert_eq!(session_port(p.listen, &pw).await, new_port, "{} never routes to the old primary", p.name);
    }
}

/// Runs `f` on the cluster off the runtime's workers.
async fn blocking_mut<T: Send + 'static>(c: &mut Cluster, f: impl FnOnce(&mut Cluster) -> T + Send + 'static) -> T {
    tokio::task::block_in_place(|| f(c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_replaced_and_when_it_thaws_it_follows_the_record() {
    // Synchronous (ANY 1): an acknowledged commit is on a standby when the primary dies.
    let c = cluster_with(pgfailover::localpg::ClusterOptions { standbys: 2, synchronous: true, ..Default::default() }).await;
    let etcd = etcd::start(1).await;
    let o = Opts { lease_ttl: Duration::from_secs(2), ..Opts::new(&etcd) };
    let pw = c.options.password.clone();
    let mut ps = vec![ProxyProc::start(&c, "p1", &o, &[]).await, ProxyProc::start(&c, "p2", &o, &[]).await, ProxyProc::start(&c, "p3", &o, &[]).await];
    let lead = agreed(&ps.iter().collect::<Vec<_>>(), "pg-a").await;
    let li = ps.iter().position(|p| p.name == lead).unwrap();
    ps[li].pause();
    let rest: Vec<&ProxyProc> = ps.iter().enumerate().filter(|(i, _)| *i != li).map(|(_, p)| p).collect();
    let st = all(&rest, "another proxy takes the lease", |_, s| leader(s).is_some_and(|l| l != lead)).await;
    let second = leader(&st[0]).unwrap().to_string();
    assert!(st.iter().all(|s| leader(s) == Some(second.as_str())), "{st:#?}");

    let ledger = Ledger::start(rest[0].listen, &pw).await;
    ledger.advance(20, LIMIT, "writes while the old leader is frozen").await;
    tokio::task::block_in_place(|| c.kill(0)).unwrap();
    let st = all(&rest, "the new leader fails over; both route to the promoted standby", |_, s| matches!(routed(s), Some("pg-b" | "pg-c"))).await;
    let new = routed(&st[0]).unwrap().to_string();
    assert!(st.iter().all(|s| routed(s) == Some(new.as_str())), "{st:#?}");
    ledger.advance(20, LIMIT, "writes after the failover").await;

    // Thawed, the old leader still believes it leads until etcd tells it otherwise; its
    // promotion would need the election key it lost. It follows the record instead.
    ps[li].resume();
    let old = &ps[li];
    all(&[old], "the old leader follows the new primary", |_, s| routed(s) == Some(new.as_str()) && !leads(s) && leader(s) == Some(second.as_str())).await;
    assert_eq!(session_port(old.listen, &pw).await, c.nodes[index_of(&new)].port as i32);
    let acked = ledger.finish().await;
    assert!(missing_on(&c, index_of(&new), &acked).is_empty(), "acknowledged writes lost");
    assert_eq!(promotions(&c), 1, "one promotion in all");
    let other = if new == "pg-b" { 2 } else { 1 };
    assert!(in_recovery(&c, other), "the old leader promoted nothing");
    for p in &ps {
        let f = p.events("failover").await;
        assert_eq!(f.len(), 1, "{}: {f:#?}", p.name);
        assert_eq!(f[0]["to"], new.as_str());
    }
    assert!(old.log().contains("stepped down as the coordinating leader"), "the thawed leader says it stepped down");
    // Whatever the thawed leader's stale view made of the new primary, nobody fences it.
    for p in &ps {
        let s = p.status().await;
        assert_eq!(backend_status(&s, &new)["fenced"], false, "{}: {:#}", p.name, backend_status(&s, &new));
    }
    let mut kv = etcd::client(&etcd).await;
    assert!(kv.get(format!("/pgfailover/main/fences/{new}"), None).await.unwrap().kvs().is_empty(), "no shared fence on the new primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_etcd_quorum_nothing_is_promoted_and_coordination_resumes_when_it_returns() {
    let c = cluster(1).await;
    let mut etcd = etcd::start(3).await;
    let o = Opts { hold_timeout: Duration::from_secs(1), ..Opts::new(&etcd) };
    let pw = c.options.password.clone();
    let (p1, p2) = (ProxyProc::start(&c, "p1", &o, &[]).await, ProxyProc::start(&c, "p2", &o, &[]).await);
    let ps = [&p1, &p2];
    agreed(&ps, "pg-a").await;
    all(&ps, "the primary is recorded", |_, s| s["coordination"]["recordedPrimary"]["name"] == "pg-a").await;

    // Two of three etcd members gone: no quorum, no lease, nobody leads.
    etcd.kill(1);
    etcd.kill(2);
    all(&ps, "every proxy sees etcd unreachable and nobody leads", |_, s| s["coordination"]["etcdReachable"] == false && !leads(s)).await;
    // A healthy primary keeps serving meanwhile, through both.
    for p in ps {
        let client = connect(p.listen, &pw).await;
        client.batch_execute("create table if not exists t(x int); insert into t values (1)").await.unwrap();
        assert_eq!(server_port(&client).await, c.nodes[0].port as i32);
    }
    // An operator's trigger is refused with the reason.
    let r = post(p2.admin, "/failover/trigger", Some(TOKEN), "{}").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("etcd"), "{}", r.body);

    tokio::task::block_in_place(|| c.kill(0)).unwrap();
    // Long past the point where a failover would have been confirmed (3 failures at 250 ms):
    // 16 consecutive failed checks on every proxy.
    let st = all(&ps, "every proxy has seen pg-a fail 16 checks in a row", |_, s| backend_status(s, "pg-a")["failureCount"].as_u64() >= Some(16)).await;
    for s in &st {
        assert_eq!(routed(s), None);
        let reason = s["routeReason"].as_str().unwrap_or_default();
        assert!(reason.contains("etcd is unreachable"), "{reason}");
    }
    assert_eq!(promotions(&c), 0, "nothing promoted without etcd");
    assert!(in_recovery(&c, 1));
    let err = try_connect(p1.listen, &pw).await.expect_err("no primary");
    let db = err.as_db_error().expect("a PostgreSQL error, not a dropped socket");
    assert_eq!(db.code().code(), "57P03");
    assert!(db.message().contains("etcd is unreachable"), "{}", db.message());

    // etcd is back: a leader is elected and fails over.
    etcd.restart(1).unwrap();
    etcd.restart(2).unwrap();
    etcd::wait_ready(&etcd, LIMIT);
    agreed(&ps, "pg-b").await;
    assert_eq!(promotions(&c), 1);
    assert_eq!(session_port(p1.listen, &pw).await, c.nodes[1].port as i32);
}

/// A TCP relay in front of a server that the test can black-hole: while it is, nothing
/// passes either way and new connections get no answer (as when packets are dropped).
struct Relay {
    port: u16,
    hole: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (hole, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let rx = rx.clone();
                tokio::spawn(async move {
                    let mut open = rx.clone();
                    if open.wait_for(|h| !*h).await.is_err() {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, rx.clone()), pump(sr, cw, rx));
                });
            }
        });
        Relay { port, hole, task }
    }

    fn black_hole(&self, on: bool) {
        self.hole.send_replace(on);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies one direction, holding everything while the relay is black-holed.
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, mut hole: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if hole.wait_for(|h| !*h).await.is_err() {
            return;
        }
        let n = tokio::select! {
            n = from.read(&mut buf) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = hole.wait_for(|h| *h) => continue,
        };
        if hole.wait_for(|h| !*h).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_proxy_cut_off_from_the_primary_causes_no_failover() {
    let c = cluster(1).await;
    let etcd = etcd::start(1).await;
    let o = Opts::new(&etcd);
    let pw = c.options.password.clone();
    // The leader is the proxy that loses its path: the strongest case (it is the one that
    // would promote).
    let relay = Relay::start(node_addr(&c, 0)).await;
    let p1 = ProxyProc::start(&c, "p1", &o, &[(0, relay.port)]).await;
    all(&[&p1], "p1 leads", |_, s| leads(s)).await;
    let (p2, p3) = (ProxyProc::start(&c, "p2", &o, &[]).await, ProxyProc::start(&c, "p3", &o, &[]).await);
    let ps = [&p1, &p2, &p3];
    assert_eq!(agreed(&ps, "pg-a").await, "p1");
    all(&ps, "every proxy sees three members", |_, s| s["coordination"]["members"].as_array().is_some_and(|m| m.len() == 3)).await;

    relay.black_hole(true);
    let st = all(&[&p1], "p1 sees pg-a down for 16 checks and waits for the others", |_, s| {
        backend_status(s, "pg-a")["failureCount"].as_u64() >= Some(16) && s["routeReason"].as_str().is_some_and(|r| r.contains("agree"))
    })
    .await;
    assert!(st[0]["routeReason"].as_str().unwrap().contains("1 of 3 live proxies see pg-a down"), "{}", st[0]["routeReason"]);
    // The others still route to the primary, and writes through them succeed.
    for p in [&p2, &p3] {
        let s = p.status().await;
        assert_eq!(routed(&s), Some("pg-a"), "{}", p.name);
        let client = connect(p.listen, &pw).await;
        client.batch_execute("create table if not exists t(x int); insert into t values (1)").await.unwrap();
    }
    assert_eq!(promotions(&c), 0, "no failover with quorum = majority");
    assert!(in_recovery(&c, 1));
    assert!(p1.events("failover").await.is_empty());

    // The path comes back: p1 routes to the primary again.
    relay.black_hole(false);
    all(&[&p1], "p1 routes to pg-a again", |_, s| routed(s) == Some("pg-a")).await;
    assert_eq!(session_port(p1.listen, &pw).await, c.nodes[0].port as i32);
    assert_eq!(promotions(&c), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_hands_admin_requests_to_the_leader() {
    let c = cluster(1).await;
    let etcd = etcd::start(1).await;
    let o = Opts::new(&etcd);
    let pw = c.options.password.clone();
    let p1 = ProxyProc::start(&c, "p1", &o, &[]).await;
    all(&[&p1], "p1 leads", |_, s| leads(s)).await;
    let p2 = ProxyProc::start(&c, "p2", &o, &[]).await;
    assert_eq!(agreed(&[&p1, &p2], "pg-a").await, "p1");

    // The same answer from the follower as from the leader itself.
    let body = r#"{"target":"pg-b"}"#;
    let (a, b) = (post(p1.admin, "/failover/unfence", Some(TOKEN), body).await, post(p2.admin, "/failover/unfence", Some(TOKEN), body).await);
    assert_eq!((a.status, a.json()), (b.status, b.json()), "leader and follower answer alike");
    assert_eq!(a.status, 409, "{}", a.body);
    // Without the token the follower refuses by itself.
    assert_eq!(post(p2.admin, "/failover/trigger", None, "{}").await.status, 401);

    // A switchover asked of the follower is carried out by the leader.
    let r = post(p2.admin, "/failover/trigger", Some(TOKEN), "{}").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["to"], "pg-b", "{}", r.body);
    agreed(&[&p1, &p2], "pg-b").await;
    assert_eq!(promotions(&c), 1);
    assert_eq!(session_port(p2.listen, &pw).await, c.nodes[1].port as i32);
    let f = p1.events("failover").await;
    assert_eq!(f.len(), 1, "{f:#?}");
    assert!(f[0]["trigger"].as_str().unwrap().contains("via p2"), "{}", f[0]);
}
