//! The things being compared: PostgreSQL directly, pgfailover, HAProxy (TCP mode) and
//! PgBouncer (session mode), each a separate process whose CPU time can be read.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgfailover::localpg::free_port;

pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
    /// The process doing the proxying (None for direct).
    pub pid: Option<u32>,
    /// pgfailover's admin port.
    pub admin: Option<SocketAddr>,
    child: Option<Child>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        // PgBouncer runs under runuser; its own PID comes from its pidfile.
        if self.child.is_none() {
            if let Some(pid) = self.pid {
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
    }
}

pub fn direct(port: u16) -> Target {
    direct_named(port, "direct")
}

/// A direct connection under another name (e.g. to the standby).
pub fn direct_named(port: u16, name: &str) -> Target {
    Target { name: name.into(), addr: SocketAddr::from(([127, 0, 0, 1], port)), pid: None, admin: None, child: None }
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
    pgfailover_with(dir, primary, standby, password, interval, timeout, threads, false, "")
}

/// pgfailover coordinated with others through etcd (`[coordination]`, this proxy's `name`).
pub fn pgfailover_coordinated(dir: &Path, primary: u16, standby: u16, password: &str, endpoints: &[String], name: &str, cluster: &str) -> Target {
    let list = endpoints.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", ");
    let extra = format!("[coordination]\netcd_endpoints = [{list}]\ncluster = \"{cluster}\"\nname = \"{name}\"\n");
    pgfailover_with(dir, primary, Some(standby), password, "250ms", "500ms", None, false, &extra)
}

/// pgfailover's read-only port in front of `standby` (the target's address is `listen_ro`).
pub fn pgfailover_read(dir: &Path, primary: u16, standby: u16, password: &str) -> Target {
    pgfailover_with(dir, primary, Some(standby), password, "1s", "1s", None, true, "")
}

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
    extra: &str,
) -> Target {
    let main = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let ro = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let addr = if read { ro } else { main };
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let cfg = dir.join(format!("pgfailover-{}.toml", addr.port()));
    fs::write(
        &cfg,
        format!(
            "listen = \"{main}\"\n{}admin_listen = \"{admin}\"\nlog_level = \"info\"\n[health]\ninterval = \"{interval}\"\ntimeout = \"{timeout}\"\n\
             {extra}[primary]\nname = \"pg-a\"\nport = {primary}\n{}",
            if read { format!("listen_ro = \"{ro}\"\n") } else { String::new() },
            standby.map(|p| format!("[[standbys]]\nname = \"pg-b\"\nport = {p}\n")).unwrap_or_default()
        ),
    )
    .unwrap();
    let log = fs::File::create(dir.join(format!("pgfailover-{}.log", addr.port()))).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgfailover"));
    if let Some(n) = threads {
        cmd.env("PGFAILOVER_WORKER_THREADS", n.to_string());
    }
    let child =
        cmd.arg("--config").arg(&cfg).env("DB_PASSWORD", password).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("start pgfailover");
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = if read { "/ready/ro" } else { "/ready" };
    loop {
        if http_get(admin, ready).is_some_and(|r| r.starts_with("HTTP/1.1 200") && (!read || r.contains("\"pg-b\""))) {
            break;
        }
        assert!(Instant::now() < deadline, "pgfailover never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    Target {
        name: match (threads, read) {
            (_, true) => "pgfailover-ro".into(),
            (Some(n), _) => format!("pgfailover-t{n}"),
            (None, _) => "pgfailover".into(),
        },
        addr,
        pid: Some(child.id()),
        admin: Some(admin),
        child: Some(child),
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
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
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
    Some(Target { name: name.into(), addr, pid: Some(child.id()), admin: None, child: Some(child) })
}

/// PgBouncer in session mode, run as the `postgres` user when we are root (it refuses root).
pub fn pgbouncer(dir: &Path, backend: u16, password: &str) -> Option<Target> {
    let exe = which("pgbouncer")?;
    let port = free_port().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let pidfile = dir.join(format!("pgbouncer-{port}.pid"));
    let ini = dir.join(format!("pgbouncer-{port}.ini"));
    fs::write(
        &ini,
        format!(
            "[databases]\n* = host=127.0.0.1 port={backend} user=postgres password={password}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = any\npool_mode = session\n\
             max_client_conn = 12000\ndefault_pool_size = 64\nclient_login_timeout = 0\nlogfile = {}\npidfile = {}\nunix_socket_dir =\n",
            dir.join(format!("pgbouncer-{port}.log")).display(),
            pidfile.display()
        ),
    )
    .unwrap();
    let root = unsafe { libc::geteuid() } == 0;
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
    Some(Target { name: "pgbouncer".into(), addr, pid: Some(pid), admin: None, child: None })
}

/// User + system CPU seconds of a process so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let rest = &text[text.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
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
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
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
    Some(Target { name: format!("{kind}-floor"), addr, pid: Some(child.id()), admin: None, child: Some(child) })
}

/// pgfailover's failover count from `/failover/status` (a failover during the run would mean
/// its numbers were measured against a different server).
pub fn failovers(admin: SocketAddr) -> Option<u64> {
    get_json(admin, "/failover/status")?.get("failoverCount")?.as_u64()
}

/// The newest history event, as JSON text.
pub fn last_event(admin: SocketAddr) -> Option<String> {
    Some(get_json(admin, "/failover/history?limit=3")?.get("events")?.to_string())
}

pub fn get_json(admin: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let r = http_get(admin, path)?;
    serde_json::from_str(&r[r.find("\r\n\r\n")? + 4..]).ok()
}

/// The whole HTTP/1.1 response to `GET path` on pgfailover's admin port.
pub fn http_get(admin: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    Some(r)
}
