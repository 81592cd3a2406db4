//! A throw-away etcd (Debian's `etcd-server`): one or more members on free loopback ports
//! with temporary data directories. Members can be killed (SIGKILL) and started again;
//! everything stops and is removed on drop. Blocking calls: run them off an async runtime's
//! workers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::localpg::free_port;

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

pub struct Etcd {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    initial_cluster: String,
    token: String,
    /// More flags for every member (e.g. `--auth-token-ttl`).
    extra: Vec<String>,
}

impl Etcd {
    /// Starts `n` members and waits (up to 30 s) until every one reports itself healthy.
    pub fn start(n: usize) -> std::io::Result<Etcd> {
        Etcd::start_with(n, &[])
    }

    /// As [`Etcd::start`], each member with the flags `extra` besides.
    pub fn start_with(n: usize, extra: &[&str]) -> std::io::Result<Etcd> {
        let dir = tempfile::Builder::new().prefix("pgfailover-etcd-").tempdir()?;
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member { name: format!("etcd{i}"), client_port: free_port()?, peer_port: free_port()?, child: None });
        }
        let initial_cluster = members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port)).collect::<Vec<_>>().join(",");
        let token = format!("pgfailover-{}-{}", std::process::id(), members[0].client_port);
        let mut e = Etcd { members, dir, initial_cluster, token, extra: extra.iter().map(|s| s.to_string()).collect() };
        for i in 0..n {
            e.spawn(i)?;
        }
        e.wait_ready(Duration::from_secs(30))?;
        Ok(e)
    }

    fn spawn(&mut self, i: usize) -> std::io::Result<()> {
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(i))?;
        let child = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(self.dir.path().join(&m.name))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", "new", "--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("start etcd (Debian: apt-get install etcd-server): {e}")))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.members[i].name))
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("http://127.0.0.1:{}", m.client_port)).collect()
    }

    /// Waits until every running member answers `GET /health` with a healthy cluster (a
    /// leader and a quorum).
    pub fn wait_ready(&self, limit: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + limit;
        let running: Vec<u16> = self.members.iter().filter(|m| m.child.is_some()).map(|m| m.client_port).collect();
        loop {
            if running.iter().all(|p| healthy(*p)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("etcd not healthy within {limit:?}: {}", self.log_tail(0))));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs member `i` (a crash) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) -> std::io::Result<()> {
        self.kill(i);
        self.spawn(i)
    }

    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// `GET /health` on a member's client port says `"health":"true"`.
fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.contains("\"health\":\"true\"")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
