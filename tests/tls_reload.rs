//! The proxy's certificate with the real binary: a wrong or missing certificate refused at
//! `--check` (and at start), and rotation by SIGHUP: new sessions get the new certificate,
//! open ones carry on, a broken file is refused and the certificate in force keeps serving.

mod common;

use std::time::Duration;

use common::binary::{run, ProxyToml, Signal, Site};
use common::certs::{presented_subject, Pki};
use common::*;

const LIMIT: Duration = Duration::from_secs(30);

fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> ProxyToml {
    ProxyToml::new()
        .log_level("info")
        .health_interval(Duration::from_millis(250))
        .set("tls", "mode", "terminate")
        .set("tls", "cert_file", cert.display().to_string())
        .set("tls", "key_file", key.display().to_string())
}

fn reloads(metrics: &str, result: &str) -> u64 {
    let key = format!("pgfailover_config_reloads_total{{result=\"{result}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&key)).map(|v| v.trim().parse().unwrap()).unwrap_or(0)
}

#[test]
fn check_refuses_a_wrong_or_missing_certificate() {
    let pki = Pki::new("check");
    let good = pki.leaf("good", "localhost", &["DNS:localhost"]);
    let other = pki.leaf("other", "localhost", &["DNS:localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.crt");
    let cases: [(&std::path::Path, &std::path::Path, &[&str]); 4] = [
        (&missing, &good.key, &["tls.cert_file", "missing.crt"]),
        (&garbage, &good.key, &["tls.cert_file", "garbage.crt", "no certificate"]),
        // The key of another certificate.
        (&good.chain, &other.key, &["tls.key_file", "does not go with the certificate"]),
        (&good.chain, &garbage, &["tls.key_file", "no private key"]),
    ];
    for (cert, key, words) in cases {
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, tls_config(cert, key).render()).unwrap();
        let out = run(&["--config", path.to_str().unwrap(), "--check"], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "refused: {err}");
        for w in words {
            assert!(err.contains(w), "{w:?} in {err}");
        }
        // The start refuses it the same way.
        let out = run(&["--config", path.to_str().unwrap()], &[]);
        assert!(!out.status.success(), "a start with it fails");
    }
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, tls_config(&good.chain, &good.key).render()).unwrap();
    let out = run(&["--config", path.to_str().unwrap(), "--check"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("tls: terminate"), "the summary says it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_rotates_the_certificate_for_new_sessions() {
    let c = cluster(0).await;
    let pw = c.options.password.clone();
    let pki = Pki::new("rotation");
    let first = pki.leaf("first", "first.example", &["DNS:localhost"]);
    let second = pki.leaf("second", "second.example", &["DNS:localhost"]);
    // The files the configuration names; rotated by copying over them, as a Secret update
    // or certbot does.
    let (cert, key) = (pki.path().join("live.crt"), pki.path().join("live.key"));
    std::fs::copy(&first.chain, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let mut s = Site::new();
    s.write(&tls_config(&cert, &key).cluster(&c, 1));
    let mut p = s.start("rotation");
    p.ready(LIMIT).await;
    let port = s.listen().port();
    assert!(presented_subject(port).contains("first.example"), "{}", presented_subject(port));

    let root = pki.root.display().to_string();
    let conninfo =
        format!("host=localhost port={port} user=postgres dbname=postgres password={pw} sslmode=verify-full sslrootcert={root} channel_binding=disable");
    // A session open over TLS (OpenSSL's client, certificate not verified) across the rotation.
    let tls = {
        let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
        b.set_verify(openssl::ssl::SslVerifyMode::NONE);
        postgres_openssl::MakeTlsConnector::new(b.build())
    };
    let plain = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres password={pw} sslmode=require channel_binding=disable");
    let (open, conn) = tokio_postgres::connect(&plain, tls).await.expect("a TLS session through the proxy");
    tokio::spawn(conn);
    open.simple_query("CREATE TABLE rotated (n int)").await.unwrap();

    std::fs::copy(&second.chain, &cert).unwrap();
    std::fs::copy(&second.key, &key).unwrap();
    p.signal(Signal::Hup);
    eventually(LIMIT, "the new certificate is presented", || async { presented_subject(port).contains("second.example").then_some(()) }).await;
    assert_eq!(common::tls_clients::psql(&conninfo, "SELECT 1").await.expect("verify-full with the new certificate"), "1");
    open.simple_query("INSERT INTO rotated VALUES (1)").await.expect("the open session carries on");

    // A broken certificate file: the reload is refused, the certificate in force serves on.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n").unwrap();
    p.signal(Signal::Hup);
    eventually(LIMIT, "the broken reload is counted", || async { (reloads(&get(s.admin(), "/metrics").await.body, "error") == 1).then_some(()) }).await;
    assert!(p.alive(), "a broken certificate does not end the process");
    assert!(presented_subject(port).contains("second.example"), "still the second certificate");
    assert_eq!(common::tls_clients::psql(&conninfo, "SELECT count(*) FROM rotated").await.expect("new sessions still served"), "1");
    assert!(p.log().contains("tls.cert_file"), "the refusal names the file's key: {}", p.log());
}
