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

use crate::config::{BackendConfig, ServerSslMode};

use super::check_error::CheckError;
use super::observation::{parse_lsn, Observation, Receiver};

/// One round trip that works on a primary and on a standby. The timeline is the current
/// one on a primary; on a standby the WAL receiver's, else the last checkpoint's. The WAL
/// receiver columns are NULL when none runs (and for a role without `pg_read_all_stats`).
/// The last column is a standby's replay delay in ms: the age of its last replayed commit,
/// but only while it has received WAL it has not replayed (0 when caught up; -1 unknown).
/// Then its `synchronous_standby_names` and its WAL senders (who streams from it, by name).
const CHECK_QUERY: &str = "SELECT pg_is_in_recovery(), \
     (SELECT system_identifier FROM pg_control_system())::text, \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
     pg_last_wal_receive_lsn()::text, \
     pg_last_wal_replay_lsn()::text, \
     CASE WHEN pg_is_in_recovery() \
          THEN COALESCE(r.received_tli, (SELECT timeline_id FROM pg_control_checkpoint())) \
          ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
     r.status, r.received_tli, r.sender_host, r.sender_port, \
     CASE WHEN pg_is_in_recovery() AND pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn() \
          THEN COALESCE(extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000, -1) \
          ELSE 0 END, \
     current_setting('synchronous_standby_names'), \
     (SELECT json_agg(json_build_array(application_name, state, sync_state, flush_lsn::text)) FROM pg_stat_replication) \
     FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver r ON true";

/// Connects and checks one backend.
pub struct Prober {
    backend: BackendConfig,
    timeout: Duration,
    /// The TLS setup, or why it failed (reported by every check: a setting to fix).
    tls: Result<Option<MakeTlsConnector>, CheckError>,
    client: Option<Client>,
    /// Told when the kept connection breaks, so the next check runs at once (a crashed
    /// server is noticed without waiting for the interval).
    broken: Option<mpsc::Sender<()>>,
}

impl Prober {
    /// A reload's new `health.timeout`, from the next check on.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn new(backend: BackendConfig, timeout: Duration, broken: Option<mpsc::Sender<()>>) -> Prober {
        let tls = check_tls(&backend);
        Prober { backend, timeout, tls, client: None, broken }
    }

    /// One bounded check.
    pub async fn check(&mut self) -> Result<Observation, CheckError> {
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
                Err(CheckError::Timeout(self.timeout))
            }
        }
    }

    async fn check_inner(&mut self) -> Result<Observation, CheckError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let tls = self.tls.clone()?;
            self.client = Some(connect(&self.backend, self.timeout, tls, self.broken.clone()).await?);
        }
        let client = self.client.as_ref().expect("connected above");
        observe(client).await
    }
}

pub(super) async fn observe(client: &Client) -> Result<Observation, CheckError> {
    let rows = client.simple_query(CHECK_QUERY).await.map_err(|e| CheckError::from_postgres(&e))?;
    let row = first_row(&rows).ok_or_else(|| CheckError::Protocol("the check query returned no row".into()))?;
    let text = |i: usize| row.get(i);
    let lsn = |i: usize| text(i).and_then(parse_lsn);
    let receiver = text(6).map(|status| Receiver {
        status: status.to_string(),
        timeline: text(7).and_then(|s| s.parse().ok()),
        upstream: text(8).map(|h| match text(9) {
            Some(p) => format!("{h}:{p}"),
            None => h.to_string(),
        }),
    });
    Ok(Observation {
        in_recovery: text(0) == Some("t"),
        system_identifier: text(1).and_then(|s| s.parse().ok()).ok_or_else(|| CheckError::Protocol("no system identifier".into()))?,
        current_lsn: lsn(2),
        receive_lsn: lsn(3),
        replay_lsn: lsn(4),
        timeline: text(5).and_then(|s| s.parse().ok()),
        response_time: Duration::ZERO,
        receiver,
        replay_delay: match text(10).and_then(|v| v.parse::<f64>().ok()) {
            Some(ms) if ms >= 0.0 => Some(Duration::from_secs_f64(ms / 1000.0)),
            Some(_) => None,
            None => Some(Duration::ZERO),
        },
        sync_names: text(11).map(str::to_string),
        senders: super::observation::parse_senders(text(12)),
    })
}

pub(super) fn first_row(rows: &[SimpleQueryMessage]) -> Option<&tokio_postgres::SimpleQueryRow> {
    rows.iter().find_map(|m| if let SimpleQueryMessage::Row(r) = m { Some(r) } else { None })
}

/// A connection for checks and operations, bounded by `timeout`. `broken` is told when it
/// closes.
pub(super) async fn connect(
    b: &BackendConfig,
    timeout: Duration,
    tls: Option<MakeTlsConnector>,
    broken: Option<mpsc::Sender<()>>,
) -> Result<Client, CheckError> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&b.host).port(b.port).user(&b.user).dbname(&b.database).application_name("pgfailover-health").connect_timeout(timeout).ssl_mode(
        match (&tls, b.sslmode) {
            (None, _) | (_, ServerSslMode::Disable) => SslMode::Disable,
            (Some(_), ServerSslMode::Prefer) => SslMode::Prefer,
            (Some(_), _) => SslMode::Require,
        },
    );
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
            let (client, conn) = connected(timeout, cfg.connect(tls)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
                notify();
            });
            Ok(client)
        }
        None => {
            let (client, conn) = connected(timeout, cfg.connect(NoTls)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
                notify();
            });
            Ok(client)
        }
    }
}

/// Bounds a whole connection attempt (TCP, TLS, startup, authentication).
async fn connected<T>(timeout: Duration, attempt: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>) -> Result<T, CheckError> {
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r.map_err(|e| CheckError::from_postgres(&e)),
        Err(_) => Err(CheckError::Timeout(timeout)),
    }
}

/// TLS for checks and operations, as the backend's `sslmode` says (`None`: in clear).
pub(super) fn check_tls(b: &BackendConfig) -> Result<Option<MakeTlsConnector>, CheckError> {
    match b.sslmode {
        ServerSslMode::Disable => Ok(None),
        _ => tls_connector(b).map(Some),
    }
}

/// TLS for checks (OpenSSL: off the data path, the health checks keep tokio-postgres's
/// OpenSSL connector): `verify-ca` checks the chain against the CA (`ssl_root_cert`, else
/// `tls.server_ca_file`), `verify-full` the host name too; `prefer` and `require` encrypt
/// only (the seed's `rejectUnauthorized: false`).
fn tls_connector(b: &BackendConfig) -> Result<MakeTlsConnector, CheckError> {
    let err = |e: openssl::error::ErrorStack| CheckError::Tls(format!("setup for {}: {e}", b.name));
    let mut builder = SslConnector::builder(SslMethod::tls()).map_err(err)?;
    match (&b.ca_file, b.sslmode.verifies()) {
        (Some(ca), true) => {
            builder.set_ca_file(ca).map_err(|e| CheckError::Tls(format!("CA file {}: {e}", ca.display())))?;
        }
        _ => builder.set_verify(SslVerifyMode::NONE),
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    if b.sslmode != ServerSslMode::VerifyFull {
        connector.set_callback(|cfg, _| {
            cfg.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(connector)
}
