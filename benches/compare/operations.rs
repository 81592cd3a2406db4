//! Refused connections while the proxy is reloaded, taken over or restarted: a client opens a
//! new session (connect, `SELECT 1`, close) every 10 ms through the proxy during each event,
//! from a moment before it until the proxy serves again. Counts the sessions that failed and
//! the slowest one (a client waiting in the listening socket's queue is slow, not refused).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgfailover::localpg::{free_port, Cluster};
use tokio_postgres::NoTls;

use crate::targets::{get_json, http_get};

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

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Setup {
    dir: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Setup {
    fn write(&self, c: &Cluster, interval: &str) {
        let text = format!(
            "listen = \"{}\"\nadmin_listen = \"{}\"\nstate_dir = \"{}\"\nlog_level = \"info\"\n\
             [health]\ninterval = \"{interval}\"\ntimeout = \"500ms\"\n[failover]\nhold_timeout = \"10s\"\n[proxy]\nshutdown_grace = \"5s\"\n\
             [primary]\nname = \"pg-a\"\nport = {}\n[[standbys]]\nname = \"pg-b\"\nport = {}\n",
            self.listen,
            self.admin,
            self.dir.join("state").display(),
            c.nodes[0].port,
            c.nodes[1].port
        );
        std::fs::write(self.dir.join("proxy.toml"), text).unwrap();
    }

    fn spawn(&self, pw: &str, socket: Option<i32>) -> Proc {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("proxy.log")).unwrap();
        let mut cmd = match socket {
            None => Command::new(env!("CARGO_BIN_EXE_pgfailover")),
            Some(fd) => pgfailover::testkit::socket_activated(std::path::Path::new(env!("CARGO_BIN_EXE_pgfailover")), fd),
        };
        cmd.arg("--config").arg(self.dir.join("proxy.toml")).env("DB_PASSWORD", pw).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        Proc(cmd.spawn().expect("start pgfailover"))
    }

    fn pid_serving(&self) -> Option<u64> {
        get_json(self.admin, "/failover/status")?["config"]["pid"].as_u64()
    }

    fn ready(&self) -> bool {
        http_get(self.admin, "/ready").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    }
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn exited(p: &mut Proc) -> bool {
    p.0.try_wait().ok().flatten().is_some()
}

/// One event with the client running through it.
pub fn trial(dir: &Path, c: &Cluster, event: Event) -> Outcome {
    let pw = c.options.password.clone();
    let dir = tempfile::Builder::new().prefix("ops-").tempdir_in(dir).unwrap().keep();
    let port = || SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    // The "socket unit": the listening socket exists outside the proxy.
    let held = matches!(event, Event::SocketUnitRestart).then(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let listen = held.as_ref().map(|l| l.local_addr().unwrap()).unwrap_or_else(port);
    let s = Setup { dir, listen, admin: port() };
    s.write(c, "1s");
    let fd = held.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    let mut first = s.spawn(&pw, fd);
    wait("the proxy to route", || s.ready());

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
            s.write(c, "250ms");
            // SAFETY: a signal to the process this benchmark started, by its PID.
            unsafe { libc::kill(first.0.id() as i32, libc::SIGHUP) };
            wait("the reload", || std::fs::read_to_string(s.dir.join("proxy.log")).is_ok_and(|l| l.contains("configuration reloaded")));
            None
        }
        Event::Takeover => {
            let second = s.spawn(&pw, None);
            let pid = second.0.id() as u64;
            wait("the new process to serve", || s.pid_serving() == Some(pid) && s.ready());
            wait("the old process to exit", || exited(&mut first));
            Some(second)
        }
        Event::SocketUnitRestart => {
            // SAFETY: as above.
            unsafe { libc::kill(first.0.id() as i32, libc::SIGTERM) };
            wait("the old process to exit", || exited(&mut first));
            let second = s.spawn(&pw, fd);
            wait("the new process to route", || s.ready());
            Some(second)
        }
        Event::PlainRestart => {
            // SAFETY: as above.
            unsafe { libc::kill(first.0.id() as i32, libc::SIGTERM) };
            wait("the old process to exit", || exited(&mut first));
            let second = s.spawn(&pw, None);
            wait("the new process to route", || s.ready());
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
