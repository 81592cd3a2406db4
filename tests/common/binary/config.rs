//! `proxy.toml` from a typed builder. The listening addresses are chosen once, when the
//! builder is made, so that a file rewritten from a changed copy (a reload) keeps them.
//! What has no typed setter is set with [`ProxyToml::set`].

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

use super::{free_addr, Cluster};

/// One backend: the first is `[primary]`, the others `[[standbys]]`.
#[derive(Clone, Debug)]
struct Backend {
    /// Its name in the status, the history and the metrics.
    name: String,
    /// Where it listens on loopback (or a relay in front of it does).
    port: u16,
    /// In the file; without it the password comes from `DB_PASSWORD` or nowhere.
    password: Option<String>,
}

impl Backend {
    fn table(&self) -> Table {
        let mut t = Table::new();
        t.insert("name".into(), self.name.clone().into());
        t.insert("host".into(), "127.0.0.1".into());
        t.insert("port".into(), i64::from(self.port).into());
        if let Some(p) = &self.password {
            t.insert("password".into(), p.clone().into());
        }
        t
    }
}

/// The configuration file of one pgfailover process.
#[derive(Clone, Debug)]
pub struct ProxyToml {
    /// The client port (`listen`); kept across rewrites.
    listen: SocketAddr,
    /// The admin port (`admin_listen`), where the harness polls readiness; kept across rewrites.
    admin: SocketAddr,
    /// The read-only port (`listen_ro`), when the process has one.
    listen_ro: Option<SocketAddr>,
    /// `[primary]` then `[[standbys]]`, in order.
    backends: Vec<Backend>,
    /// Every other key, by table (top-level keys directly, `[section]`s as inner tables).
    keys: Table,
}

impl ProxyToml {
    /// No backends yet; client and admin ports on free loopback ports.
    pub fn new() -> ProxyToml {
        ProxyToml { listen: free_addr(), admin: free_addr(), listen_ro: None, backends: Vec::new(), keys: Table::new() }
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    pub fn listen_ro(&self) -> Option<SocketAddr> {
        self.listen_ro
    }

    /// Serves clients on `addr` (e.g. a socket held outside the process, as by systemd).
    pub fn listen_on(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Opens the read-only port, on a free loopback port.
    pub fn with_listen_ro(mut self) -> Self {
        self.listen_ro = Some(free_addr());
        self
    }

    /// Nodes `0..n` of `c` as `pg-a`, `pg-b`, ... with the cluster's password; node 0 first.
    pub fn cluster(mut self, c: &Cluster, n: usize) -> Self {
        for (i, node) in c.nodes.iter().take(n).enumerate() {
            let name = format!("pg-{}", (b'a' + i as u8) as char);
            self.backends.push(Backend { name, port: node.port, password: Some(c.options.password.clone()) });
        }
        self
    }

    /// One more backend (the first one added is the primary); no password in the file.
    pub fn backend(mut self, name: &str, port: u16) -> Self {
        self.backends.push(Backend { name: name.into(), port, password: None });
        self
    }

    /// Points backend `i` at `port` instead (a relay in front of it).
    pub fn backend_port(mut self, i: usize, port: u16) -> Self {
        self.backends[i].port = port;
        self
    }

    pub fn admin_token(self, token: &str) -> Self {
        self.set("", "admin_token", token)
    }

    pub fn state_dir(self, dir: &Path) -> Self {
        self.set("", "state_dir", dir.to_str().expect("a UTF-8 path"))
    }

    pub fn log_level(self, level: &str) -> Self {
        self.set("", "log_level", level)
    }

    /// `[health] interval`: a check of every backend this often.
    pub fn health_interval(self, d: Duration) -> Self {
        self.set("health", "interval", duration(d))
    }

    /// `[health] timeout`: how long one check may take.
    pub fn health_timeout(self, d: Duration) -> Self {
        self.set("health", "timeout", duration(d))
    }

    pub fn failure_threshold(self, n: u32) -> Self {
        self.set("health", "failure_threshold", i64::from(n))
    }

    /// `[failover] promote`: "auto" or "never".
    pub fn promote(self, mode: &str) -> Self {
        self.set("failover", "promote", mode)
    }

    pub fn hold_timeout(self, d: Duration) -> Self {
        self.set("failover", "hold_timeout", duration(d))
    }

    /// `[failover] drain_timeout`: how long a switchover waits for open transactions.
    pub fn drain_timeout(self, d: Duration) -> Self {
        self.set("failover", "drain_timeout", duration(d))
    }

    /// `[failover] quorum`: "majority", "any" or a number.
    pub fn quorum(self, q: &str) -> Self {
        self.set("failover", "quorum", q)
    }

    pub fn shutdown_grace(self, d: Duration) -> Self {
        self.set("proxy", "shutdown_grace", duration(d))
    }

    pub fn shutdown_delay(self, d: Duration) -> Self {
        self.set("proxy", "shutdown_delay", duration(d))
    }

    /// `[coordination]` through etcd at `endpoints`, as proxy `name` of `cluster`.
    pub fn coordination(self, endpoints: &[String], cluster: &str, name: &str) -> Self {
        let list: Vec<Value> = endpoints.iter().map(|e| Value::from(e.as_str())).collect();
        self.set("coordination", "etcd_endpoints", list).set("coordination", "cluster", cluster).set("coordination", "name", name)
    }

    pub fn lease_ttl(self, d: Duration) -> Self {
        self.set("coordination", "lease_ttl", duration(d))
    }

    /// Any key: `table` "" for the top level, else the `[table]` it goes in.
    pub fn set(mut self, table: &str, key: &str, value: impl Into<Value>) -> Self {
        let keys = if table.is_empty() {
            &mut self.keys
        } else {
            match self.keys.entry(table).or_insert_with(|| Value::Table(Table::new())) {
                Value::Table(t) => t,
                other => panic!("{table} is set as a key ({other}), not a table"),
            }
        };
        keys.insert(key.into(), value.into());
        self
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut doc = self.keys.clone();
        doc.insert("listen".into(), self.listen.to_string().into());
        doc.insert("admin_listen".into(), self.admin.to_string().into());
        if let Some(ro) = self.listen_ro {
            doc.insert("listen_ro".into(), ro.to_string().into());
        }
        if let Some((primary, standbys)) = self.backends.split_first() {
            doc.insert("primary".into(), primary.table().into());
            if !standbys.is_empty() {
                doc.insert("standbys".into(), standbys.iter().map(|b| Value::Table(b.table())).collect::<Vec<_>>().into());
            }
        }
        toml::to_string(&doc).expect("a TOML table renders")
    }
}

/// As an operator writes it: "250ms", "2s".
fn duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else {
        humantime::format_duration(d).to_string()
    }
}
