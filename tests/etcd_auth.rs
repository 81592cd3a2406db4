//! Coordination with etcd authentication on: the proxies work with a role limited to their
//! cluster's key prefix, and a user without write access is refused with a clear error and
//! promotes nothing. A real etcd (auth enabled through its API, as the README's etcdctl
//! commands do), real PostgreSQL servers, the real binary.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::binary::{Cluster, ProxyToml, Site};
use common::etcd::{self, Etcd};
use common::*;
use etcd_client::PermissionType;

const LIMIT: Duration = Duration::from_secs(40);
const PREFIX: &str = "/pgfailover/main/";

/// A site whose proxy `name` coordinates through `e` as `user`, the password in a `0600` file.
fn site_as(c: &Cluster, e: &Etcd, name: &str, user: &str, password: &str) -> Site {
    let mut site = Site::new();
    let pw = site.path().join("etcd-password");
    std::fs::write(&pw, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = ProxyToml::new()
        .cluster(c, c.nodes.len())
        .state_dir(&site.state())
        .health_interval(Duration::from_millis(250))
        .health_timeout(Duration::from_millis(500))
        .failure_threshold(3)
        .promote("auto")
        .shutdown_grace(Duration::from_millis(500))
        .coordination(&e.endpoints(), "main", name)
        .lease_ttl(Duration::from_secs(3))
        .set("coordination", "user", user)
        .set("coordination", "password_file", pw.to_str().unwrap());
    site.write(&cfg);
    site
}

async fn in_recovery(c: &std::sync::Arc<Cluster>, i: usize) -> String {
    let c = c.clone();
    blocking(move || c.psql(i, "select pg_is_in_recovery()").unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_limited_to_the_cluster_prefix_leads_records_and_fails_over() {
    // etcd forgets an auth token unused for this long (default 5 minutes): the proxy idles
    // past it before it must write.
    let e = etcd::start_with(1, &["--auth-token-ttl", "2"]).await;
    etcd::enable_auth(&e, PREFIX, &[("pgfailover", "pgfailover-password", PermissionType::Readwrite)]).await;
    let c = std::sync::Arc::new(cluster(1).await);
    // Two proxies, one user: the leader and a follower (its view, the watch, the election).
    let (site, site2) = (site_as(&c, &e, "p1", "pgfailover", "pgfailover-password"), site_as(&c, &e, "p2", "pgfailover", "pgfailover-password"));
    let mut p = site.start("p1");
    p.ready(LIMIT).await;
    p.admin_until(LIMIT, "/failover/status", |r| r.json().is_some_and(|v| v["coordination"]["isLeader"] == true)).await;
    let mut p2 = site2.start("p2");
    p2.ready(LIMIT).await;
    let s = p
        .admin_until(LIMIT, "/failover/status", |r| r.json().is_some_and(|v| v["coordination"]["members"].as_array().is_some_and(|m| m.len() == 2)))
        .await
        .json()
        .unwrap();
    assert_eq!(s["coordination"]["etcdReachable"], true, "{s}");
    assert_eq!(s["coordination"]["leader"], "p1", "{s}");

    // The role's limit is real: the same user may not write beside its prefix.
    let mut limited = etcd::client_as(&e, "pgfailover", "pgfailover-password").await;
    let outside = limited.put("/pgfailover/other/x", "1", None).await.unwrap_err().to_string();
    assert!(outside.contains("permission denied"), "{outside}");
    tokio::time::sleep(Duration::from_secs(5)).await;

    // A failover needs the fencing-token transaction: the role is enough for it.
    let c2 = c.clone();
    blocking(move || c2.kill(0).unwrap()).await;
    for proc in [&mut p, &mut p2] {
        proc.admin_until(LIMIT, "/failover/status", |r| r.json().is_some_and(|v| v["currentPrimary"] == "pg-b")).await;
    }
    assert_eq!(in_recovery(&c, 1).await, "f", "pg-b was promoted");
    let mut root = etcd::client_as(&e, etcd::ROOT.0, etcd::ROOT.1).await;
    let rec = root.get(format!("{PREFIX}primary"), None).await.unwrap();
    let rec: serde_json::Value = serde_json::from_slice(rec.kvs()[0].value()).unwrap();
    assert_eq!(rec["name"], "pg-b", "{rec}");
    for log in [p.log(), p2.log()] {
        assert!(!log.contains("permission denied") && !log.contains("invalid auth token"), "the expired token was renewed quietly: {log}");
        assert!(!log.contains("pgfailover-password"), "the etcd password is never logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_write_access_is_refused_and_promotes_nothing() {
    let e = etcd::start(1).await;
    etcd::enable_auth(&e, PREFIX, &[("reader", "reader-password", PermissionType::Read)]).await;
    let c = std::sync::Arc::new(cluster(1).await);
    // The primary is gone before the proxy starts: a proxy that ran would promote pg-b.
    let c2 = c.clone();
    blocking(move || c2.kill(0).unwrap()).await;

    let site = site_as(&c, &e, "reader", "reader", "reader-password");
    let mut p = site.start("reader");
    let status = p.exit(LIMIT).await;
    assert_eq!(status.code(), Some(1), "{}", p.log());
    let log = p.log();
    for part in ["cannot start", "etcd refused user \"reader\" (write)", "permission denied", "readwrite /pgfailover/main/"] {
        assert!(log.contains(part), "{part:?} not in {log}");
    }
    assert!(tokio::net::TcpStream::connect(site.admin()).await.is_err(), "nothing listens");
    assert_eq!(in_recovery(&c, 1).await, "t", "nothing was promoted");
    let mut root = etcd::client_as(&e, etcd::ROOT.0, etcd::ROOT.1).await;
    assert_eq!(root.get(PREFIX, Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap().count(), 0, "nothing was written");

    // A wrong password is refused as clearly, before anything listens.
    let wrong = site_as(&c, &e, "wrong", "reader", "not-the-password");
    let mut p = wrong.start("wrong");
    assert_eq!(p.exit(LIMIT).await.code(), Some(1));
    let log = p.log();
    assert!(log.contains("etcd refused user \"reader\" (authentication)") && log.contains("authentication failed"), "{log}");
    assert!(!log.contains("not-the-password"), "{log}");
}
