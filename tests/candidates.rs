//! Candidate policy against real servers: `nofailover`, `priority`, zones with
//! `failover.zone_policy`, and `GET /failover/candidates` ("what if the primary died now?")
//! with every reason, from the admin port, from `pgfailover status --candidates`, and from a
//! coordinated follower (the leader's view).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgfailover::config::{Config, PromotionPolicy, Secret, ZonePolicy};
use pgfailover::localpg::Cluster;
use pgfailover::monitor::observation::parse_lsn;
use pgfailover::server::Proxy;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "candidates-token";

fn zone(z: &str) -> PromotionPolicy {
    PromotionPolicy { zone: Some(z.into()), ..Default::default() }
}

/// `cfg` with backend `i` (config order) given `policy`.
fn with(cfg: &mut Config, i: usize, policy: PromotionPolicy) {
    if i == 0 {
        cfg.primary.policy = policy;
    } else {
        cfg.standbys[i - 1].policy = policy;
    }
}

async fn candidates(p: &Proxy) -> Value {
    let r = get(p.admin_addr, "/failover/candidates").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn candidate<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["candidates"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{name} in {v:#}"))
}

fn codes(v: &Value, name: &str) -> Vec<String> {
    candidate(v, name)["reasons"].as_array().unwrap().iter().map(|r| r["code"].as_str().unwrap().to_string()).collect()
}

/// Waits until the candidates answer satisfies `ok`; returns it.
async fn answer(p: &Proxy, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    eventually(LIMIT, what, || async {
        let v = candidates(p).await;
        ok(&v).then_some(v)
    })
    .await
}

fn lsn(s: &pgfailover::monitor::status::Status, name: &str) -> u64 {
    backend(s, name).lsn.as_deref().and_then(parse_lsn).unwrap_or(0)
}

async fn kill(c: &Arc<Cluster>, i: usize) {
    let c = c.clone();
    blocking(move || c.kill(i).unwrap()).await;
}

/// `pg-c` has `nofailover` and more WAL than `pg-b` (whose WAL receiver is frozen while
/// writes go on): a trigger naming it answers 409 with the reason, and when the primary
/// dies `pg-b` is promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nofailover_standby_with_the_most_wal_is_passed_over() {
    let c = Arc::new(cluster(2).await);
    let p = start_proxy(proxy_config(&c, |cfg| {
        cfg.admin_token = Some(Secret::new(TOKEN));
        with(cfg, 2, PromotionPolicy { nofailover: true, ..Default::default() });
    }))
    .await;
    let v = answer(&p, "pg-b would be promoted, pg-c never", |v| v["wouldPromote"] == "pg-b").await;
    assert_eq!(codes(&v, "pg-c"), ["no_failover"], "{v:#}");
    assert!(candidate(&v, "pg-c")["nofailover"] == true && candidate(&v, "pg-c")["rank"].is_null());
    let r = post(p.admin_addr, "/failover/trigger", Some(TOKEN), "{\"target\": \"pg-c\"}").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("nofailover"), "{}", r.body);

    let receiver = c.process(1, "walreceiver").expect("pg-b's WAL receiver");
    c.pause_process(receiver);
    connect(p.client_addr, &c.options.password).await.batch_execute("create table t as select generate_series(1, 2000) as i").await.unwrap();
    let s = wait_status(&p, LIMIT, "pg-c ahead of pg-b", |s| lsn(s, "pg-c") > lsn(s, "pg-b") + 1000).await;
    eprintln!("pg-b at {:?}, pg-c at {:?}", backend(&s, "pg-b").lsn, backend(&s, "pg-c").lsn);
    kill(&c, 0).await;
    c.resume_process(receiver);
    let s = wait_status(&p, LIMIT, "a standby promoted", |s| s.current_primary.as_deref().is_some_and(|n| n != "pg-a")).await;
    assert_eq!(s.current_primary.as_deref(), Some("pg-b"), "the nofailover standby is passed over although it has more WAL");
    assert_eq!(c.psql(2, "select pg_is_in_recovery()").unwrap(), "t");
}

