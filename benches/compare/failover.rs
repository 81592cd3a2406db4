//! Failover time: immediate stop of the primary → first write acknowledged through the proxy
//! by the promoted standby, with a new connection + INSERT every 20 ms. With several proxies
//! coordinated through etcd, the connections go to each proxy in turn and the clock stops at
//! the first write acknowledged through any of them.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgfailover::localpg::{Cluster, ClusterOptions};
use tokio_postgres::NoTls;

use crate::targets;
use pgfailover::testkit::etcd::Etcd;

pub struct Trial {
    pub time: Duration,
    pub refused: u64,
    /// Sessions (or handshakes) in flight on the old primary when it died.
    pub writes_lost_sessions: u64,
}

/// One trial with `proxies` pgfailover instances: 1 alone, more coordinated through a
/// one-member etcd (`etcd` must then be given).
pub fn trial(dir: &Path, proxies: usize, etcd: Option<&Etcd>) -> Trial {
    let c = Cluster::start(ClusterOptions { standbys: 1, ..Default::default() }).expect("cluster");
    let pw = c.options.password.clone();
    c.psql(0, "CREATE TABLE w(at timestamptz DEFAULT now(), port int)").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.psql(1, "SELECT count(*) FROM w").is_err() {
        assert!(Instant::now() < deadline, "table never replicated");
        std::thread::sleep(Duration::from_millis(10));
    }
    let targets: Vec<targets::Target> = match etcd {
        None => vec![targets::pgfailover(dir, c.nodes[0].port, Some(c.nodes[1].port), &pw, "250ms", "500ms")],
        Some(e) => {
            // A cluster name of its own per trial: no record left by the previous one.
            let cluster = format!("bench-{}", c.nodes[0].port);
            (0..proxies)
                .map(|i| targets::pgfailover_coordinated(dir, c.nodes[0].port, c.nodes[1].port, &pw, &e.endpoints(), &format!("p{i}"), &cluster))
                .collect()
        }
    };
    if etcd.is_some() {
        // Everyone follows one leader that has recorded the primary.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st: Vec<serde_json::Value> = targets.iter().filter_map(|t| targets::get_json(t.admin.unwrap(), "/failover/status")).collect();
            let leaders = st.iter().filter(|s| s["coordination"]["isLeader"] == true).count();
            if st.len() == targets.len() && leaders == 1 && st.iter().all(|s| s["coordination"]["recordedPrimary"]["name"] == "pg-a") {
                break;
            }
            assert!(Instant::now() < deadline, "the coordinated proxies never agreed: {st:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let standby_port = c.nodes[1].port as i32;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let refused = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicU64::new(0));
    let first_on_standby: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let conns: Vec<String> = targets.iter().map(|t| format!("host=127.0.0.1 port={} user=postgres password={pw} dbname=postgres", t.addr.port())).collect();
    let (r2, c2, f2) = (refused.clone(), cut.clone(), first_on_standby.clone());
    let writer = rt.spawn(async move {
        for conn in conns.iter().cycle() {
            if f2.lock().unwrap().is_some() {
                return;
            }
            let tick = tokio::time::sleep(Duration::from_millis(20));
            match tokio_postgres::connect(conn, NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    match client.query_one("INSERT INTO w(port) VALUES (inet_server_port()) RETURNING port", &[]).await {
                        Ok(row) if row.get::<_, i32>(0) == standby_port => {
                            f2.lock().unwrap().get_or_insert_with(Instant::now);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            c2.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // Refused = the proxy's 57P03. A handshake in flight with the old primary
                // when it died ends with "connection closed": counted as cut, not refused.
                Err(e) if e.as_db_error().is_none() && e.to_string().contains("closed") => {
                    c2.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    r2.fetch_add(1, Ordering::Relaxed);
                }
            }
            tick.await;
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    c.kill(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let at = loop {
        if let Some(t) = *first_on_standby.lock().unwrap() {
            break t;
        }
        assert!(Instant::now() < deadline, "no write reached the promoted standby");
        std::thread::sleep(Duration::from_millis(5));
    };
    rt.block_on(writer).unwrap();
    drop(targets);
    Trial { time: at - killed, refused: refused.load(Ordering::Relaxed), writes_lost_sessions: cut.load(Ordering::Relaxed) }
}
