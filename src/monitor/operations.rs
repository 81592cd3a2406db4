//! What the monitor does *to* backends, as opposed to checking them: promote a standby,
//! stop and resume writes on a primary (switchover), wait for a standby to replay a
//! position, re-point a standby at a new primary. Each runs on its own connection, bounded,
//! and reports a typed outcome the state machine understands.

use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Client;

use crate::config::BackendConfig;

use super::check_error::CheckError;
use super::conninfo::{self, ConninfoError};
use super::observation::{format_lsn, parse_lsn, Observation};
use super::probe::{check_tls, connect, first_row, observe};

/// The shortest bound on a switchover's waits, however small `trigger_wait` is.
pub const MIN_WAIT: Duration = Duration::from_secs(1);

/// Why an operation did not do what it was asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Check(#[from] CheckError),
    /// Switchover: superusers' sessions the checker may not end (it is no superuser); they
    /// might still write.
    #[error("{0} superuser session(s) could not be ended: the health-check role is not a superuser, and only a superuser may end them; end them yourself or check as a superuser")]
    PrivilegeMissing(u64),
    /// Switchover: sessions kept coming back faster than they could be ended (clients that do
    /// not go through a paused proxy reconnecting to the old primary).
    #[error("client sessions kept reappearing faster than they could be ended ({ended} ended, {left} open at the deadline): something other than the paused proxies keeps connecting to the old primary")]
    SessionsReappeared { ended: u64, left: u64 },
    /// Switchover: the candidate did not replay far enough in time.
    #[error("it replayed WAL only up to {} of {} within {}", .replayed.map(format_lsn).unwrap_or_else(|| "nothing".into()), format_lsn(*.target), humantime::format_duration(*.within))]
    Behind { replayed: Option<u64>, target: u64, within: Duration },
    #[error("{0}")]
    Conninfo(#[from] ConninfoError),
    /// Coordination did not allow it (this proxy no longer leads): nothing was asked of the
    /// server.
    #[error("not allowed: {0}")]
    NotAllowed(crate::coord::CoordError),
}

/// How a promotion request ended, when it did not end with a primary.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PromoteError {
    /// The request never reached the server: nothing was promoted.
    #[error("could not ask for the promotion: {0}")]
    NotSent(CheckError),
    /// The server refused it (e.g. permission denied): nothing was promoted.
    #[error("the server refused the promotion: {0}")]
    Refused(CheckError),
    /// Coordination did not allow it (this proxy no longer leads, etcd is unreachable):
    /// nothing was asked of the server.
    #[error("not allowed: {0}")]
    NotAllowed(crate::coord::CoordError),
    /// Asked, but not finished in time: the promotion may still complete.
    #[error("{0}")]
    Pending(String),
}

