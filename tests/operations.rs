//! Operating the proxy without downtime, against real PostgreSQL and the real binary: reload
//! on SIGHUP (live settings, a broken file refused, a standby added), a takeover by a second
//! process with a client connecting every 10 ms, and systemd socket activation.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgfailover::localpg::{free_port, Cluster};
use serde_json::Value;
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_pgfailover");
const TOKEN: &str = "operations-test-token";
const LIMIT: Duration = Duration::from_secs(40);

/// One configuration file and state directory, shared by the processes that run on it.
struct Setup {
    dir: tempfile::TempDir,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::Builder::new().prefix("pgfailover-ops-").tempdir().unwrap();
        let port = || SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        Setup { dir, listen: port(), admin: port() }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("proxy.toml")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes the configuration: the first `backends` nodes of `c`, health checks every
    /// `interval`.
    fn write(&self, c: &Cluster, backends: usize, interval: &str) {
        self.write_with(c, backends, interval, "", "");
    }

    /// As [`write`](Self::write), with more top-level and `[proxy]` lines.
    fn write_with(&self, c: &Cluster, backends: usize, interval: &str, top: &str, proxy: &str) {
        let mut text = format!(
            "listen = \"{}\"\nadmin_listen = \"{}\"\nadmin_token = \"{TOKEN}\"\nstate_dir = \"{}\"\nlog_level = \"info\"\n{top}\n\
             [health]\ninterval = \"{interval}\"\ntimeout = \"500ms\"\nfailure_threshold = 3\n\n\
             [failover]\npromote = \"auto\"\nhold_timeout = \"10s\"\n\n\
             [proxy]\nshutdown_grace = \"30s\"\n{proxy}\n",
            self.listen,
            self.admin,
            self.state().display(),
        );
        for (i, b) in common::backends(c).iter().take(backends).enumerate() {
            let table = if i == 0 { "[primary]" } else { "[[standbys]]" };
            let password = b.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default();
            text += &format!(
                "\n{table}\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\ndatabase = \"{}\"\npassword = \"{password}\"\n",
                b.name, b.port, b.user, b.database
            );
        }
        std::fs::write(self.config(), text).unwrap();
    }

    async fn status(&self) -> Value {
        get(self.admin, "/failover/status").await.json()
    }

    async fn metrics(&self) -> String {
        get(self.admin, "/metrics").await.body
    }
}

/// A pgfailover process this test started (killed by PID when the test ends, even on a
/// panic), or one started by such a process (a successor), ended by the PID it reports.
struct Proc {
    name: &'static str,
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
}

impl Proc {
    /// Starts the binary; with `systemd_fd`, as systemd would with one socket unit: the
    /// descriptor as 3, `LISTEN_FDS=1`, `LISTEN_PID` naming the process.
    fn spawn(s: &Setup, name: &'static str, systemd_fd: Option<std::os::fd::RawFd>) -> Proc {
        let log = s.dir.path().join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut cmd = match systemd_fd {
            None => Command::new(BIN),
            Some(fd) => pgfailover::testkit::socket_activated(std::path::Path::new(BIN), fd),
        };
        cmd.arg("--config").arg(s.config()).env_remove("RUST_LOG").stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
        let child = cmd.spawn().expect("start pgfailover");
        Proc { name, pid: child.id(), child: Some(child), log }
    }

    /// A process started by one of ours (it took over), known by its PID.
    fn adopted(name: &'static str, pid: u32, log: PathBuf) -> Proc {
        Proc { name, child: None, pid, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: a signal to a process this test started (or its successor), by its PID.
        unsafe { libc::kill(self.pid as libc::pid_t, sig) };
    }

    fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().unwrap().is_none(),
            // Not our child: gone once /proc has no live entry for it.
            None => {
                std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|st| !st.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            }
        }
    }

    /// Waits for the process to end by itself; returns whether it exited successfully.
    async fn exits(&mut self, limit: Duration) -> bool {
        let name = self.name;
        let pid = self.pid;
        eventually(limit, &format!("{name} (pid {pid}) exits by itself"), || {
            let done = match &mut self.child {
                Some(c) => c.try_wait().unwrap().map(|st| st.success()),
                None => None,
            };
            async move { done }
        })
        .await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.alive() {
            self.signal(libc::SIGKILL);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log());
        }
    }
}

