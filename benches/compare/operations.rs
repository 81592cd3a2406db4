//! Refused connections while the proxy is reloaded, taken over or restarted: a client opens a
//! new session (connect, `SELECT 1`, close) every 10 ms through the proxy during each event,
//! from a moment before it until the proxy serves again. Counts the sessions that failed and
//! the slowest one (a client waiting in the listening socket's queue is slow, not refused).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::binary::admin::get;
use crate::binary::{Cluster, Process, ProxyToml, Signal, Site};

/// What one event cost the client.
pub struct Outcome {
    pub sessions: usize,
    pub failed: usize,
    pub slowest: Duration,
}

/// How the proxy is put through the event.
#[derive(Clone, Copy, Debug)]
pub enum Event {
    /// `kill -HUP` with a changed `health.interval`.
    Reload,
    /// A second process started on the same config and state directory.
    Takeover,
    /// The listening socket held outside the proxy (as by a systemd `.socket` unit): SIGTERM,
    /// the process drains and exits, a new one starts on the same socket.
    SocketUnitRestart,
    /// For comparison: SIGTERM, then a new process binds the address once the old one is gone.
    PlainRestart,
}

/// The configuration of every trial, checking health every `interval`; the password
/// comes from `DB_PASSWORD`.
fn config(s: &Site, c: &Cluster, listen: Option<std::net::SocketAddr>, interval: Duration) -> ProxyToml {
    let cfg = ProxyToml::new()
        .state_dir(&s.state())
        .log_level("info")
        .health_interval(interval)
        .health_timeout(Duration::from_millis(500))
        .hold_timeout(Duration::from_secs(10))
        .shutdown_grace(Duration::from_secs(5))
        .backend("pg-a", c.nodes[0].port)
        .backend("pg-b", c.nodes[1].port);
    match listen {
        Some(addr) => cfg.listen_on(addr),
        None => cfg,
    }
}

/// Starts a process on the site (on the held socket `fd`, if any).
fn spawn(s: &Site, name: &str, pw: &str, fd: Option<i32>) -> Process {
    let launch = s.launch(name).env("DB_PASSWORD", pw);
    match fd {
        Some(fd) => launch.systemd_socket(fd).start(),
        None => launch.start(),
    }
}

fn pid_serving(s: &Site) -> Option<u64> {
    get(s.admin(), "/failover/status")?.json()?["config"]["pid"].as_u64()
}

fn ready(s: &Site) -> bool {
    get(s.admin(), "/ready").is_some_and(|r| r.status == 200)
}

/// Polls every 5 ms (not the harness's 20 ms): in a plain restart the time between the old
/// process's exit and the new one's start is part of what is measured.
fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One event with the client running through it.
pub fn trial(dir: &Path, c: &Cluster, event: Event) -> Outcome {
    let pw = c.options.password.clone();
    let mut s = Site::new_in(dir);
    // The "socket unit": the listening socket exists outside the proxy.
    let held = matches!(event, Event::SocketUnitRestart).then(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let base = config(&s, c, held.as_ref().map(|l| l.local_addr().unwrap()), Duration::from_secs(1));
    s.write(&base);
    let listen = s.listen();
    let fd = held.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    let mut first = spawn(&s, "first", &pw, fd);
    wait("the proxy to route", || ready(&s));

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<(bool, Duration)>>> = Arc::default();
    let conn = format!("host=127.0.0.1 port={} user=postgres password={pw} dbname=postgres connect_timeout=30", listen.port());
    let (stop2, results2) = (stop.clone(), results.clone());
    let client = rt.spawn(async move {
        while !stop2.load(Ordering::SeqCst) {
            let tick = tokio::time::sleep(Duration::from_millis(10));
            let t = Instant::now();
            let ok = match tokio_postgres::connect(&conn, NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    client.simple_query("SELECT 1").await.is_ok()
                }
                Err(_) => false,
            };
            results2.lock().unwrap().push((ok, t.elapsed()));
            tick.await;
        }
    });
    let count = || results.lock().unwrap().len();
    let before = count();
    wait("the client to run", || count() >= before + 20);

    let mut last = match event {
        Event::Reload => {
            s.write(&base.clone().health_interval(Duration::from_millis(250)));
            first.signal(Signal::Hup);
            wait("the reload", || first.log().contains("configuration reloaded"));
            None
        }
        Event::Takeover => {
            let second = spawn(&s, "second", &pw, None);
            let pid = u64::from(second.pid());
            wait("the new process to serve", || pid_serving(&s) == Some(pid) && ready(&s));
            wait("the old process to exit", || first.try_exit().is_some());
            Some(second)
        }
        Event::SocketUnitRestart => {
            first.signal(Signal::Term);
            wait("the old process to exit", || first.try_exit().is_some());
            let second = spawn(&s, "second", &pw, fd);
            wait("the new process to route", || ready(&s));
            Some(second)
        }
        Event::PlainRestart => {
            first.signal(Signal::Term);
            wait("the old process to exit", || first.try_exit().is_some());
            let second = spawn(&s, "second", &pw, None);
            wait("the new process to route", || ready(&s));
            Some(second)
        }
    };
    let at = count();
    wait("the client to run on", || count() >= at + 20);
    stop.store(true, Ordering::SeqCst);
    rt.block_on(client).unwrap();
    last.take();
    drop(first);
    let r = results.lock().unwrap();
    let during = &r[before..];
    Outcome { sessions: during.len(), failed: during.iter().filter(|(ok, _)| !ok).count(), slowest: during.iter().map(|(_, d)| *d).max().unwrap_or_default() }
}
