//! Operating the proxy without downtime, against real PostgreSQL and the real binary: reload
//! on SIGHUP (live settings, a broken file refused, a standby added), a takeover by a second
//! process with a client connecting every 10 ms, and systemd socket activation.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::binary::{free_addr, Cluster, Process, ProxyToml, Signal, Site};
use common::*;
use serde_json::Value;
use tokio::net::TcpStream;

const TOKEN: &str = "operations-test-token";
const LIMIT: Duration = Duration::from_secs(40);

/// The tests' configuration on site `s`, without backends (a test adds them with
/// [`ProxyToml::cluster`]): health checks every `interval`, automatic promotion.
fn config(s: &Site, interval: Duration) -> ProxyToml {
    ProxyToml::new()
        .admin_token(TOKEN)
        .state_dir(&s.state())
        .log_level("info")
        .health_interval(interval)
        .health_timeout(Duration::from_millis(500))
        .failure_threshold(3)
        .promote("auto")
        .hold_timeout(Duration::from_secs(10))
        .shutdown_grace(Duration::from_secs(30))
}

/// A site running the first `backends` nodes of `c`, checked every `interval`.
fn site(c: &Cluster, backends: usize, interval: Duration) -> Site {
    let mut s = Site::new();
    let cfg = config(&s, interval).cluster(c, backends);
    s.write(&cfg);
    s
}

async fn status(s: &Site) -> Value {
    get(s.admin(), "/failover/status").await.json()
}

async fn metrics(s: &Site) -> String {
    get(s.admin(), "/metrics").await.body
}

fn backend_status<'a>(s: &'a Value, name: &str) -> Option<&'a Value> {
    std::iter::once(&s["primary"]).chain(s["standbys"].as_array().into_iter().flatten()).find(|b| b["name"] == name)
}

