//! TLS termination end to end: real PostgreSQL servers with certificates made here, the
//! proxy terminating clients' TLS with its own chain, and real libpq clients (psql 15, and
//! psycopg's libpq 18 for PostgreSQL 17's direct TLS).

mod common;

use std::time::Duration;

use common::certs::{install_server_cert, Leaf, Pki};
use common::tls_clients::{psql, psycopg};
use common::*;
use pgfailover::config::{Config, ServerSslMode, TlsMode};
use pgfailover::localpg::{Cluster, ClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(20);

/// A primary with TLS on, presenting `server` (signed by the PKI).
async fn tls_cluster(standbys: usize, server: &Leaf) -> Cluster {
    let c = cluster_with(ClusterOptions { standbys, ssl: true, ..Default::default() }).await;
    for i in 0..c.nodes.len() {
        install_server_cert(&c, i, server);
    }
    c
}

/// The proxy's configuration: terminate with `proxy` cert, servers as `mode` says.
fn terminate(c: &Cluster, proxy: &Leaf, mode: ServerSslMode, ca: &Pki, tweak: impl FnOnce(&mut Config)) -> Config {
    proxy_config(c, |cfg| {
        cfg.tls.mode = TlsMode::Terminate;
        cfg.tls.cert_file = Some(proxy.chain.clone());
        cfg.tls.key_file = Some(proxy.key.clone());
        cfg.tls.server_sslmode = mode;
        cfg.tls.server_ca_file = Some(ca.root.clone());
        tweak(cfg);
        cfg.apply_server_tls();
    })
}

async fn routed(p: &pgfailover::server::Proxy) {
    wait_status(p, LIMIT, "a routed primary", |s| s.current_primary.is_some()).await;
}

fn conninfo(host: &str, port: u16, pw: &str, extra: &str) -> String {
    format!("host={host} port={port} user=postgres dbname=postgres password={pw} {extra}")
}

const MY_SSL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_is_verified_by_host_name_and_reaches_the_server_over_verified_tls() {
    let pki = Pki::new("test");
    let server = pki.leaf("pg", "localhost", &["DNS:localhost", "IP:127.0.0.1"]);
    let proxy_cert = pki.leaf("proxy", "localhost", &["DNS:localhost"]);
    let c = tls_cluster(0, &server).await;
    let pw = c.options.password.clone();
    let p = start_proxy(terminate(&c, &proxy_cert, ServerSslMode::VerifyFull, &pki, |_| {})).await;
    routed(&p).await;
    let port = p.client_addr.port();
    let root = pki.root.display().to_string();

    // verify-full by host name, through the chain (leaf + intermediate) to the root; the
    // server's side is TLS too, verified against the same root.
    let ok = conninfo("localhost", port, &pw, &format!("sslmode=verify-full sslrootcert={root} channel_binding=disable"));
    let row = psql(&ok, "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await.expect("verify-full session");
    assert!(row.starts_with("t|TLSv1."), "the server sees TLS from the proxy: {row}");
    // The health checks too.
    let checks =
        psql(&ok, "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE application_name = 'pgfailover-health' AND ssl").await.unwrap();
    assert_ne!(checks, "0", "health checks connect over TLS");

    // The certificate names localhost, not 127.0.0.1.
    let by_ip = psql(&conninfo("127.0.0.1", port, &pw, &format!("sslmode=verify-full sslrootcert={root}")), "SELECT 1").await.unwrap_err();
    assert!(by_ip.contains("does not match host name"), "{by_ip}");
    // Another CA does not verify it.
    let other = Pki::new("other");
    let wrong_ca = psql(&conninfo("localhost", port, &pw, &format!("sslmode=verify-ca sslrootcert={}", other.root.display())), "SELECT 1").await.unwrap_err();
    assert!(wrong_ca.contains("certificate verify failed"), "{wrong_ca}");

    // SCRAM with libpq's default channel_binding=prefer: PostgreSQL refuses the client's "y"
    // flag over a TLS connection, and verify-full cannot go in clear: told what to change.
    let binding = psql(&conninfo("localhost", port, &pw, &format!("sslmode=verify-full sslrootcert={root}")), "SELECT 1").await.unwrap_err();
    assert!(binding.contains("channel_binding=disable") && binding.contains("passthrough"), "{binding}");
    // channel_binding=require cannot be met through termination.
    let required =
        psql(&conninfo("localhost", port, &pw, &format!("sslmode=verify-full sslrootcert={root} channel_binding=require")), "SELECT 1").await.unwrap_err();
    assert!(required.contains("channel binding"), "{required}");
}

/// Prepends `lines` to node 0's pg_hba.conf and reloads it.
fn hba(c: &Cluster, lines: &str) {
    let path = c.nodes[0].data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{lines}\n{old}")).unwrap();
    c.psql(0, "SELECT pg_reload_conf()").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_md5_password_and_trust_authenticate_through_termination() {
    let pki = Pki::new("test");
    let server = pki.leaf("pg", "localhost", &["DNS:localhost", "IP:127.0.0.1"]);
    let proxy_cert = pki.leaf("proxy", "localhost", &["DNS:localhost"]);
    let c = tls_cluster(0, &server).await;
    let pw = c.options.password.clone();
    c.psql(0, "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'md5-secret'; CREATE ROLE pwuser LOGIN PASSWORD 'pw-secret'; CREATE ROLE trustuser LOGIN")
        .unwrap();
    hba(&c, "host all md5user 127.0.0.1/32 md5\nhost all pwuser 127.0.0.1/32 password\nhost all trustuser 127.0.0.1/32 trust");
    let p = start_proxy(terminate(&c, &proxy_cert, ServerSslMode::Prefer, &pki, |_| {})).await;
    routed(&p).await;
    let port = p.client_addr.port();
    let root = pki.root.display().to_string();
    let tls = format!("sslmode=verify-full sslrootcert={root}");

    // SCRAM, libpq's defaults: the offer of SCRAM-SHA-256-PLUS is withheld, the client says
    // "y", and under prefer its server connection is made in clear.
    assert_eq!(psql(&conninfo("localhost", port, &pw, &tls), MY_SSL).await.expect("SCRAM with channel_binding=prefer"), "f");
    // Without channel binding the server connection stays TLS.
    assert_eq!(psql(&conninfo("localhost", port, &pw, &format!("{tls} channel_binding=disable")), MY_SSL).await.expect("SCRAM without channel binding"), "t");
    // A client in clear says "n": TLS to the server.
    assert_eq!(psql(&conninfo("localhost", port, &pw, "sslmode=disable"), MY_SSL).await.expect("SCRAM in clear"), "t");
    // A wrong password is the server's answer.
    let wrong = psql(&conninfo("localhost", port, "nope", &tls), "SELECT 1").await.unwrap_err();
    assert!(wrong.contains("password authentication failed"), "{wrong}");
    for (user, password) in [("md5user", "md5-secret"), ("pwuser", "pw-secret"), ("trustuser", "")] {
        let conn = format!("host=localhost port={port} user={user} dbname=postgres password='{password}' {tls}");
        assert_eq!(psql(&conn, MY_SSL).await.unwrap_or_else(|e| panic!("{user}: {e}")), "t", "{user} over TLS on both legs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_in_clear_encryption_requests_and_client_certificates() {
    let pki = Pki::new("test");
    let server = pki.leaf("pg", "localhost", &["DNS:localhost", "IP:127.0.0.1"]);
    let proxy_cert = pki.leaf("proxy", "localhost", &["DNS:localhost"]);
    let client_cert = pki.leaf("client", "postgres", &["DNS:client"]);
    let c = tls_cluster(0, &server).await;
    let pw = c.options.password.clone();
    let root = pki.root.display().to_string();

    let open = start_proxy(terminate(&c, &proxy_cert, ServerSslMode::Require, &pki, |_| {})).await;
    routed(&open).await;
    // Admitted in clear by default.
    assert_eq!(psql(&conninfo("localhost", open.client_addr.port(), &pw, "sslmode=disable"), "SELECT 1").await.unwrap(), "1");
    // GSSENCRequest: N, as PostgreSQL without GSSAPI answers.
    let mut s = tokio::net::TcpStream::connect(open.client_addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await.unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");

    // require_client_tls and client certificates.
    let strict = start_proxy(terminate(&c, &proxy_cert, ServerSslMode::Require, &pki, |cfg| {
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.tls.require_client_tls = true;
        cfg.tls.client_ca_file = Some(pki.root.clone());
    }))
    .await;
    routed(&strict).await;
    let port = strict.client_addr.port();
    let plain = psql(&conninfo("localhost", port, &pw, "sslmode=disable"), "SELECT 1").await.unwrap_err();
    assert!(plain.contains("FATAL") && plain.contains("requires TLS"), "{plain}");
    let no_cert = psql(&conninfo("localhost", port, &pw, &format!("sslmode=verify-full sslrootcert={root}")), "SELECT 1").await.unwrap_err();
    assert!(no_cert.to_lowercase().contains("certificate"), "a client without a certificate is refused: {no_cert}");
    let with_cert =
        format!("sslmode=verify-full sslrootcert={root} sslcert={} sslkey={} channel_binding=disable", client_cert.chain.display(), client_cert.key.display());
    assert_eq!(psql(&conninfo("localhost", port, &pw, &with_cert), MY_SSL).await.expect("a client with a certificate"), "t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_terminated_spliced_and_refused_in_words() {
    let pki = Pki::new("test");
    let server = pki.leaf("pg", "localhost", &["DNS:localhost", "IP:127.0.0.1"]);
    let proxy_cert = pki.leaf("proxy", "localhost", &["DNS:localhost"]);
    let c = tls_cluster(0, &server).await;
    let pw = c.options.password.clone();
    let root = pki.root.display().to_string();
    let direct = format!("sslmode=verify-full sslnegotiation=direct sslrootcert={root} channel_binding=disable");

    // Terminate: PostgreSQL 17's direct TLS on the same port. (`prefer`: the other proxy's
    // health checks below authenticate with SCRAM and channel binding supported.)
    let term = start_proxy(terminate(&c, &proxy_cert, ServerSslMode::Prefer, &pki, |_| {})).await;
    routed(&term).await;
    let got = psycopg(&conninfo("localhost", term.client_addr.port(), &pw, &direct), MY_SSL).await.expect("direct TLS through termination");
    assert_eq!(got, "True");

    // A ClientHello without ALPN postgresql: closed as PostgreSQL 17 closes it.
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(&pki.root).unwrap() {
            r.add(cert.unwrap()).unwrap();
        }
        std::sync::Arc::new(r)
    };
    let hello = |alpn: Vec<Vec<u8>>| {
        let roots = roots.clone();
        let addr = term.client_addr;
        async move {
            let mut cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
            cfg.alpn_protocols = alpn;
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            // Err: the handshake failed; Ok(None): closed (EOF or reset) without a byte.
            let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)).connect(name, tcp).await.map_err(|e| e.to_string())?;
            let mut startup = vec![0, 0, 0, 0, 0, 3, 0, 0];
            startup.extend_from_slice(b"user\0postgres\0\0");
            let len = startup.len() as u32;
            startup[..4].copy_from_slice(&len.to_be_bytes());
            let _ = tls.write_all(&startup).await;
            let mut buf = [0u8; 1];
            Ok(match tls.read(&mut buf).await {
                Ok(1) => Some(buf[0]),
                _ => None,
            })
        }
    };
    assert_eq!(hello(vec![]).await.expect("the handshake completes"), None, "then the connection is closed without a byte");
    let refused: String = hello(vec![b"http/1.1".to_vec()]).await.expect_err("other protocols only: refused in the handshake");
    assert!(refused.to_string().contains("NoApplicationProtocol"), "{refused}");

    // Passthrough to PostgreSQL 15: it does not speak direct TLS; the client is told so.
    let pass = start_proxy(proxy_config(&c, |cfg| cfg.apply_server_tls())).await;
    routed(&pass).await;
    let old = psycopg(&conninfo("localhost", pass.client_addr.port(), &pw, "sslmode=require sslnegotiation=direct"), "SELECT 1").await.unwrap_err();
    assert!(old.contains("does not speak direct TLS") && old.contains("sslnegotiation=postgres"), "{old}");

    // Passthrough to a server that speaks it (the terminating proxy, as PostgreSQL 17 would):
    // the ClientHello is spliced, and the client verifies that server's certificate.
    let mut front = proxy_config(&c, |cfg| cfg.apply_server_tls());
    front.primary.port = term.client_addr.port();
    let front = start_proxy(front).await;
    routed(&front).await;
    let spliced = psycopg(&conninfo("localhost", front.client_addr.port(), &pw, &direct), MY_SSL).await.expect("direct TLS spliced");
    assert_eq!(spliced, "True");
}
