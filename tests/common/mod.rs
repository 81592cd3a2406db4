//! Shared test helpers: real clusters, an in-process proxy, clients, polling with deadlines.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pgfailover::config::{BackendConfig, Config, Secret};
use pgfailover::localpg::{Cluster, ClusterOptions};
use pgfailover::metrics::Metrics;
use pgfailover::proxy::{self, DataPath};
use pgfailover::route::RouteWriter;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

pub mod binary;
pub mod certs;
pub mod etcd;
pub mod proxies;
pub mod tls_clients;
pub mod workload;

/// Starts a cluster off the async runtime's worker (it blocks for ~1.5 s).
pub async fn cluster(standbys: usize) -> Cluster {
    cluster_with(ClusterOptions { standbys, ..Default::default() }).await
}

pub async fn cluster_with(opts: ClusterOptions) -> Cluster {
    tokio::task::spawn_blocking(move || Cluster::start(opts)).await.expect("cluster task").expect("start local PostgreSQL cluster")
}

/// Backend configs for every node of the cluster: node0 = "pg-a", node1 = "pg-b", ...
pub fn backends(c: &Cluster) -> Vec<BackendConfig> {
    let base = Config::default().primary;
    c.nodes
        .iter()
        .enumerate()
        .map(|(i, n)| BackendConfig {
            name: format!("pg-{}", (b'a' + i as u8) as char),
            port: n.port,
            password: Some(Secret::new(c.options.password.clone())),
            ..base.clone()
        })
        .collect()
}

/// A data path with a route the test controls (no monitor).
pub struct TestProxy {
    pub addr: SocketAddr,
    pub route: RouteWriter,
    /// The read route (this data path serves only the main port).
    pub read_route: pgfailover::route::ReadRouteWriter,
    pub metrics: Arc<Metrics>,
    pub passive: mpsc::Receiver<pgfailover::cluster::BackendId>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
    /// The data path itself (its pause gate and session census).
    pub dp: Arc<DataPath>,
}

pub async fn data_path(backends: Vec<BackendConfig>, hold: Duration) -> TestProxy {
    data_path_with(backends, hold, |_| {}).await
}

/// As [`data_path`], with `[proxy]` settings adjusted by `tweak`.
pub async fn data_path_with(backends: Vec<BackendConfig>, hold: Duration, tweak: impl FnOnce(&mut pgfailover::config::ProxyConfig)) -> TestProxy {
    let names: Vec<String> = backends.iter().map(|b| b.name.clone()).collect();
    let metrics = Arc::new(Metrics::new(&names));
    let route = RouteWriter::new("no primary yet");
    let read_route = pgfailover::route::ReadRouteWriter::default();
    let (tx, passive) = mpsc::channel(64);
    let mut cfg = Config::default();
    cfg.proxy.shutdown_grace = Duration::from_millis(200);
    cfg.failover.hold_timeout = hold;
    tweak(&mut cfg.proxy);
    let dp = Arc::new(DataPath {
        backends: backends.into(),
        route: route.subscribe(),
        config: pgfailover::live::LiveWriter::new(pgfailover::live::Loaded::now(cfg, None).expect("TLS material")).subscribe(),
        metrics: metrics.clone(),
        connect_failed: tx,
        read_route: read_route.subscribe(),
        read_turn: Default::default(),
        gate: Default::default(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(proxy::run(listener, dp.clone(), shutdown.clone()));
    TestProxy { addr, route, read_route, metrics, passive, shutdown, task, dp }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Connection string for the proxy (or any address) with the cluster's password.
pub fn conn_str(addr: SocketAddr, password: &str) -> String {
    format!("host={} port={} user=postgres password={password} dbname=postgres connect_timeout=10", addr.ip(), addr.port())
}

pub async fn try_connect(addr: SocketAddr, password: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&conn_str(addr, password), NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub async fn connect(addr: SocketAddr, password: &str) -> Client {
    try_connect(addr, password).await.expect("connect")
}

pub fn node_addr(c: &Cluster, i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], c.nodes[i].port))
}

/// Polls `f` every 20 ms until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// FNV-1a over a byte stream: chunk boundaries do not change the result.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf29ce484222325)
    }
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

/// A full proxy (monitor included) in front of the cluster: interval 250ms, timeout 500ms,
/// threshold 3, listening on a free port. `tweak` adjusts the config.
pub fn proxy_config(c: &Cluster, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut cfg = Config::default();
    let b = backends(c);
    cfg.primary = b[0].clone();
    cfg.standbys = b[1..].to_vec();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin_listen = "127.0.0.1:0".parse().unwrap();
    cfg.health.interval = Duration::from_millis(250);
    cfg.health.timeout = Duration::from_millis(500);
    cfg.health.failure_threshold = 3;
    cfg.proxy.shutdown_grace = Duration::from_millis(500);
    tweak(&mut cfg);
    cfg
}

pub async fn start_proxy(cfg: Config) -> pgfailover::server::Proxy {
    init_logs();
    pgfailover::server::Proxy::start(cfg).await.expect("proxy starts")
}

/// The proxy's logs in the test output when `RUST_LOG` is set (e.g. `RUST_LOG=pgfailover=info`).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    }
}

