//! The things being compared: PostgreSQL directly, pgfailover, HAProxy (TCP mode) and
//! PgBouncer (session mode), each a separate process whose CPU time can be read.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::binary::{free_addr, Launch, Process, ProxyToml, Site};

pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
    /// The process doing the proxying (None for direct).
    pub pid: Option<u32>,
    /// pgfailover's admin port.
    pub admin: Option<SocketAddr>,
    child: Option<Child>,
    /// pgfailover, started by the test harness (killed and reaped when dropped), and the
    /// directory of its config and log (removed after it).
    pgfailover: Option<(Process, Site)>,
}

impl Target {
    /// What pgfailover logged so far (nothing for the others).
    pub fn log(&self) -> String {
        self.pgfailover.as_ref().map(|(p, _)| p.log()).unwrap_or_default()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        // PgBouncer runs under runuser; its own PID comes from its pidfile.
        if self.child.is_none() && self.pgfailover.is_none() {
            if let Some(pid) = self.pid {
                if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
            }
        }
    }
}

pub fn direct(port: u16) -> Target {
    direct_named(port, "direct")
}

/// A direct connection under another name (e.g. to the standby).
pub fn direct_named(port: u16, name: &str) -> Target {
    Target { name: name.into(), addr: SocketAddr::from(([127, 0, 0, 1], port)), pid: None, admin: None, child: None, pgfailover: None }
}

fn wait_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// pgfailover (release build) in front of `primary` (+ `standby`), as its own process.
pub fn pgfailover(dir: &Path, primary: u16, standby: Option<u16>, password: &str, interval: &str, timeout: &str) -> Target {
    pgfailover_threads(dir, primary, standby, password, interval, timeout, None)
}

/// pgfailover with `proxy.worker_threads` set (None: the default).
pub fn pgfailover_threads(dir: &Path, primary: u16, standby: Option<u16>, password: &str, interval: &str, timeout: &str, threads: Option<usize>) -> Target {
    pgfailover_with(dir, primary, standby, password, interval, timeout, threads, false, None, |c| c)
}

/// Another build of pgfailover (`program`, e.g. the commit before a change), named `name`,
/// configured as [`pgfailover`] configures the one under test.
pub fn pgfailover_build(dir: &Path, primary: u16, standby: Option<u16>, password: &str, program: &Path, name: &str) -> Target {
    let mut t = pgfailover_with(dir, primary, standby, password, "1s", "1s", None, false, Some(program), |c| c);
    t.name = name.into();
    t
}

/// pgfailover coordinated with others through etcd (`[coordination]`, this proxy's `name`).
pub fn pgfailover_coordinated(dir: &Path, primary: u16, standby: u16, password: &str, endpoints: &[String], name: &str, cluster: &str) -> Target {
    let coordinated = |c: ProxyToml| c.coordination(endpoints, cluster, name);
    pgfailover_with(dir, primary, Some(standby), password, "250ms", "500ms", None, false, None, coordinated)
}

/// pgfailover terminating the clients' TLS with `cert`/`key`, in clear to the servers (as
/// PgBouncer's `client_tls_sslmode = require` with `server_tls_sslmode = disable`).
pub fn pgfailover_terminate(dir: &Path, primary: u16, standby: Option<u16>, password: &str, cert: &Path, key: &Path) -> Target {
    let tls = |c: ProxyToml| {
        c.set("tls", "mode", "terminate").set("tls", "cert_file", cert.display().to_string()).set("tls", "key_file", key.display().to_string()).set(
            "tls",
            "server_sslmode",
            "disable",
        )
    };
    let mut t = pgfailover_with(dir, primary, standby, password, "1s", "1s", None, false, None, tls);
    t.name = "pgfailover-terminate".into();
    t
}

/// pgfailover's read-only port in front of `standby` (the target's address is `listen_ro`).
pub fn pgfailover_read(dir: &Path, primary: u16, standby: u16, password: &str) -> Target {
    pgfailover_with(dir, primary, Some(standby), password, "1s", "1s", None, true, None, |c| c)
}

