//! Health checks and promotion against one backend.
//!
//! A prober keeps one connection open and runs a single query per check that tells the
//! server's role, timeline, WAL position and cluster identity. Every check is bounded by
//! `health.timeout` (connect + query), so a hung server counts as a failure; a broken
//! connection is dropped and re-made by the next check.

use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;
use tokio::sync::mpsc;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::config::BackendConfig;

use super::observation::{parse_lsn, Observation};

/// One round trip that works on a primary and on a standby.
const CHECK_QUERY: &str = "SELECT pg_is_in_recovery(), \
     (SELECT system_identifier FROM pg_control_system())::text, \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
     pg_last_wal_receive_lsn()::text, \
     pg_last_wal_replay_lsn()::text, \
     CASE WHEN pg_is_in_recovery() \
          THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint())) \
          ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END";

/// Connects and checks one backend.
pub struct Prober {
    backend: BackendConfig,
    timeout: Duration,
    tls: Option<MakeTlsConnector>,
    client: Option<Client>,
    /// Told when the kept connection breaks, so the next check runs at once (a crashed
    /// server is noticed without waiting for the interval).
    broken: Option<mpsc::Sender<()>>,
}

impl Prober {
    pub fn new(backend: BackendConfig, timeout: Duration, broken: Option<mpsc::Sender<()>>) -> Result<Prober, String> {
        let tls = if backend.ssl { Some(tls_connector(&backend)?) } else { None };
        Ok(Prober { backend, timeout, tls, client: None, broken })
    }

    /// One bounded check.
    pub async fn check(&mut self) -> Result<Observation, String> {
        let start = Instant::now();
        match tokio::time::timeout(self.timeout, self.check_inner()).await {
            Ok(Ok(mut obs)) => {
                obs.response_time = start.elapsed();
                Ok(obs)
            }
            Ok(Err(e)) => {
                self.client = None;
                Err(e)
            }
            Err(_) => {
                self.client = None;
                Err(format!("no answer within {}", humantime::format_duration(self.timeout)))
            }
        }
    }

    async fn check_inner(&mut self) -> Result<Observation, String> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(connect(&self.backend, self.timeout, self.tls.clone(), self.broken.clone()).await?);
        }
        let client = self.client.as_ref().expect("connected above");
        observe(client).await
    }
}

/// Runs `pg_promote(true, …)` on a standby and returns its first observation as a primary.
pub async fn promote(backend: &BackendConfig, timeout: Duration, check_timeout: Duration) -> Result<Observation, String> {
    let tls = if backend.ssl { Some(tls_connector(backend)?) } else { None };
    let work = async {
        let client = connect(backend, check_timeout, tls, None).await?;
        let secs = timeout.as_secs().clamp(1, i32::MAX as u64);
        let rows = client
            .simple_query(&format!("SELECT pg_promote(true, {secs})"))
            .await
            .map_err(|e| describe(&e))?;
        if first_row(&rows).and_then(|r| r.get(0)) != Some("t") {
            return Err(format!("pg_promote did not finish within {secs}s"));
        }
        // pg_promote returns once recovery has ended; confirm from the server's own answer.
        loop {
            let obs = observe(&client).await?;
            if !obs.in_recovery {
                return Ok(obs);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(timeout + check_timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("promotion did not finish within {}", humantime::format_duration(timeout))))
}

async fn observe(client: &Client) -> Result<Observation, String> {
    let rows = client.simple_query(CHECK_QUERY).await.map_err(|e| describe(&e))?;
    let row = first_row(&rows).ok_or("the check query returned no row")?;
    let text = |i: usize| row.get(i);
    let lsn = |i: usize| text(i).and_then(parse_lsn);
    Ok(Observation {
        in_recovery: text(0) == Some("t"),
        system_identifier: text(1).and_then(|s| s.parse().ok()).ok_or("no system identifier")?,
        current_lsn: lsn(2),
        receive_lsn: lsn(3),
        replay_lsn: lsn(4),
        timeline: text(5).and_then(|s| s.parse().ok()),
        response_time: Duration::ZERO,
    })
}

fn first_row(rows: &[SimpleQueryMessage]) -> Option<&tokio_postgres::SimpleQueryRow> {
    rows.iter().find_map(|m| if let SimpleQueryMessage::Row(r) = m { Some(r) } else { None })
}

/// The error text without anything secret (tokio-postgres never prints passwords).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

async fn connect(
    b: &BackendConfig,
    timeout: Duration,
    tls: Option<MakeTlsConnector>,
    broken: Option<mpsc::Sender<()>>,
) -> Result<Client, String> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&b.host)
        .port(b.port)
        .user(&b.user)
        .dbname(&b.database)
        .application_name("pgfailover-health")
        .connect_timeout(timeout)
        .ssl_mode(if tls.is_some() { SslMode::Require } else { SslMode::Disable });
    if let Some(pw) = &b.password {
        cfg.password(pw.expose());
    }
    let notify = move || {
        if let Some(tx) = broken {
            let _ = tx.try_send(());
        }
    };
    match tls {
        Some(tls) => {
            let (client, conn) = cfg.connect(tls).await.map_err(|e| describe(&e))?;
            tokio::spawn(async move {
                let _ = conn.await;
                notify();
            });
            Ok(client)
        }
        None => {
            let (client, conn) = cfg.connect(NoTls).await.map_err(|e| describe(&e))?;
            tokio::spawn(async move {
                let _ = conn.await;
                notify();
            });
            Ok(client)
        }
    }
}

/// TLS for checks: verified against `ssl_root_cert` when given, else encrypted only (the
/// seed's `rejectUnauthorized: false`).
fn tls_connector(b: &BackendConfig) -> Result<MakeTlsConnector, String> {
    let err = |e: openssl::error::ErrorStack| format!("TLS setup for {}: {e}", b.name);
    let mut builder = SslConnector::builder(SslMethod::tls()).map_err(err)?;
    let verify = match &b.ssl_root_cert {
        Some(ca) => {
            builder.set_ca_file(ca).map_err(|e| format!("ssl_root_cert {}: {e}", ca.display()))?;
            true
        }
        None => {
            builder.set_verify(SslVerifyMode::NONE);
            false
        }
    };
    let mut connector = MakeTlsConnector::new(builder.build());
    if !verify {
        connector.set_callback(|cfg, _| {
            cfg.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(connector)
}
