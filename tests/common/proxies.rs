//! Several real `pgfailover` processes coordinated through a real etcd, as the coordination
//! tests run them: their configuration, their status, and agreement polled across them.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use super::binary::{Cluster, Process, ProxyToml, Site};
use super::etcd::Etcd;
use super::{connect, eventually, get, server_port};

pub const TOKEN: &str = "coordination-test-token";
pub const LIMIT: Duration = Duration::from_secs(40);

/// How a test's proxies are configured.
#[derive(Clone)]
pub struct Opts {
    pub endpoints: Vec<String>,
    pub lease_ttl: Duration,
    pub quorum: &'static str,
    pub hold_timeout: Duration,
    /// `failover.drain_timeout`.
    pub drain_timeout: Duration,
}

impl Opts {
    pub fn new(etcd: &Etcd) -> Opts {
        Opts {
            endpoints: etcd.endpoints(),
            lease_ttl: Duration::from_secs(3),
            quorum: "majority",
            hold_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// One pgfailover process, as an operator runs it: a config file, its own state directory.
pub struct ProxyProc {
    /// Its name in the coordination (`[coordination] name`).
    pub name: String,
    /// Its client port.
    pub listen: SocketAddr,
    /// Its admin port.
    pub admin: SocketAddr,
    /// Killed before its site is removed (fields drop in order).
    pub process: Process,
    /// Its config file, state directory and log.
    _site: Site,
}

/// A proxy in front of `c` as an operator runs one, with a state directory on `site`: fast
/// checks (250 ms, 500 ms, 3 failures), automatic promotion, a 500 ms shutdown grace.
pub fn operated(c: &Cluster, site: &Site) -> ProxyToml {
    ProxyToml::new()
        .cluster(c, c.nodes.len())
        .admin_token(TOKEN)
        .state_dir(&site.state())
        .log_level("info")
        .health_interval(Duration::from_millis(250))
        .health_timeout(Duration::from_millis(500))
        .failure_threshold(3)
        .promote("auto")
        .shutdown_grace(Duration::from_millis(500))
}

impl ProxyProc {
    /// Starts proxy `name` in front of `c`; `ports` overrides a backend's port (a relay).
    pub async fn start(c: &Cluster, name: &str, o: &Opts, ports: &[(usize, u16)]) -> ProxyProc {
        let mut site = Site::new();
        let mut cfg = operated(c, &site)
            .hold_timeout(o.hold_timeout)
            .quorum(o.quorum)
            .coordination(&o.endpoints, "main", name)
            .lease_ttl(o.lease_ttl)
            .drain_timeout(o.drain_timeout);
        for &(i, port) in ports {
            cfg = cfg.backend_port(i, port);
        }
        site.write(&cfg);
        let mut process = site.start(name);
        // Readiness depends on the others here: wait only until the admin port serves.
        process.live(LIMIT).await;
        ProxyProc { name: name.to_string(), listen: site.listen(), admin: site.admin(), process, _site: site }
    }

    pub async fn status(&self) -> Value {
        get(self.admin, "/failover/status").await.json()
    }

    pub async fn events(&self, kind: &str) -> Vec<Value> {
        let h = get(self.admin, "/failover/history?limit=1000").await.json();
        h["events"].as_array().unwrap().iter().filter(|e| e["kind"] == kind).cloned().collect()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Freezes the process (SIGSTOP): its sockets stay open, nothing answers.
    pub fn pause(&mut self) {
        self.process.pause();
    }

    pub fn resume(&mut self) {
        self.process.resume();
    }
}

pub fn routed(s: &Value) -> Option<&str> {
    s["currentPrimary"].as_str()
}

pub fn leads(s: &Value) -> bool {
    s["coordination"]["isLeader"] == true
}

pub fn leader(s: &Value) -> Option<&str> {
    s["coordination"]["leader"].as_str()
}

pub fn backend_status<'a>(s: &'a Value, name: &str) -> &'a Value {
    std::iter::once(&s["primary"]).chain(s["standbys"].as_array().unwrap()).find(|b| b["name"] == name).expect("backend in status")
}

/// Polls every proxy's status until `cond` holds for all of them at once; returns them.
pub async fn all(ps: &[&ProxyProc], what: &str, cond: impl Fn(&ProxyProc, &Value) -> bool) -> Vec<Value> {
    eventually(LIMIT, what, || async {
        let mut out = Vec::new();
        for p in ps {
            let s = p.status().await;
            if !cond(p, &s) {
                return None;
            }
            out.push(s);
        }
        Some(out)
    })
    .await
}

/// Every proxy knows the same leader, which is one of them and says so, `primary` is
/// recorded, and every proxy routes to it. Returns the leader's name.
pub async fn agreed(ps: &[&ProxyProc], primary: &str) -> String {
    let what = format!("every proxy follows one leader and routes to the recorded {primary}");
    let st = eventually(LIMIT, &what, || async {
        let mut st = Vec::new();
        for p in ps {
            let s = p.status().await;
            let ok = routed(&s) == Some(primary) && s["coordination"]["etcdReachable"] == true && s["coordination"]["recordedPrimary"]["name"] == primary;
            if !ok || leader(&s).is_none() || leads(&s) != (leader(&s) == Some(p.name.as_str())) {
                return None;
            }
            st.push(s);
        }
        let l = leader(&st[0]).map(str::to_string);
        st.iter().all(|s| leader(s).map(str::to_string) == l).then_some(st)
    })
    .await;
    assert_eq!(st.iter().filter(|s| leads(s)).count(), 1, "exactly one proxy leads: {st:#?}");
    leader(&st[0]).unwrap().to_string()
}

/// Promotions PostgreSQL itself logged, across every node.
pub fn promotions(c: &Cluster) -> usize {
    (0..c.nodes.len()).map(|i| c.log_text(i).matches("received promote request").count()).sum()
}

pub fn in_recovery(c: &Cluster, i: usize) -> bool {
    c.psql(i, "select pg_is_in_recovery()").unwrap() == "t"
}

pub fn index_of(name: &str) -> usize {
    (name.as_bytes()[3] - b'a') as usize
}

pub async fn session_port(addr: SocketAddr, pw: &str) -> i32 {
    server_port(&connect(addr, pw).await).await
}
