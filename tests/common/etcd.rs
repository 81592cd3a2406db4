//! A real etcd for the coordination tests (Debian's `etcd-server`): one or three members on
//! free loopback ports with temporary data directories; members can be killed and started
//! again; everything stops and is removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pgfailover::localpg::free_port;

use super::eventually;

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
}

impl Etcd {
    /// Starts `n` members and waits until the cluster answers.
    pub async fn start(n: usize) -> Etcd {
        let dir = tempfile::Builder::new().prefix("pgfailover-etcd-").tempdir().expect("etcd temp dir");
        let members: Vec<Member> =
            (0..n).map(|i| Member { name: format!("etcd{i}"), client_port: free_port().unwrap(), peer_port: free_port().unwrap(), child: None }).collect();
        let initial_cluster = members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port)).collect::<Vec<_>>().join(",");
        let token = format!("pgfailover-test-{}-{}", std::process::id(), members[0].client_port);
        let mut e = Etcd { members, dir, initial_cluster, token };
        for i in 0..n {
            e.spawn(i);
        }
        e.wait_ready(Duration::from_secs(30)).await;
        e
    }

    fn data(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(i)).expect("etcd log file");
        let child = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(self.data(i))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", "new", "--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log)
            .spawn()
            .expect("start etcd (Debian: apt-get install etcd-server)");
        self.members[i].child = Some(child);
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("http://127.0.0.1:{}", m.client_port)).collect()
    }

    /// Waits until a linearizable read succeeds (a quorum is up).
    pub async fn wait_ready(&self, limit: Duration) {
        let endpoints = self.endpoints();
        eventually(limit, "etcd answers", || {
            let endpoints = endpoints.clone();
            async move {
                let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_millis(500)).with_connect_timeout(Duration::from_millis(500));
                let mut c = etcd_client::Client::connect(endpoints, Some(opts)).await.ok()?;
                c.get("/ready-probe", None).await.ok().map(|_| ())
            }
        })
        .await;
    }

    /// SIGKILLs member `i` (a crash) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A client for the test's own reads of the keys.
    pub async fn client(&self) -> etcd_client::Client {
        let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(2));
        etcd_client::Client::connect(self.endpoints(), Some(opts)).await.expect("etcd client")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
