//! Real local PostgreSQL clusters: a primary and N streaming standbys on free loopback
//! ports, in a temporary directory that is stopped and deleted on drop (also when a test
//! panics). In the release binary because `pgfailover demo` runs one; the tests and
//! benchmarks build theirs with it too, and only they (feature `testkit`) get the faults of
//! `localpg/faults.rs` (stop, restart, crash, freeze, promote).
//!
//! Nodes run as the `postgres` OS user when this process is root (`initdb` refuses root).
//! Clients reach the nodes over TCP with SCRAM (`password`), the harness itself over the
//! Unix socket with trust. The API is blocking: call it from `spawn_blocking` when a
//! runtime needs to keep running meanwhile.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

#[cfg(feature = "testkit")]
mod faults;
mod procs;

pub use procs::Pid;
use procs::Signal;

/// What went wrong while running a local cluster.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH, via pg_config \
         or under /usr/lib/postgresql/*/bin; install them, e.g. `apt-get install postgresql` \
         on Debian/Ubuntu or `brew install postgresql@15` on macOS"
    )]
    NoBinaries,
    #[error("running as root needs a `postgres` OS user to own the clusters (initdb refuses root): {0}")]
    NoPostgresUser(String),
    #[error("{cmd} failed ({status}): {output}")]
    Command { cmd: String, status: String, output: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out: {0}")]
    Timeout(String),
}

/// How to build a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub standbys: usize,
    /// Serve TLS with a self-signed certificate made for the cluster.
    pub ssl: bool,
    /// Password of the `postgres` role for TCP (SCRAM) connections.
    pub password: String,
    pub max_connections: u32,
    /// `fsync = off`: throw-away clusters restart much faster on this shared disk.
    pub fsync: bool,
    /// `synchronous_standby_names = 'ANY 1 (*)'`: a commit is acknowledged once a standby
    /// has it (on every node, so it holds after a failover too).
    pub synchronous: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions { standbys: 1, ssl: false, password: "pgfailover-test".into(), max_connections: 300, fsync: false, synchronous: false }
    }
}

/// One server of a cluster.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub port: u16,
    pub data: PathBuf,
    log: PathBuf,
}

/// A running primary + standbys; everything is stopped and removed on drop.
pub struct Cluster {
    /// Kept for its Drop: removes every file of the cluster.
    dir: tempfile::TempDir,
    bin: PathBuf,
    sock: PathBuf,
    /// Run commands through `runuser -u postgres --` (this process is root).
    as_postgres: bool,
    pub options: ClusterOptions,
    pub nodes: Vec<Node>,
}

/// Finds the PostgreSQL server binaries: PATH, then `pg_config --bindir`, then the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Result<PathBuf, LocalPgError> {
    let has = |d: &Path| ["initdb", "pg_ctl", "pg_basebackup", "postgres"].iter().all(|t| d.join(t).is_file());
    // A PATH entry may hold only symlinks to some tools: use the directory initdb really lives in.
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if let Some(real) = fs::canonicalize(d.join("initdb")).ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
                if has(&real) {
                    return Ok(real);
                }
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has(&d) {
            return Ok(d);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let d = e.path().join("bin");
            has(&d).then_some((v, d))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, d)| d).ok_or(LocalPgError::NoBinaries)
}

/// A loopback port nobody uses right now, below the kernel's ephemeral range: a server
/// restarted on it cannot find it taken by some outgoing connection's local port (which
/// happens with ports from the ephemeral range while the server is down).
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse::<u32>().ok()))
        .unwrap_or(32768);
    let (start, span) = (low.saturating_sub(12000).max(1024), low.saturating_sub(1024).clamp(1, 12000));
    // Spread concurrent test processes over the range.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let seed = std::process::id().wrapping_mul(7919) ^ nanos ^ NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729);
    for k in 0..span {
        let port = (start + (seed.wrapping_add(k * 7)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    /// initdb + start the primary, base-backup and start each standby, and wait until every
    /// standby streams.
    pub fn start(options: ClusterOptions) -> Result<Cluster, LocalPgError> {
        let bin = find_bindir()?;
        let as_postgres = procs::is_root();
        let dir = tempfile::Builder::new().prefix("pgfailover-").tempdir()?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let sock = dir.path().join("sock");
        fs::create_dir(&sock)?;
        let mut cluster = Cluster { dir, bin, sock, as_postgres, options, nodes: Vec::new() };
        if as_postgres {
            procs::chown_to_postgres(cluster.dir.path()).map_err(LocalPgError::NoPostgresUser)?;
            procs::chown_to_postgres(&cluster.sock).map_err(LocalPgError::NoPostgresUser)?;
        }
        cluster.init_primary()?;
        for i in 0..cluster.options.standbys {
            cluster.add_standby(i)?;
        }
        cluster.wait_streaming(cluster.options.standbys, Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn init_primary(&mut self) -> Result<(), LocalPgError> {
        let data = self.node_dir("node0");
        let pwfile = self.dir.path().join("pwfile");
        self.write_owned(&pwfile, &format!("{}\n", self.options.password))?;
        self.run(self.tool("initdb").args([
            "-D",
            &data.to_string_lossy(),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
            &format!("--pwfile={}", pwfile.display()),
        ]))?;
        let port = free_port()?;
        let mut conf = format!(
            "\n# pgfailover localpg\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             max_connections = {}\nfsync = {}\nwal_level = replica\nmax_wal_senders = 16\n\
             max_replication_slots = 16\nhot_standby = on\nwal_keep_size = '256MB'\n\
             shared_buffers = '64MB'\nwal_receiver_status_interval = '1s'\n\
             password_encryption = 'scram-sha-256'\nwal_log_hints = on\nport = {port}\n",
            self.sock.display(),
            self.options.max_connections,
            if self.options.fsync { "on" } else { "off" },
        );
        if self.options.synchronous {
            conf.push_str("synchronous_standby_names = 'ANY 1 (*)'\n");
        }
        if self.options.ssl {
            self.make_certificate(&data)?;
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        append(&data.join("postgresql.conf"), &conf)?;
        let node = Node { name: "node0".into(), port, log: self.dir.path().join("node0.log"), data };
        self.nodes.push(node);
        self.start_node(0)
    }

    fn add_standby(&mut self, i: usize) -> Result<(), LocalPgError> {
        let name = format!("node{}", i + 1);
        let data = self.node_dir(&name);
        // Over TCP with the password, so the standby's primary_conninfo is one that works
        // when re-pointed at another node's port.
        let source = format!("host=127.0.0.1 port={} user=postgres password={}", self.nodes[0].port, self.options.password);
        self.run(self.tool("pg_basebackup").args([
            "-D",
            &data.to_string_lossy(),
            "-d",
            &source,
            "-R",
            "-X",
            "stream",
            "-C",
            "-S",
            &format!("slot_{}", i + 1),
            "--checkpoint=fast",
            "--no-sync",
        ]))?;
        let port = free_port()?;
        append(&data.join("postgresql.conf"), &format!("port = {port}\n"))?;
        let node = Node { name: name.clone(), port, log: self.dir.path().join(format!("{name}.log")), data };
        self.nodes.push(node);
        self.start_node(self.nodes.len() - 1)
    }

    fn make_certificate(&self, data: &Path) -> Result<(), LocalPgError> {
        let out = Command::new("openssl")
            .args(["req", "-new", "-x509", "-days", "365", "-nodes", "-subj", "/CN=localhost", "-newkey", "rsa:2048"])
            .arg("-keyout")
            .arg(data.join("server.key"))
            .arg("-out")
            .arg(data.join("server.crt"))
            .output()?;
        check("openssl req", out)?;
        fs::set_permissions(data.join("server.key"), fs::Permissions::from_mode(0o600))?;
        if self.as_postgres {
            for f in ["server.key", "server.crt"] {
                procs::chown_to_postgres(&data.join(f)).map_err(LocalPgError::NoPostgresUser)?;
            }
        }
        Ok(())
    }

    fn write_owned(&self, path: &Path, text: &str) -> Result<(), LocalPgError> {
        fs::write(path, text)?;
        if self.as_postgres {
            procs::chown_to_postgres(path).map_err(LocalPgError::NoPostgresUser)?;
        }
        Ok(())
    }

    /// A server tool, run as the `postgres` user when we are root.
    fn tool(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        c.env_remove("PGHOST").env_remove("PGPORT").env("LC_ALL", "C");
        c
    }

    fn run(&self, cmd: &mut Command) -> Result<Output, LocalPgError> {
        let out = cmd.stdin(std::process::Stdio::null()).output()?;
        check(&format!("{:?}", cmd.get_args().collect::<Vec<_>>()), out)
    }

    /// Starts node `i` (again); moves it to another free port if its port was taken.
    pub fn start_node(&mut self, i: usize) -> Result<(), LocalPgError> {
        for attempt in 0..4 {
            let n = &self.nodes[i];
            let r = self.run(self.tool("pg_ctl").args(["-D", &n.data.to_string_lossy(), "-l", &n.log.to_string_lossy(), "-w", "-t", "60", "start"]));
            match r {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 3 && self.log_tail(i).contains("could not bind") => {
                    let port = free_port()?;
                    append(&self.nodes[i].data.join("postgresql.conf"), &format!("port = {port}\n"))?;
                    self.nodes[i].port = port;
                    tracing::debug!(error = %e, port, "port taken; retrying on another");
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// A node's whole server log.
    pub fn log_text(&self, i: usize) -> String {
        fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// The last lines of a node's server log, for error messages.
    pub fn log_tail(&self, i: usize) -> String {
        let text = fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Crash-stops node `i` like a power cut (SIGQUIT = immediate shutdown) and returns once
    /// the postmaster is gone.
    pub fn kill(&self, i: usize) -> Result<(), LocalPgError> {
        self.signal_and_wait(i, Signal::QUIT, Duration::from_secs(10))
    }

    /// Sends `sig` to node `i`'s postmaster (resumed first if hung) and waits until it is gone.
    fn signal_and_wait(&self, i: usize, sig: Signal, limit: Duration) -> Result<(), LocalPgError> {
        let Some(pm) = self.postmaster(i) else { return Ok(()) };
        procs::resume_tree(pm);
        procs::signal(pm, sig);
        procs::wait_gone(pm, limit).then_some(()).ok_or_else(|| LocalPgError::Timeout(format!("{} did not stop", self.nodes[i].name)))
    }

    /// The postmaster's PID, when node `i` runs.
    pub fn postmaster(&self, i: usize) -> Option<Pid> {
        let text = fs::read_to_string(self.nodes[i].data.join("postmaster.pid")).ok()?;
        let pid: Pid = text.lines().next()?.trim().parse().ok()?;
        procs::alive(pid).then_some(pid)
    }

    /// Runs SQL on node `i` through the Unix socket (trust) and returns psql's unaligned output.
    pub fn psql(&self, i: usize, sql: &str) -> Result<String, LocalPgError> {
        let out = self.run(&mut self.psql_command(i, sql))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn psql_command(&self, i: usize, sql: &str) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "postgres"])
            .arg("-h")
            .arg(&self.sock)
            .arg("-p")
            .arg(self.nodes[i].port.to_string())
            .arg("-c")
            .arg(sql)
            .stdin(std::process::Stdio::null());
        c
    }

    /// Takes over a data directory made outside the harness (e.g. by a deployment script's
    /// `pg_basebackup`): gives it a free port, starts it, and stops it with the cluster.
    /// Returns its index.
    pub fn start_external(&mut self, name: &str, data: PathBuf) -> Result<usize, LocalPgError> {
        let port = free_port()?;
        append(&data.join("postgresql.conf"), &format!("\nport = {port}\n"))?;
        let log = self.dir.path().join(format!("{name}.log"));
        self.nodes.push(Node { name: name.to_string(), port, data, log });
        let i = self.nodes.len() - 1;
        self.start_node(i)?;
        Ok(i)
    }

    /// The directory of the server binaries (for tests that run `pg_rewind` and friends).
    pub fn bindir(&self) -> &Path {
        &self.bin
    }

    /// Runs a server tool as the clusters' owner (the `postgres` OS user when we are root).
    /// Returns what it printed (stdout, then stderr).
    pub fn run_tool(&self, name: &str, args: &[&str]) -> Result<String, LocalPgError> {
        let out = self.run(self.tool(name).args(args))?;
        Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).trim().to_string())
    }

    /// Waits until the primary (node 0) has `n` streaming standbys.
    pub fn wait_streaming(&self, n: usize, limit: Duration) -> Result<(), LocalPgError> {
        self.wait_streaming_from(0, n, limit)
    }

    /// Waits until node `p` has `n` streaming standbys.
    pub fn wait_streaming_from(&self, p: usize, n: usize, limit: Duration) -> Result<(), LocalPgError> {
        let sql = "select count(*) from pg_stat_replication where state = 'streaming'";
        let deadline = Instant::now() + limit;
        loop {
            if self.psql(p, sql).ok().and_then(|s| s.parse::<usize>().ok()) >= Some(n) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LocalPgError::Timeout(format!("{n} standbys did not start streaming")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A libpq/tokio-postgres connection string for node `i` over TCP with the password.
    pub fn conninfo(&self, i: usize) -> String {
        format!("host=127.0.0.1 port={} user=postgres password={} dbname=postgres", self.nodes[i].port, self.options.password)
    }

    /// The directory everything lives in (removed on drop).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.kill(i);
        }
    }
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    fs::OpenOptions::new().append(true).open(path)?.write_all(text.as_bytes())
}

fn check(cmd: &str, out: Output) -> Result<Output, LocalPgError> {
    if out.status.success() {
        return Ok(out);
    }
    let mut text = String::from_utf8_lossy(&out.stderr).to_string();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    Err(LocalPgError::Command { cmd: cmd.to_string(), status: out.status.to_string(), output: text.trim().to_string() })
}