/// pgfailover through the test harness: its config from [`ProxyToml`] (`extra` adds to
/// it), the password from `DB_PASSWORD`, ready once `/ready` (or `/ready/ro` naming pg-b)
/// answers 200.
#[allow(clippy::too_many_arguments)]
fn pgfailover_with(
    dir: &Path,
    primary: u16,
    standby: Option<u16>,
    password: &str,
    interval: &str,
    timeout: &str,
    threads: Option<usize>,
    read: bool,
    program: Option<&Path>,
    extra: impl FnOnce(ProxyToml) -> ProxyToml,
) -> Target {
    let duration = |d: &str| humantime::parse_duration(d).expect("a duration");
    let mut cfg = ProxyToml::new().log_level("info").health_interval(duration(interval)).health_timeout(duration(timeout)).backend("pg-a", primary);
    if let Some(p) = standby {
        cfg = cfg.backend("pg-b", p);
    }
    if read {
        cfg = cfg.with_listen_ro();
    }
    let cfg = extra(cfg);
    let mut site = Site::new_in(dir);
    site.write(&cfg);
    let mut launch: Launch = site.launch("pgfailover").env("DB_PASSWORD", password);
    if let Some(n) = threads {
        launch = launch.env("PGFAILOVER_WORKER_THREADS", n.to_string());
    }
    if let Some(program) = program {
        launch = launch.program(program);
    }
    let mut p = launch.start();
    let ready = if read { "/ready/ro" } else { "/ready" };
    p.admin_until_blocking(Duration::from_secs(20), ready, |r| r.status == 200 && (!read || r.body.contains("\"pg-b\"")));
    Target {
        name: match (threads, read) {
            (_, true) => "pgfailover-ro".into(),
            (Some(n), _) => format!("pgfailover-t{n}"),
            (None, _) => "pgfailover".into(),
        },
        addr: if read { cfg.listen_ro().expect("a read-only port") } else { cfg.listen() },
        pid: Some(p.pid()),
        admin: Some(cfg.admin()),
        child: None,
        pgfailover: Some((p, site)),
    }
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")]).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// HAProxy 2.x in TCP mode with long timeouts.
pub fn haproxy(dir: &Path, backend: u16) -> Option<Target> {
    haproxy_named(dir, backend, "haproxy")
}

/// HAProxy in front of one server, under another name (e.g. the read-only comparison).
pub fn haproxy_named(dir: &Path, backend: u16, name: &str) -> Option<Target> {
    let exe = which("haproxy")?;
    let addr = free_addr();
    let cfg = dir.join(format!("haproxy-{}.cfg", addr.port()));
    fs::write(
        &cfg,
        format!(
            "global\n  maxconn 9000\n  log stderr local0 emerg\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\
             frontend pg\n  bind {addr}\n  default_backend pg\nbackend pg\n  server primary 127.0.0.1:{backend}\n"
        ),
    )
    .unwrap();
    let child = Command::new(exe).arg("-db").arg("-f").arg(&cfg).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()?;
    wait_port(addr);
    Some(Target { name: name.into(), addr, pid: Some(child.id()), admin: None, child: Some(child), pgfailover: None })
}

/// PgBouncer in session mode, run as the `postgres` user when we are root (it refuses root).
pub fn pgbouncer(dir: &Path, backend: u16, password: &str) -> Option<Target> {
    pgbouncer_with(dir, backend, password, "", "pgbouncer")
}

/// PgBouncer terminating the clients' TLS (`client_tls_sslmode = require`) with `cert`/`key`
/// (readable by the `postgres` user), in clear to the server.
pub fn pgbouncer_tls(dir: &Path, backend: u16, password: &str, cert: &Path, key: &Path) -> Option<Target> {
    let tls = format!(
        "client_tls_sslmode = require\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\nserver_tls_sslmode = disable\n",
        cert.display(),
        key.display()
    );
    pgbouncer_with(dir, backend, password, &tls, "pgbouncer-tls")
}

fn pgbouncer_with(dir: &Path, backend: u16, password: &str, extra: &str, name: &str) -> Option<Target> {
    let exe = which("pgbouncer")?;
    let port = free_addr().port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let pidfile = dir.join(format!("pgbouncer-{port}.pid"));
    let ini = dir.join(format!("pgbouncer-{port}.ini"));
    fs::write(
        &ini,
        format!(
            "[databases]\n* = host=127.0.0.1 port={backend} user=postgres password={password}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = any\npool_mode = session\n\
             max_client_conn = 12000\ndefault_pool_size = 64\nclient_login_timeout = 0\nlogfile = {}\npidfile = {}\nunix_socket_dir =\n{extra}",
            dir.join(format!("pgbouncer-{port}.log")).display(),
            pidfile.display()
        ),
    )
    .unwrap();
    let root = rustix::process::geteuid().is_root();
    // runuser's PAM session resets the soft descriptor limit to 1024; PgBouncer must hold
    // thousands of idle clients (memory benchmark), so raise it to the hard limit.
    let script = format!("ulimit -n \"$(ulimit -Hn)\" && exec '{}' -d '{}'", exe.display(), ini.display());
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", &script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    };
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let status = cmd.status().ok()?;
    if !status.success() {
        eprintln!("pgbouncer did not start (see {})", dir.display());
        return None;
    }
    wait_port(addr);
    // The daemon may listen before it writes its pidfile.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        if let Some(pid) = fs::read_to_string(&pidfile).ok().and_then(|t| t.trim().parse().ok()) {
            break pid;
        }
        assert!(Instant::now() < deadline, "pgbouncer listens on {addr} but wrote no pidfile");
        std::thread::sleep(Duration::from_millis(20));
    };
    Some(Target { name: name.into(), addr, pid: Some(pid), admin: None, child: None, pgfailover: None })
}