fn reloads(metrics: &str, result: &str) -> u64 {
    let key = format!("pgfailover_config_reloads_total{{result=\"{result}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&key)).map(|v| v.trim().parse().unwrap()).unwrap_or(0)
}

fn rfc3339(v: &Value) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(v.as_str()?.trim_end_matches('Z')).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_interval_live_and_refuses_a_broken_file() {
    let c = cluster(1).await;
    let pw = c.options.password.clone();
    let mut s = Site::new();
    let base = config(&s, Duration::from_secs(2)).cluster(&c, 2);
    s.write(&base);
    let mut p = s.start("proxy");
    p.ready(LIMIT).await;
    let before = status(&s).await;
    let session = connect(s.listen(), &pw).await;
    session.batch_execute("create table if not exists during_reload (v int)").await.unwrap();

    // A faster health check and JSON logs, live; a new admin port only after a restart.
    let other_admin = free_addr();
    assert_eq!(post(s.admin(), "/failover/check-health", Some(TOKEN), "").await.status, 200);
    assert_eq!(backend_status(&before, "pg-a").unwrap()["servesReads"], false, "include_primary is off");
    s.write(
        &base
            .clone()
            .health_interval(Duration::from_millis(100))
            .set("", "log_format", "json")
            .set("", "listen_ro", other_admin.to_string())
            .set("proxy", "max_client_connections", 2)
            .set("read", "include_primary", true)
            .admin_token("rotated-token"),
    );
    p.signal(Signal::Hup);
    eventually(LIMIT, "the reload is applied", || async { (reloads(&metrics(&s).await, "ok") == 1).then_some(()) }).await;
    let st = status(&s).await;
    assert_ne!(st["config"]["digest"], before["config"]["digest"], "a new configuration, a new digest");
    // The log names the configuration in force, as the status does: listen_ro kept as it runs.
    let digest = st["config"]["digest"].as_str().expect("a digest").to_string();
    let logged =
        eventually(LIMIT, "the reload's log line", || async { p.log().lines().find(|l| l.contains("configuration reloaded")).map(str::to_string) }).await;
    assert!(logged.contains(&digest), "the status's digest {digest} in {logged}");
    assert_eq!(st["config"]["pid"], p.pid(), "the same process");
    eventually(LIMIT, "[read] applies live: the primary serves reads", || async {
        (backend_status(&status(&s).await, "pg-a")?["servesReads"] == true).then_some(())
    })
    .await;
    // [proxy] applies live: a third client is over the new cap of two.
    let second = connect(s.listen(), &pw).await;
    let third = try_connect(s.listen(), &pw).await.expect_err("a third client is refused");
    assert_eq!(third.code(), Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS), "{third}");
    drop(second);
    eventually(LIMIT, "the second client's session ends", || async {
        (get(s.admin(), "/failover/metrics").await.json()["connections"]["active"] == 1).then_some(())
    })
    .await;
    assert_ne!(post(s.admin(), "/failover/check-health", Some(TOKEN), "").await.status, 200, "the old admin token is refused");
    assert_eq!(post(s.admin(), "/failover/check-health", Some("rotated-token"), "").await.status, 200, "the rotated one works");
    // Checks now come about every 100 ms: two consecutive ones less than 1 s apart (at 2 s
    // they never would).
    eventually(LIMIT, "checks of pg-a come at the new interval", || async {
        let a = rfc3339(&backend_status(&status(&s).await, "pg-a")?["lastHealthCheck"])?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(900);
        loop {
            let b = rfc3339(&backend_status(&status(&s).await, "pg-a")?["lastHealthCheck"])?;
            if b != a {
                return (b.duration_since(a).ok()? < Duration::from_millis(900)).then_some(());
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The open session carried on.
    session.execute("insert into during_reload values (1)", &[]).await.expect("the session opened before the reload still works");
    assert!(p.alive(), "SIGHUP does not end the process");

    // A broken file: refused, the old configuration keeps serving.
    let digest = status(&s).await["config"]["digest"].clone();
    s.write_raw("listen = [\n");
    p.signal(Signal::Hup);
    eventually(LIMIT, "the broken reload is counted", || async { (reloads(&metrics(&s).await, "error") == 1).then_some(()) }).await;
    assert!(p.alive(), "a broken file does not end the process");
    assert_eq!(status(&s).await["config"]["digest"], digest, "still the previous configuration");
    session.execute("insert into during_reload values (2)", &[]).await.expect("the session still works");
    let fresh = connect(s.listen(), &pw).await;
    assert_eq!(server_port(&fresh).await, c.nodes[0].port as i32, "new sessions still go to the primary");
    let log = p.log();
    let refusal = log.lines().find(|l| l.contains("configuration reload refused")).unwrap_or_else(|| panic!("the refusal is logged: {log}"));
    let line: Value = serde_json::from_str(refusal).unwrap_or_else(|e| panic!("logged as JSON since the first reload ({e}): {refusal}"));
    assert_eq!(line["level"], "ERROR");
    assert!(log.contains("takes effect only after a restart") && log.contains("listen_ro"), "a new listen_ro is logged as needing a restart: {log}");
    assert!(TcpStream::connect(other_admin).await.is_err(), "and not bound live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_added_by_reload_is_probed_and_can_be_promoted() {
    let c = cluster(1).await;
    let pw = c.options.password.clone();
    let mut s = Site::new();
    let base = config(&s, Duration::from_millis(250));
    s.write(&base.clone().cluster(&c, 1));
    let mut first = s.start("first");
    first.ready(LIMIT).await;
    assert!(backend_status(&status(&s).await, "pg-b").is_none());
    let session = connect(s.listen(), &pw).await;
    session.batch_execute("create table if not exists added (v int)").await.unwrap();

    s.write(&base.cluster(&c, 2));
    first.signal(Signal::Hup);
    // A fresh process takes over; the standby is probed there.
    let (pid, st) = eventually(LIMIT, "a new process with pg-b takes over", || async {
        let st = status(&s).await;
        let pid = st["config"]["pid"].as_u64()? as u32;
        let b = backend_status(&st, "pg-b")?;
        (pid != first.pid() && b["healthy"] == true && b["lastHealthCheck"].is_string()).then_some((pid, st))
    })
    .await;
    let mut second = Process::adopt(&first, "second", pid);
    assert_eq!(st["currentPrimary"], "pg-a");
    assert_eq!(backend_status(&st, "pg-b").unwrap()["promotionEligible"], true, "{st:#}");
    // The session opened before drains on the old process, and works meanwhile.
    session.execute("insert into added values (1)", &[]).await.expect("the old process's session still works");
    drop(session);
    assert!(first.exit(LIMIT).await.success(), "the old process exits successfully once its sessions ended");

    // The added standby is promoted when the primary dies.
    c.kill(0).unwrap();
    eventually(LIMIT, "the added standby is promoted and routed", || async { (status(&s).await["currentPrimary"] == "pg-b").then_some(()) }).await;
    let after = connect(s.listen(), &pw).await;
    assert_eq!(server_port(&after).await, c.nodes[1].port as i32);
    after.execute("insert into added values (2)", &[]).await.expect("writes go to the promoted standby");
    assert!(second.alive());
    drop(after);

    // SIGUSR2 (an upgrade): a third process takes over and carries the fences and history on.
    second.signal(Signal::Usr2);
    let (pid, st) = eventually(LIMIT, "a third process takes over", || async {
        let st = status(&s).await;
        let pid = st["config"]["pid"].as_u64()? as u32;
        (pid != second.pid() && pid != first.pid() && st["currentPrimary"] == "pg-b").then_some((pid, st))
    })
    .await;
    let third = Process::adopt(&first, "third", pid);
    assert_eq!(backend_status(&st, "pg-a").unwrap()["fenced"], true, "the dead old primary stays fenced: {st:#}");
    let h = get(s.admin(), "/failover/history?limit=1000").await.json();
    assert_eq!(h["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "failover").count(), 1, "the history carried on: {h:#}");
    second.gone(LIMIT).await;
    let last = connect(s.listen(), &pw).await;
    assert_eq!(server_port(&last).await, c.nodes[1].port as i32);
    drop(third);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_takes_over_without_refusing_a_connection() {
    let c = cluster(1).await;
    let pw = c.options.password.clone();
    let s = site(&c, 2, Duration::from_millis(250));
    let mut old = s.start("old");
    old.ready(LIMIT).await;

    // A client opening a session every 10 ms, counting what fails.
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let churn = {
        let (ok, failed, errors, pw, listen) = (ok.clone(), failed.clone(), errors.clone(), pw.clone(), s.listen());
        tokio::spawn(async move {
            while !*stop.borrow() {
                match try_connect(listen, &pw).await {
                    Ok(cl) => match cl.simple_query("select 1").await {
                        Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            errors.lock().unwrap().push(e.to_string());
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    },
                    Err(e) => {
                        errors.lock().unwrap().push(e.to_string());
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // A transaction open on the old process across the takeover (holding a lock until it
    // commits), and an idle session that keeps the old process draining until the primary
    // is killed.
    let long = connect(s.listen(), &pw).await;
    long.batch_execute("create table if not exists across (v int); begin; insert into across values (1); select pg_advisory_xact_lock(18)").await.unwrap();
    let idle = connect(s.listen(), &pw).await;
    eventually(LIMIT, "the churn runs", || async { (ok.load(Ordering::SeqCst) >= 20).then_some(()) }).await;

    // A query in flight on the old process while the new one takes over: it waits for the
    // open transaction's lock, so it runs until that transaction commits, after the takeover.
    let running = connect(s.listen(), &pw).await;
    let in_flight = tokio::spawn(async move { running.simple_query("select pg_advisory_xact_lock(18)").await.map(|_| ()) });
    eventually(LIMIT, "the query waits for the lock on the primary", || async {
        let waiting = tokio::task::block_in_place(|| c.psql(0, "select count(*) from pg_locks where locktype = 'advisory' and not granted"));
        (waiting.ok()? == "1").then_some(())
    })
    .await;
    let mut new = s.start("new");
    eventually(LIMIT, "the new process serves the admin port", || async { (status(&s).await["config"]["pid"] == new.pid()).then_some(()) }).await;
    assert!(!in_flight.is_finished(), "the query was still running when the new process took over");
    let at_takeover = ok.load(Ordering::SeqCst);
    assert!(old.alive(), "the old process still drains its sessions");
    let holder: u32 = std::fs::read_to_string(s.state().join("pgfailover.lock")).unwrap().trim().parse().unwrap();
    assert_eq!(holder, new.pid(), "only the new process holds the monitor's lock");
    long.batch_execute("insert into across values (2); commit").await.expect("the transaction on the old process finishes");
    in_flight.await.unwrap().expect("the query running across the takeover finishes");
    drop(long);
    eventually(LIMIT, "the churn goes on through the new process", || async { (ok.load(Ordering::SeqCst) >= at_takeover + 20).then_some(()) }).await;
    let _ = stop_tx.send(true);
    churn.await.unwrap();
    assert_eq!(failed.load(Ordering::SeqCst), 0, "connections failed during the takeover: {:?}", errors.lock().unwrap());
    assert!(old.alive(), "the idle session keeps the old process draining");

    // The primary is killed while both processes run: only the new one fails over, once.
    c.kill(0).unwrap();
    eventually(LIMIT, "the new process fails over", || async { (status(&s).await["currentPrimary"] == "pg-b").then_some(()) }).await;
    drop(idle);
    assert!(old.exit(LIMIT).await.success(), "the old process exits by itself, successfully, once its sessions ended");
    let h = get(s.admin(), "/failover/history?limit=1000").await.json();
    let failovers = h["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "failover").count();
    assert_eq!(failovers, 1, "one failover in the shared history: {h:#}");
    assert!(!old.log().contains("promoting standby"), "the old process never promoted: {}", old.log());
    assert!(new.log().contains("promoting standby"), "the new one did: {}", new.log());
    let after = connect(s.listen(), &pw).await;
    let rows = after.query_one("select count(*) from across", &[]).await.unwrap().get::<_, i64>(0);
    assert_eq!(rows, 2, "the transaction committed on the old process is on the new primary");
    assert!(new.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_with_a_socket_from_systemd_it_serves_on_it() {
    let c = cluster(1).await;
    let pw = c.options.password.clone();
    let mut s = Site::new();
    // The "systemd" side: the listening socket exists before the process.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = config(&s, Duration::from_millis(250)).cluster(&c, 2).listen_on(listener.local_addr().unwrap());
    s.write(&cfg);
    // A client that connected before the process started waits in the socket's queue.
    let early = TcpStream::connect(s.listen()).await.unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let mut p = s.launch("activated").systemd_socket(fd).start();
    // Only the process holds the socket now.
    drop(listener);
    p.ready(LIMIT).await;
    let (client, conn) = conn_config(&pw).connect_raw(early, tokio_postgres::NoTls).await.expect("the early client is served");
    tokio::spawn(conn);
    assert_eq!(server_port(&client).await, c.nodes[0].port as i32);
    let later = connect(s.listen(), &pw).await;
    assert_eq!(server_port(&later).await, c.nodes[0].port as i32);
    assert!(p.log().contains("listening on an inherited socket"), "{}", p.log());
}

fn conn_config(pw: &str) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.user("postgres").password(pw).dbname("postgres");
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_readiness_drops_while_it_still_accepts_for_the_shutdown_delay() {
    let c = cluster(1).await;
    let pw = c.options.password.clone();
    let mut s = Site::new();
    // Long enough for the checks below (they take milliseconds), short enough not to hold a
    // test slot idle: the process stays up for the whole delay before it exits.
    let cfg = config(&s, Duration::from_millis(250)).cluster(&c, 2).shutdown_delay(Duration::from_secs(2));
    s.write(&cfg);
    let mut p = s.start("proxy");
    p.ready(LIMIT).await;
    p.signal(Signal::Term);
    let r = eventually(LIMIT, "/ready answers 503", || async {
        let r = get(s.admin(), "/ready").await;
        (r.status == 503).then_some(r)
    })
    .await;
    assert!(r.json()["reason"].as_str().unwrap().contains("shutting down"), "{}", r.body);
    // A load balancer that has not noticed yet still gets served.
    let late = connect(s.listen(), &pw).await;
    assert_eq!(server_port(&late).await, c.nodes[0].port as i32);
    assert!(p.alive(), "still running during the delay");
    drop(late);
    assert!(p.exit(LIMIT).await.success(), "then it stops and exits successfully");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_out_a_switchover_and_sigterm_ends_the_waiting_process() {
    let c = Arc::new(cluster(1).await);
    let pw = c.options.password.clone();
    let s = site(&c, 2, Duration::from_millis(250));
    let mut old = s.start("old");
    old.ready(LIMIT).await;
    // A switchover that waits: the standby cannot catch up while its WAL sender is stopped.
    let sender = c.process(0, "walsender").expect("a WAL sender");
    c.pause_process(sender);
    c.psql(0, "create table behind (v int); insert into behind select generate_series(1, 1000)").unwrap();
    let admin = s.admin();
    let trigger = tokio::spawn(async move { post(admin, "/failover/trigger", Some(TOKEN), "").await });
    eventually(LIMIT, "the switchover is in progress", || async { (!status(&s).await["failoverInProgress"].is_null()).then_some(()) }).await;

    let mut waiting = s.start("waiting");
    eventually(LIMIT, "the new process is told to wait", || {
        let log = waiting.log();
        async move { log.contains("cannot hand over now").then_some(()) }
    })
    .await;
    assert_eq!(status(&s).await["config"]["pid"], old.pid(), "the running process still serves");
    waiting.signal(Signal::Term);
    assert!(waiting.exit(LIMIT).await.success(), "SIGTERM ends the waiting process, successfully");
    assert!(waiting.log().contains("the running process carries on"), "{}", waiting.log());

    c.resume_process(sender);
    let r = trigger.await.unwrap();
    assert!(r.status == 200 || r.status == 202 || r.status == 409, "the switchover ends: {} {}", r.status, r.body);
    assert!(old.alive());
    assert_eq!(status(&s).await["config"]["pid"], old.pid());
    let after = connect(s.listen(), &pw).await;
    after.simple_query("select 1").await.expect("the running process serves on");
}