/// Standbys that received the same WAL are promoted in `priority` order: pg-c (5), then
/// pg-d (3) once pg-c is gone; pg-b (1) is last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standbys_with_the_same_wal_are_promoted_in_priority_order() {
    let c = Arc::new(cluster(3).await);
    let p = start_proxy(proxy_config(&c, |cfg| {
        for (i, priority) in [(1, 1), (2, 5), (3, 3)] {
            with(cfg, i, PromotionPolicy { priority, ..Default::default() });
        }
    }))
    .await;
    let v =
        answer(&p, "ranked by priority", |v| candidate(v, "pg-c")["rank"] == 1 && candidate(v, "pg-d")["rank"] == 2 && candidate(v, "pg-b")["rank"] == 3).await;
    assert_eq!(candidate(&v, "pg-c")["priority"], 5);
    kill(&c, 0).await;
    wait_status(&p, LIMIT, "pg-c promoted", |s| s.current_primary.as_deref() == Some("pg-c")).await;
    wait_status(&p, LIMIT, "pg-b and pg-d follow pg-c", |s| backend(s, "pg-b").promotion_eligible && backend(s, "pg-d").promotion_eligible).await;
    answer(&p, "pg-d next", |v| v["wouldPromote"] == "pg-d").await;
    kill(&c, 2).await;
    let s = wait_status(&p, LIMIT, "a standby promoted", |s| s.current_primary.as_deref().is_some_and(|n| n != "pg-c")).await;
    assert_eq!(s.current_primary.as_deref(), Some("pg-d"));
}

/// `same_only`: the primary (zone east) dies and its only standby is in zone west: nothing
/// is promoted, and the answer and the route's reason say why. A reload to `prefer_same`
/// promotes it, as a last resort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_only_refuses_a_promotion_to_another_zone() {
    let c = Arc::new(cluster(1).await);
    let mut cfg = proxy_config(&c, |cfg| {
        cfg.failover.zone_policy = ZonePolicy::SameOnly;
        with(cfg, 0, zone("east"));
        with(cfg, 1, zone("west"));
    });
    let p = start_proxy(cfg.clone()).await;
    let v = answer(&p, "pg-b refused for its zone", |v| codes(v, "pg-b").contains(&"zone".to_string())).await;
    assert!(v["wouldPromote"].is_null() && v["whyNone"].is_string(), "{v:#}");
    assert_eq!((candidate(&v, "pg-b")["zone"].as_str(), candidate(&v, "pg-b")["sameZone"].as_bool()), (Some("west"), Some(false)));
    kill(&c, 0).await;
    let s = wait_status(&p, LIMIT, "the failover waits", |s| {
        s.route_reason.as_deref().is_some_and(|r| r.contains("same_only") && r.contains("no standby can be promoted"))
    })
    .await;
    assert_eq!(s.failover_count, 0);
    assert_eq!(c.psql(1, "select pg_is_in_recovery()").unwrap(), "t", "not promoted across zones");

    cfg.failover.zone_policy = ZonePolicy::PreferSame;
    let r = p.reload(cfg, None).await.unwrap();
    assert!(!r.handover, "{r:?}");
    wait_status(&p, LIMIT, "pg-b promoted as a last resort", |s| s.current_primary.as_deref() == Some("pg-b")).await;
}

/// `prefer_same` (the default): pg-c, in the primary's zone, is promoted before pg-b (another
/// zone, first in config order, the same WAL); once pg-c is gone too, pg-b is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_same_promotes_another_zone_only_as_a_last_resort() {
    let c = Arc::new(cluster(2).await);
    let p = start_proxy(proxy_config(&c, |cfg| {
        for (i, z) in [(0, "east"), (1, "west"), (2, "east")] {
            with(cfg, i, zone(z));
        }
    }))
    .await;
    answer(&p, "pg-c ranked first", |v| candidate(v, "pg-c")["rank"] == 1 && candidate(v, "pg-b")["rank"] == 2).await;
    kill(&c, 0).await;
    wait_status(&p, LIMIT, "pg-c promoted", |s| s.current_primary.as_deref() == Some("pg-c")).await;
    wait_status(&p, LIMIT, "pg-b follows pg-c", |s| backend(s, "pg-b").promotion_eligible).await;
    kill(&c, 2).await;
    wait_status(&p, LIMIT, "pg-b promoted", |s| s.current_primary.as_deref() == Some("pg-b")).await;
}