/// User + system CPU seconds of a process so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let rest = &text[text.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / ticks
}

/// Resident set size in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .unwrap_or(0)
        * 1024
}

/// A reference proxy from `floors.rs` ("splice" or "sockmap") in front of `backend`, as a
/// child process of this benchmark binary. None when it cannot run here.
pub fn floor(kind: &str, backend: u16) -> Option<Target> {
    use std::io::{BufRead, BufReader};
    let addr = free_addr();
    let mut child = Command::new(std::env::current_exe().ok()?)
        .args(["floor-proxy", kind, &addr.to_string(), &format!("127.0.0.1:{backend}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take()?).read_line(&mut line);
    if line.trim() != "ready" {
        let _ = child.wait();
        return None;
    }
    Some(Target { name: format!("{kind}-floor"), addr, pid: Some(child.id()), admin: None, child: Some(child), pgfailover: None })
}

/// pgfailover's failover count from `/failover/status` (a failover during the run would mean
/// its numbers were measured against a different server).
pub fn failovers(admin: SocketAddr) -> Option<u64> {
    get_json(admin, "/failover/status")?.get("failoverCount")?.as_u64()
}

/// Every pgfailover target's failover count (None for the others), before a run.
pub fn failover_counts(all: &[Target]) -> Vec<Option<u64>> {
    all.iter().map(|p| p.admin.and_then(failovers)).collect()
}

/// After a run of `workload` against `ran`: warns, with the newest history event and the
/// end of its log, about every pgfailover that failed over meanwhile (its later figures were
/// measured against another server).
pub fn warn_failovers(all: &[Target], before: Vec<Option<u64>>, ran: &str, workload: &str) {
    for (p, before) in all.iter().zip(before) {
        let after = p.admin.and_then(failovers);
        if let (Some(before), Some(after)) = (before, after) {
            if after > before {
                println!("WARNING: {} failed over while {ran} ran {workload}: {}", p.name, p.admin.and_then(last_event).unwrap_or_default());
                let log = p.log();
                for line in log.lines().filter(|l| !l.contains("route: new sessions")).rev().take(20) {
                    println!("  log: {line}");
                }
            }
        }
    }
}

/// The newest history event, as JSON text.
pub fn last_event(admin: SocketAddr) -> Option<String> {
    Some(get_json(admin, "/failover/history?limit=3")?.get("events")?.to_string())
}

pub fn get_json(admin: SocketAddr, path: &str) -> Option<serde_json::Value> {
    crate::binary::admin::get(admin, path)?.json()
}