/// Polls the proxy's status until `cond` holds.
pub async fn wait_status(
    p: &pgfailover::server::Proxy,
    limit: Duration,
    what: &str,
    cond: impl Fn(&pgfailover::monitor::status::Status) -> bool,
) -> std::sync::Arc<pgfailover::monitor::status::Status> {
    eventually(limit, what, || async {
        let s = p.monitor.status();
        cond(&s).then_some(s)
    })
    .await
}

pub fn backend<'a>(s: &'a pgfailover::monitor::status::Status, name: &str) -> &'a pgfailover::monitor::status::BackendStatus {
    s.backends.iter().find(|b| b.name == name).expect("backend in status")
}

/// Runs a blocking cluster operation off the runtime's workers.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// The port of the server a client is really connected to.
pub async fn server_port(client: &Client) -> i32 {
    client.query_one("select inet_server_port()", &[]).await.unwrap().get(0)
}

/// A response from the admin port.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One request to the admin port with hyper's client.
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpReply {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let mut req = hyper::Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(bytes::Bytes::copy_from_slice(body))).expect("a valid request");
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req)).await.expect("admin answers in time").expect("admin port reachable");
    let status = resp.status().as_u16();
    let headers = resp.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string())).collect();
    let bytes = resp.into_body().collect().await.expect("the whole body").to_bytes();
    HttpReply { status, headers, body: String::from_utf8_lossy(&bytes).to_string() }
}

pub async fn get(addr: SocketAddr, path: &str) -> HttpReply {
    http(addr, "GET", path, &[], b"").await
}

pub async fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: &str) -> HttpReply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json"), ("X-Admin-User", "tester")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http(addr, "POST", path, &headers, body.as_bytes()).await
}

/// A writer that inserts sequential ids through the proxy and remembers which inserts were
/// acknowledged: the ledger a failover must not lose. Each insert is its own transaction;
/// a failed one is retried on a new connection with the next id.
pub struct Ledger {
    pub acked: Arc<std::sync::Mutex<Vec<i64>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl Ledger {
    /// Creates table `ledger` (through the proxy) and starts writing.
    pub async fn start(addr: SocketAddr, password: &str) -> Ledger {
        connect(addr, password).await.batch_execute("create table if not exists ledger(id bigint primary key)").await.unwrap();
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, s, pw) = (acked.clone(), stop.clone(), password.to_string());
        let task = tokio::spawn(async move {
            let mut next = 1i64;
            let mut client: Option<Client> = None;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = tokio::time::timeout(Duration::from_secs(10), try_connect(addr, &pw)).await.ok().and_then(Result::ok);
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
                let c = client.as_ref().expect("connected above");
                let id = next;
                next += 1;
                // Bounded: a commit waiting for a synchronous standby that is gone is not an
                // acknowledgement.
                match tokio::time::timeout(Duration::from_secs(5), c.execute("insert into ledger values ($1)", &[&id])).await {
                    Ok(Ok(_)) => a.lock().unwrap().push(id),
                    _ => client = None,
                }
            }
        });
        Ledger { acked, stop, task }
    }

    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `n` more inserts than now were acknowledged.
    pub async fn advance(&self, n: usize, limit: Duration, what: &str) {
        let target = self.count() + n;
        eventually(limit, what, || async { (self.count() >= target).then_some(()) }).await;
    }

    /// Stops writing and returns every acknowledged id.
    pub async fn finish(self) -> Vec<i64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.task.await;
        let v = self.acked.lock().unwrap().clone();
        v
    }
}

/// Acknowledged ids missing on node `i` (read through the harness's own socket).
pub fn missing_on(c: &Cluster, i: usize, acked: &[i64]) -> Vec<i64> {
    try_missing_on(c, i, acked).expect("read the ledger")
}

/// Ends the ledger and asserts that every write it had acknowledged is on node `i` (`name`).
pub async fn assert_none_lost(ledger: Ledger, c: &Cluster, i: usize, name: &str) {
    let acked = ledger.finish().await;
    let missing = missing_on(c, i, &acked);
    eprintln!("{} acknowledged writes, {} missing on {name}", acked.len(), missing.len());
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}

/// Which standby of a primary and two standbys (pg-a, pg-b, pg-c) a failover promoted, and
/// the one left.
pub struct Promoted {
    pub first: String,
    pub first_i: usize,
    pub other: &'static str,
    pub other_i: usize,
}

/// Kills pg-a and waits until the proxy routes to one of its two standbys.
pub async fn kill_primary_until_promoted(c: &Arc<Cluster>, p: &pgfailover::server::Proxy, limit: Duration) -> Promoted {
    let c2 = c.clone();
    blocking(move || c2.kill(0).unwrap()).await;
    let s = wait_status(p, limit, "a standby promoted", |s| s.current_primary.as_deref().is_some_and(|n| n != "pg-a")).await;
    let first = s.current_primary.clone().unwrap();
    let (first_i, other) = if first == "pg-b" { (1, "pg-c") } else { (2, "pg-b") };
    Promoted { first, first_i, other, other_i: 3 - first_i }
}

/// As [`missing_on`]; `None` while the ledger cannot be read there (a standby that has not
/// replayed its creation yet).
pub fn try_missing_on(c: &Cluster, i: usize, acked: &[i64]) -> Option<Vec<i64>> {
    let text = c.psql(i, "select id from ledger").ok()?;
    let have: std::collections::HashSet<i64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    Some(acked.iter().copied().filter(|id| !have.contains(id)).collect())
}