/// Runs `pg_promote(true, …)` on a standby and returns its first observation as a primary.
/// A read-only default left behind by a switchover (set with ALTER SYSTEM) is cleared first,
/// and `synchronous` (synchronous mode) becomes its `synchronous_standby_names`: it is a
/// primary's list from its first commit on. Either failing is logged and the promotion goes
/// on (the monitor sets the list again once it is the primary).
pub async fn promote(b: &BackendConfig, timeout: Duration, check_timeout: Duration, synchronous: Option<&str>) -> Result<Observation, PromoteError> {
    let tls = check_tls(b).map_err(PromoteError::NotSent)?;
    let client = connect(b, check_timeout, tls, None).await.map_err(PromoteError::NotSent)?;
    if let Err(e) = clear_read_only_leftover(&client, check_timeout).await {
        tracing::warn!(backend = %b.name, error = %e, "could not clear a leftover default_transaction_read_only before promoting");
    }
    if let Some(list) = synchronous {
        if let Err(e) = apply_synchronous(&client, Some(list), check_timeout).await {
            tracing::warn!(backend = %b.name, error = %e, "could not set synchronous_standby_names before promoting");
        }
    }
    let secs = timeout.as_secs_f64().ceil().clamp(1.0, i32::MAX as f64) as u64;
    let asked = tokio::time::timeout(Duration::from_secs(secs) + check_timeout, client.simple_query(&format!("SELECT pg_promote(true, {secs})"))).await;
    match asked {
        Err(_) => return Err(PromoteError::Pending(format!("pg_promote did not return within {secs}s"))),
        // "recovery is not in progress": it is a primary already.
        Ok(Err(e)) if e.code().map(|c| c.code()) == Some("55000") => {}
        // Refused before anything was signalled: no privilege, no such function, a bad wait.
        Ok(Err(e)) if matches!(e.code().map(|c| c.code()), Some("42501" | "42883" | "22023" | "0A000")) => {
            return Err(PromoteError::Refused(CheckError::from_postgres(&e)));
        }
        // Any other error (a statement timeout, the session terminated) may come after the
        // promotion was signalled: it may still complete.
        Ok(Err(e)) if e.as_db_error().is_some() => {
            return Err(PromoteError::Pending(format!("pg_promote ended with an error: {}", CheckError::from_postgres(&e))))
        }
        Ok(Err(e)) => return Err(PromoteError::Pending(format!("the connection broke while promoting: {}", CheckError::from_postgres(&e)))),
        Ok(Ok(rows)) if first_row(&rows).and_then(|r| r.get(0)) != Some("t") => {
            return Err(PromoteError::Pending(format!("pg_promote did not finish within {secs}s")));
        }
        Ok(Ok(_)) => {}
    }
    // pg_promote returns once recovery has ended; confirm from the server's own answer.
    let deadline = Instant::now() + check_timeout.max(Duration::from_secs(1));
    loop {
        match tokio::time::timeout_at(deadline, observe(&client)).await {
            Ok(Ok(obs)) if !obs.in_recovery => return Ok(obs),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(PromoteError::Pending(format!("promoted, but the check after it failed: {e}"))),
            Err(_) => return Err(PromoteError::Pending("promoted, but it did not report leaving recovery in time".into())),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `default_transaction_read_only = on` written by ALTER SYSTEM (a switchover's, possibly
/// carried over by a base backup) is reset: a server about to be routed writes must accept
/// them.
async fn clear_read_only_leftover(client: &Client, bound: Duration) -> Result<(), CheckError> {
    let rows = query(client, bound, "SELECT setting, sourcefile FROM pg_settings WHERE name = 'default_transaction_read_only'").await?;
    let row = first_row(&rows);
    let on = row.and_then(|r| r.get(0)) == Some("on");
    let from_alter_system = row.and_then(|r| r.get(1)).is_some_and(|f| f.ends_with("postgresql.auto.conf"));
    if on && from_alter_system {
        query(client, bound, "ALTER SYSTEM RESET default_transaction_read_only").await?;
        query(client, bound, "SELECT pg_reload_conf()").await?;
    }
    Ok(())
}

/// Switchover, first half: make the primary refuse writes and end every client session on
/// it (through the proxy or not), then return a WAL position that every acknowledged commit
/// lies before and that the standbys are sure to receive.
pub async fn stop_writes(b: &BackendConfig, check_timeout: Duration, bound: Duration) -> Result<u64, OpError> {
    // Reloading and ending sessions take a moment whatever the operator's wait.
    let deadline = Instant::now() + bound.max(MIN_WAIT);
    let client = connect_to(b, check_timeout).await?;
    query(&client, check_timeout, "ALTER SYSTEM SET default_transaction_read_only = on").await?;
    query(&client, check_timeout, "SELECT pg_reload_conf()").await?;
    // Our own session sees the new default once the postmaster has re-read the file, and
    // from then on every new backend starts read-only.
    wait_setting(&client, "on", deadline).await?;
    let others = "FROM pg_stat_activity a WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() \
                  AND a.application_name IS DISTINCT FROM 'pgfailover-health'";
    // A role that is not a superuser cannot end superusers' sessions (it would be an
    // error for the whole statement): it ends the others, and those left are reported.
    let allowed = "(NOT COALESCE((SELECT rolsuper FROM pg_roles WHERE oid = a.usesysid), false) \
                   OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user))";
    let mut ended = 0;
    loop {
        // pg_terminate_backend(pid, timeout) waits until the backend has exited, so a commit
        // it was writing is in the WAL before the position is read below.
        ended += count(&query(&client, check_timeout * 4, &format!("SELECT count(pg_terminate_backend(a.pid, 1000)) {others} AND {allowed}")).await?);
        let rows = query(&client, check_timeout, &format!("SELECT count(*), count(*) FILTER (WHERE NOT {allowed}) {others}")).await?;
        let (left, forbidden) = (count(&rows), first_row(&rows).and_then(|r| r.get(1)).and_then(|v| v.parse().ok()).unwrap_or(0));
        if left == 0 {
            break;
        }
        if Instant::now() >= deadline {
            return Err(if forbidden > 0 { OpError::PrivilegeMissing(forbidden) } else { OpError::SessionsReappeared { ended, left } });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows = query(&client, check_timeout, "SELECT l::text, (pg_walfile_name_offset(l)).file_offset FROM pg_current_wal_insert_lsn() AS l").await?;
    let row = first_row(&rows);
    let lsn = row.and_then(|r| r.get(0)).and_then(parse_lsn).ok_or_else(|| CheckError::Protocol("no WAL position".into()))?;
    let offset: u64 = row.and_then(|r| r.get(1)).and_then(|o| o.parse().ok()).unwrap_or(u64::MAX);
    // A commit of our own, flushed locally: it lies after every acknowledged commit and
    // forces all WAL before it to disk, so the standbys receive everything up to `lsn`
    // even when the last records were written asynchronously.
    query(&client, check_timeout, "BEGIN READ WRITE; SET LOCAL synchronous_commit = local; SELECT pg_current_xact_id(); COMMIT").await?;
    Ok(record_end(lsn, offset))
}

/// The end of the last record before insert position `lsn` (at `offset` in its WAL
/// segment). When nothing was written on the current page yet, the insert position lies
/// just past the page header, where no record ever ends: a standby that replayed
/// everything reports the page boundary instead.
fn record_end(lsn: u64, offset: u64) -> u64 {
    const PAGE: u64 = 8192;
    const SHORT_HEADER: u64 = 24;
    const LONG_HEADER: u64 = 40;
    if offset == LONG_HEADER {
        lsn - LONG_HEADER
    } else if offset != u64::MAX && offset % PAGE == SHORT_HEADER {
        lsn - SHORT_HEADER
    } else {
        lsn
    }
}

/// Undoes [`stop_writes`]: the server accepts writes again.
pub async fn allow_writes(b: &BackendConfig, check_timeout: Duration) -> Result<(), OpError> {
    let client = connect_to(b, check_timeout).await?;
    query(&client, check_timeout, "ALTER SYSTEM RESET default_transaction_read_only").await?;
    query(&client, check_timeout, "SELECT pg_reload_conf()").await?;
    wait_setting(&client, "off", Instant::now() + check_timeout * 4).await
}

/// Sets `synchronous_standby_names` (`None`: back to the server's own configuration) and
/// reloads; returns once this session sees the new value, so the postmaster has re-read it.
pub async fn set_synchronous(b: &BackendConfig, value: Option<&str>, check_timeout: Duration) -> Result<(), OpError> {
    let client = connect_to(b, check_timeout).await?;
    apply_synchronous(&client, value, check_timeout).await
}

async fn apply_synchronous(client: &Client, value: Option<&str>, bound: Duration) -> Result<(), OpError> {
    match value {
        Some(v) => {
            let literal = quote_literal(client, v, bound).await?;
            query(client, bound, &format!("ALTER SYSTEM SET synchronous_standby_names = {literal}")).await?;
        }
        None => {
            query(client, bound, "ALTER SYSTEM RESET synchronous_standby_names").await?;
        }
    }
    query(client, bound, "SELECT pg_reload_conf()").await?;
    // After RESET the value in force is the server's own: any change of it shows the reload.
    let Some(want) = value else { return Ok(()) };
    let deadline = Instant::now() + bound * 4;
    loop {
        let rows = query(client, bound, "SHOW synchronous_standby_names").await?;
        if first_row(&rows).and_then(|r| r.get(0)) == Some(want) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CheckError::Protocol(format!("synchronous_standby_names did not become {want:?} after pg_reload_conf()")).into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `s` as an SQL literal, quoted by the server (ALTER SYSTEM takes no parameters).
async fn quote_literal(client: &Client, s: &str, bound: Duration) -> Result<String, CheckError> {
    let quoted = tokio::time::timeout(bound, client.query_one("SELECT quote_literal($1::text)", &[&s]))
        .await
        .map_err(|_| CheckError::Timeout(bound))?
        .map_err(|e| CheckError::from_postgres(&e))?;
    Ok(quoted.get(0))
}

/// Polls a standby until it has replayed up to `target` (bounded by `within`).
pub async fn await_replay(b: &BackendConfig, target: u64, check_timeout: Duration, within: Duration) -> Result<u64, OpError> {
    let within = within.max(MIN_WAIT);
    let deadline = Instant::now() + within;
    let client = connect_to(b, check_timeout).await?;
    let mut replayed = None;
    loop {
        let rows = query(&client, check_timeout, "SELECT pg_last_wal_replay_lsn()::text").await?;
        replayed = first_row(&rows).and_then(|r| r.get(0)).and_then(parse_lsn).or(replayed);
        if replayed >= Some(target) {
            return Ok(replayed.unwrap_or(target));
        }
        if Instant::now() >= deadline {
            return Err(OpError::Behind { replayed, target, within });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What re-pointing did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repointed {
    /// The replication slot made sure of on the new primary.
    pub slot: Option<String>,
    /// False when `primary_conninfo` already named the new primary.
    pub changed: bool,
}

/// Points `standby`'s WAL receiver at `primary`: its `primary_conninfo` gets the primary's
/// host and port and, as `application_name`, the standby's backend name (so a primary's
/// `synchronous_standby_names` can name it); everything else is kept. Its replication slot
/// is created on the primary if missing (slots are not carried over by a promotion), and the
/// configuration is reloaded. With `recovery_target_timeline = 'latest'` (the default) it
/// then follows the new timeline.
pub async fn repoint(standby: &BackendConfig, primary: &BackendConfig, check_timeout: Duration) -> Result<Repointed, OpError> {
    let s = connect_to(standby, check_timeout).await?;
    let setting = |rows: &[tokio_postgres::SimpleQueryMessage]| first_row(rows).and_then(|r| r.get(0)).unwrap_or("").to_string();
    let current = setting(&query(&s, check_timeout, "SHOW primary_conninfo").await?);
    let slot = setting(&query(&s, check_timeout, "SHOW primary_slot_name").await?);
    let wanted = conninfo::repoint(&current, &primary.host, primary.port, &standby.name)?;
    let slot = (!slot.is_empty()).then_some(slot);
    if let Some(name) = &slot {
        let p = connect_to(primary, check_timeout).await?;
        let create = "SELECT pg_create_physical_replication_slot($1, true) \
                      WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)";
        tokio::time::timeout(check_timeout, p.query(create, &[name]))
            .await
            .map_err(|_| CheckError::Timeout(check_timeout))?
            .map_err(|e| CheckError::from_postgres(&e))?;
    }
    let changed = conninfo::address(&current) != conninfo::address(&wanted) || conninfo::application_name(&current) != conninfo::application_name(&wanted);
    if changed {
        let literal = quote_literal(&s, &wanted, check_timeout).await?;
        query(&s, check_timeout, &format!("ALTER SYSTEM SET primary_conninfo = {literal}")).await?;
        query(&s, check_timeout, "SELECT pg_reload_conf()").await?;
    }
    Ok(Repointed { slot, changed })
}

async fn connect_to(b: &BackendConfig, check_timeout: Duration) -> Result<Client, CheckError> {
    let tls = check_tls(b)?;
    connect(b, check_timeout, tls, None).await
}

async fn query(client: &Client, bound: Duration, sql: &str) -> Result<Vec<tokio_postgres::SimpleQueryMessage>, CheckError> {
    match tokio::time::timeout(bound, client.simple_query(sql)).await {
        Ok(r) => r.map_err(|e| CheckError::from_postgres(&e)),
        Err(_) => Err(CheckError::Timeout(bound)),
    }
}

fn count(rows: &[tokio_postgres::SimpleQueryMessage]) -> u64 {
    first_row(rows).and_then(|r| r.get(0)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Waits until this session sees `default_transaction_read_only = want`.
async fn wait_setting(client: &Client, want: &str, deadline: Instant) -> Result<(), OpError> {
    loop {
        let rows = query(client, Duration::from_secs(5), "SHOW default_transaction_read_only").await?;
        if first_row(&rows).and_then(|r| r.get(0)) == Some(want) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CheckError::Protocol(format!("default_transaction_read_only did not become {want} after pg_reload_conf()")).into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::record_end;

    #[test]
    fn insert_positions_past_a_page_header_are_brought_back_to_the_record_end() {
        assert_eq!(record_end(0x400_0028, 40), 0x400_0000, "segment start: long header");
        assert_eq!(record_end(0x400_2018, 8192 + 24), 0x400_2000, "page start: short header");
        assert_eq!(record_end(0x400_2028, 8192 + 40), 0x400_2028, "16 bytes into a page: a record ends there");
        assert_eq!(record_end(0x400_0150, 0x150), 0x400_0150);
    }
}