async fn ready(s: &Setup, p: &mut Proc) {
    let admin = s.admin;
    eventually(LIMIT, "the proxy routes to a primary", || {
        let exited = !p.alive();
        async move {
            assert!(!exited, "the process exited");
            match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(admin)).await {
                Ok(Ok(_)) => (get(admin, "/ready").await.status == 200).then_some(()),
                _ => None,
            }
        }
    })
    .await;
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
    let s = Setup::new();
    s.write(&c, 2, "2s");
    let mut p = Proc::spawn(&s, "proxy", None);
    ready(&s, &mut p).await;
    let before = s.status().await;
    let session = connect(s.listen, &pw).await;
    session.batch_execute("create table if not exists during_reload (v int)").await.unwrap();

    // A faster health check and JSON logs, live; a new admin port only after a restart.
    let other_admin = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    assert_eq!(post(s.admin, "/failover/check-health", Some(TOKEN), "").await.status, 200);
    assert_eq!(backend_status(&before, "pg-a").unwrap()["servesReads"], false, "include_primary is off");
    s.write_with(
        &c,
        2,
        "100ms",
        &format!("log_format = \"json\"\nlisten_ro = \"{other_admin}\""),
        "max_client_connections = 2\n[read]\ninclude_primary = true",
    );
    let text = std::fs::read_to_string(s.config()).unwrap().replace(TOKEN, "rotated-token");
    std::fs::write(s.config(), text).unwrap();
    p.signal(libc::SIGHUP);
    eventually(LIMIT, "the reload is applied", || async { (reloads(&s.metrics().await, "ok") == 1).then_some(()) }).await;
    let st = s.status().await;
    assert_ne!(st["config"]["digest"], before["config"]["digest"], "a new configuration, a new digest");
    assert_eq!(st["config"]["pid"], p.pid, "the same process");
    eventually(LIMIT, "[read] applies live: the primary serves reads", || async {
        (backend_status(&s.status().await, "pg-a")?["servesReads"] == true).then_some(())
    })
    .await;
    // [proxy] applies live: a third client is over the new cap of two.
    let second = connect(s.listen, &pw).await;
    let third = try_connect(s.listen, &pw).await.expect_err("a third client is refused");
    assert_eq!(third.code(), Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS), "{third}");
    drop(second);
    eventually(LIMIT, "the second client's session ends", || async {
        (get(s.admin, "/failover/metrics").await.json()["connections"]["active"] == 1).then_some(())
    })
    .await;
    assert_ne!(post(s.admin, "/failover/check-health", Some(TOKEN), "").await.status, 200, "the old admin token is refused");
    assert_eq!(post(s.admin, "/failover/check-health", Some("rotated-token"), "").await.status, 200, "the rotated one works");
    // Checks now come about every 100 ms: two consecutive ones less than 1 s apart (at 2 s
    // they never would).
    eventually(LIMIT, "checks of pg-a come at the new interval", || async {
        let a = rfc3339(&backend_status(&s.status().await, "pg-a")?["lastHealthCheck"])?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(900);
        loop {
            let b = rfc3339(&backend_status(&s.status().await, "pg-a")?["lastHealthCheck"])?;
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
    let digest = s.status().await["config"]["digest"].clone();
    std::fs::write(s.config(), "listen = [\n").unwrap();
    p.signal(libc::SIGHUP);
    eventually(LIMIT, "the broken reload is counted", || async { (reloads(&s.metrics().await, "error") == 1).then_some(()) }).await;
    assert!(p.alive(), "a broken file does not end the process");
    assert_eq!(s.status().await["config"]["digest"], digest, "still the previous configuration");
    session.execute("insert into during_reload values (2)", &[]).await.expect("the session still works");
    let fresh = connect(s.listen, &pw).await;
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
    let s = Setup::new();
    s.write(&c, 1, "250ms");
    let mut first = Proc::spawn(&s, "first", None);
    ready(&s, &mut first).await;
    assert!(backend_status(&s.status().await, "pg-b").is_none());
    let session = connect(s.listen, &pw).await;
    session.batch_execute("create table if not exists added (v int)").await.unwrap();

    s.write(&c, 2, "250ms");
    first.signal(libc::SIGHUP);
    // A fresh process takes over; the standby is probed there.
    let (pid, st) = eventually(LIMIT, "a new process with pg-b takes over", || async {
        let st = s.status().await;
        let pid = st["config"]["pid"].as_u64()? as u32;
        let b = backend_status(&st, "pg-b")?;
        (pid != first.pid && b["healthy"] == true && b["lastHealthCheck"].is_string()).then_some((pid, st))
    })
    .await;
    let mut second = Proc::adopted("second", pid, first.log.clone());
    assert_eq!(st["currentPrimary"], "pg-a");
    assert_eq!(backend_status(&st, "pg-b").unwrap()["promotionEligible"], true, "{st:#}");
    // The session opened before drains on the old process, and works meanwhile.
    session.execute("insert into added values (1)", &[]).await.expect("the old process's session still works");
    drop(session);
    assert!(first.exits(LIMIT).await, "the old process exits successfully once its sessions ended");

    // The added standby is promoted when the primary dies.
    c.kill(0).unwrap();
    eventually(LIMIT, "the added standby is promoted and routed", || async { (s.status().await["currentPrimary"] == "pg-b").then_some(()) }).await;
    let after = connect(s.listen, &pw).await;
    assert_eq!(server_port(&after).await, c.nodes[1].port as i32);
    after.execute("insert into added values (2)", &[]).await.expect("writes go to the promoted standby");
    assert!(second.alive());
    drop(after);

    // SIGUSR2 (an upgrade): a third process takes over and carries the fences and history on.
    second.signal(libc::SIGUSR2);
    let (pid, st) = eventually(LIMIT, "a third process takes over", || async {
        let st = s.status().await;
        let pid = st["config"]["pid"].as_u64()? as u32;
        (pid != second.pid && pid != first.pid && st["currentPrimary"] == "pg-b").then_some((pid, st))
    })
    .await;
    let third = Proc::adopted("third", pid, first.log.clone());
    assert_eq!(backend_status(&st, "pg-a").unwrap()["fenced"], true, "the dead old primary stays fenced: {st:#}");
    let h = get(s.admin, "/failover/history?limit=1000").await.json();
    assert_eq!(h["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "failover").count(), 1, "the history carried on: {h:#}");
    eventually(LIMIT, "the second process exits by itself", || {
        let gone = !second.alive();
        async move { gone.then_some(()) }
    })
    .await;
    let last = connect(s.listen, &pw).await;
    assert_eq!(server_port(&last).await, c.nodes[1].port as i32);
    drop(third);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_takes_over_without_refusing_a_connection() {
    let c = cluster(1).await;
    let pw = c.options.password.clone();
    let s = Setup::new();
    s.write(&c, 2, "250ms");
    let mut old = Proc::spawn(&s, "old", None);
    ready(&s, &mut old).await;

    // A client opening a session every 10 ms, counting what fails.
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let churn = {
        let (ok, failed, errors, pw, listen) = (ok.clone(), failed.clone(), errors.clone(), pw.clone(), s.listen);
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
    // A transaction open on the old process across the takeover, and an idle session that
    // keeps the old process draining until the primary is killed.
    let long = connect(s.listen, &pw).await;
    long.batch_execute("create table if not exists across (v int); begin; insert into across values (1)").await.unwrap();
    let idle = connect(s.listen, &pw).await;
    eventually(LIMIT, "the churn runs", || async { (ok.load(Ordering::SeqCst) >= 20).then_some(()) }).await;

    // A query in flight on the old process while the new one takes over.
    let running = connect(s.listen, &pw).await;
    let in_flight = tokio::spawn(async move { running.simple_query("select pg_sleep(5)").await.map(|_| ()) });
    let mut new = Proc::spawn(&s, "new", None);
    eventually(LIMIT, "the new process serves the admin port", || async { (s.status().await["config"]["pid"] == new.pid).then_some(()) }).await;
    assert!(!in_flight.is_finished(), "the query was still running when the new process took over");
    let at_takeover = ok.load(Ordering::SeqCst);
    assert!(old.alive(), "the old process still drains its sessions");
    let holder: u32 = std::fs::read_to_string(s.state().join("pgfailover.lock")).unwrap().trim().parse().unwrap();
    assert_eq!(holder, new.pid, "only the new process holds the monitor's lock");
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
    eventually(LIMIT, "the new process fails over", || async { (s.status().await["currentPrimary"] == "pg-b").then_some(()) }).await;
    drop(idle);
    assert!(old.exits(LIMIT).await, "the old process exits by itself, successfully, once its sessions ended");
    let h = get(s.admin, "/failover/history?limit=1000").await.json();
    let failovers = h["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "failover").count();
    assert_eq!(failovers, 1, "one failover in the shared history: {h:#}");
    assert!(!old.log().contains("promoting standby"), "the old process never promoted: {}", old.log());
    assert!(new.log().contains("promoting standby"), "the new one did: {}", new.log());
    let after = connect(s.listen, &pw).await;
    let rows = after.query_one("select count(*) from across", &[]).await.unwrap().get::<_, i64>(0);
    assert_eq!(rows, 2, "the transaction committed on the old process is on the new primary");
    assert!(new.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_with_a_socket_from_systemd_it_serves_on_it() {
    let c = cluster(1).await;
    let pw = c.options.password.clone();
    let mut s = Setup::new();
    // The "systemd" side: the listening socket exists before the process.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    s.listen = listener.local_addr().unwrap();
    s.write(&c, 2, "250ms");
    // A client that connected before the process started waits in the socket's queue.
    let early = TcpStream::connect(s.listen).await.unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let mut p = Proc::spawn(&s, "activated", Some(fd));
    // Only the process holds the socket now.
    drop(listener);
    ready(&s, &mut p).await;
    let (client, conn) = conn_config(&pw).connect_raw(early, tokio_postgres::NoTls).await.expect("the early client is served");
    tokio::spawn(conn);
    assert_eq!(server_port(&client).await, c.nodes[0].port as i32);
    let later = connect(s.listen, &pw).await;
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
    let s = Setup::new();
    s.write_with(&c, 2, "250ms", "", "shutdown_delay = \"10s\"");
    let mut p = Proc::spawn(&s, "proxy", None);
    ready(&s, &mut p).await;
    p.signal(libc::SIGTERM);
    let r = eventually(LIMIT, "/ready answers 503", || async {
        let r = get(s.admin, "/ready").await;
        (r.status == 503).then_some(r)
    })
    .await;
    assert!(r.json()["reason"].as_str().unwrap().contains("shutting down"), "{}", r.body);
    // A load balancer that has not noticed yet still gets served.
    let late = connect(s.listen, &pw).await;
    assert_eq!(server_port(&late).await, c.nodes[0].port as i32);
    assert!(p.alive(), "still running during the delay");
    drop(late);
    assert!(p.exits(LIMIT).await, "then it stops and exits successfully");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_out_a_switchover_and_sigterm_ends_the_waiting_process() {
    let c = Arc::new(cluster(1).await);
    let pw = c.options.password.clone();
    let s = Setup::new();
    s.write(&c, 2, "250ms");
    let mut old = Proc::spawn(&s, "old", None);
    ready(&s, &mut old).await;
    // A switchover that waits: the standby cannot catch up while its WAL sender is stopped.
    let sender = c.process(0, "walsender").expect("a WAL sender");
    c.pause_process(sender);
    c.psql(0, "create table behind (v int); insert into behind select generate_series(1, 1000)").unwrap();
    let admin = s.admin;
    let trigger = tokio::spawn(async move { post(admin, "/failover/trigger", Some(TOKEN), "").await });
    eventually(LIMIT, "the switchover is in progress", || async { (!s.status().await["failoverInProgress"].is_null()).then_some(()) }).await;

    let mut waiting = Proc::spawn(&s, "waiting", None);
    eventually(LIMIT, "the new process is told to wait", || {
        let log = waiting.log();
        async move { log.contains("cannot hand over now").then_some(()) }
    })
    .await;
    assert_eq!(s.status().await["config"]["pid"], old.pid, "the running process still serves");
    waiting.signal(libc::SIGTERM);
    assert!(waiting.exits(LIMIT).await, "SIGTERM ends the waiting process, successfully");
    assert!(waiting.log().contains("the running process carries on"), "{}", waiting.log());

    c.resume_process(sender);
    let r = trigger.await.unwrap();
    assert!(r.status == 200 || r.status == 202 || r.status == 409, "the switchover ends: {} {}", r.status, r.body);
    assert!(old.alive());
    assert_eq!(s.status().await["config"]["pid"], old.pid);
    let after = connect(s.listen, &pw).await;
    after.simple_query("select 1").await.expect("the running process serves on");
}