/// Every reason at once: nofailover, another zone (`same_only`), down, lagging behind
/// `max_lag_bytes`; the would-be promotion and the most that could be lost; and the same
/// answer as `pgfailover status --candidates` prints it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_candidates_answer_gives_every_reason() {
    let c = Arc::new(cluster(3).await);
    let p = start_proxy(proxy_config(&c, |cfg| {
        cfg.failover.zone_policy = ZonePolicy::SameOnly;
        cfg.failover.max_lag_bytes = 4096;
        with(cfg, 0, zone("x"));
        with(cfg, 1, zone("x"));
        with(cfg, 2, PromotionPolicy { nofailover: true, zone: Some("x".into()), priority: 1 });
        with(cfg, 3, zone("y"));
    }))
    .await;
    let v = answer(&p, "pg-b would be promoted", |v| v["wouldPromote"] == "pg-b").await;
    assert_eq!((v["primary"].as_str(), v["primaryZone"].as_str(), v["zonePolicy"].as_str()), (Some("pg-a"), Some("x"), Some("same_only")));
    assert_eq!(candidate(&v, "pg-b")["rank"], 1);
    assert!(candidate(&v, "pg-b")["reasons"].as_array().unwrap().is_empty());
    assert!(candidate(&v, "pg-b")["receiveLsn"].is_string() && candidate(&v, "pg-b")["lagBytes"].is_u64());
    assert_eq!(codes(&v, "pg-c"), ["no_failover"]);
    assert_eq!(codes(&v, "pg-d"), ["zone"]);
    assert_eq!(v["maxLoss"]["acknowledgedWritesSafe"], false);
    assert!(v["maxLoss"]["explanation"].as_str().unwrap().contains("asynchronous"), "{v:#}");

    kill(&c, 3).await;
    answer(&p, "pg-d down", |v| codes(v, "pg-d") == ["unhealthy", "zone"]).await;
    let receiver = c.process(1, "walreceiver").expect("pg-b's WAL receiver");
    c.pause_process(receiver);
    connect(p.client_addr, &c.options.password).await.batch_execute("create table t as select generate_series(1, 1000) as i").await.unwrap();
    let v = answer(&p, "pg-b lagging", |v| codes(v, "pg-b") == ["lagging"]).await;
    assert!(v["wouldPromote"].is_null() && v["maxLoss"].is_null(), "{v:#}");
    assert!(v["whyNone"].as_str().unwrap().contains("no standby"), "{v:#}");
    let message = candidate(&v, "pg-b")["reasons"][0]["message"].as_str().unwrap().to_string();
    assert!(message.contains("exceeds max_lag_bytes 4096"), "{message}");

    let admin = format!("http://{}", p.admin_addr);
    let out = tokio::task::spawn_blocking(move || common::binary::run(&["status", "--admin", &admin, "--candidates"], &[])).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("if pg-a died now: nothing would be promoted"), "{text}");
    for line in ["pg-b: [lagging]", "pg-c: [no_failover]", "pg-d: [unhealthy]", "pg-d: [zone]"] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
    assert!(text.lines().any(|l| l.starts_with("-") && l.contains("pg-c") && l.contains("yes")), "the nofailover column:\n{text}");
    c.resume_process(receiver);
}

/// Coordinated: a follower answers with the leader's view (it says whose), as it hands
/// triggers to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_answers_with_the_leader_s_view() {
    use common::proxies::*;
    let c = cluster(1).await;
    let etcd = common::etcd::start(1).await;
    let o = Opts::new(&etcd);
    let (p1, p2) = (ProxyProc::start(&c, "p1", &o, &[]).await, ProxyProc::start(&c, "p2", &o, &[]).await);
    let lead = agreed(&[&p1, &p2], "pg-a").await;
    let follower = if lead == "p1" { &p2 } else { &p1 };
    let v = eventually(LIMIT, "the follower's answer", || async {
        let v = get(follower.admin, "/failover/candidates").await.json();
        (v["wouldPromote"] == "pg-b").then_some(v)
    })
    .await;
    assert_eq!(v["answeredBy"].as_str(), Some(lead.as_str()), "{v:#}");
    assert!(v["note"].is_null(), "{v:#}");
    let leader = if lead == "p1" { &p1 } else { &p2 };
    let own = get(leader.admin, "/failover/candidates").await.json();
    assert_eq!(own["answeredBy"].as_str(), Some(lead.as_str()));
}
