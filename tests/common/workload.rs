//! An application's sessions through a proxy, each kind counting what it saw: autocommit
//! writers, workers running short transactions, mostly idle sessions and readers. Every
//! failure is recorded with the statement it happened on and the error the client got, so a
//! test can say which transactions were aborted half-way, which commits are in doubt, and
//! whether a statement that failed had run at all.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// How many sessions of each kind.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    pub writers: usize,
    pub workers: usize,
    pub idle: usize,
    pub readers: usize,
}

/// What a session was doing when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Writer,
    Worker,
    Idle,
    Reader,
}

/// One failure a client saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub role: Role,
    /// Connecting (`None`), or the statement of its unit of work (a worker: 0 BEGIN, 1
    /// INSERT, 2 the sleep, 3 UPDATE, 4 COMMIT; the others have one statement, 0).
    pub step: Option<u8>,
    /// The SQLSTATE, from the statement's error or the connection's end.
    pub code: Option<String>,
    /// The message and detail, for assertions and their output.
    pub text: String,
    /// The detail says no statement of the session was running (the proxy ended it quiet).
    pub quiet: bool,
    /// The id the failed unit of work would have written (absent from every server if the
    /// statement never ran).
    pub id: Option<i64>,
}

/// What the workload saw, once stopped.
#[derive(Debug, Default)]
pub struct Report {
    /// Acknowledged autocommit inserts and committed transactions, by id.
    pub acked: Vec<i64>,
    pub failures: Vec<Seen>,
    /// Units of work that succeeded (all kinds).
    pub done: u64,
}

impl Report {
    /// Transactions that failed after their first statement ran (BEGIN excepted).
    pub fn aborted_mid_way(&self) -> Vec<&Seen> {
        self.failures.iter().filter(|f| f.role == Role::Worker && matches!(f.step, Some(1..=3))).collect()
    }
    /// COMMITs that failed: the client cannot know whether they committed.
    pub fn in_doubt(&self) -> Vec<&Seen> {
        self.failures.iter().filter(|f| f.role == Role::Worker && f.step == Some(4)).collect()
    }
    /// `25006`: a write sent to a read-only (old) primary.
    pub fn read_only(&self) -> Vec<&Seen> {
        self.failures.iter().filter(|f| f.code.as_deref() == Some("25006")).collect()
    }
    /// Failures that are not a connection-class error on the first statement of a unit of
    /// work: a 57P01 whose detail says the session was idle, or the connection found closed
    /// (a driver that read the 57P01 as the answer to a statement of its own, such as
    /// tokio-postgres's Close of a dropped prepared statement, reports the next one so).
    /// Whether that statement ran is the table's to say: see [`Report::failed_ids`].
    pub fn not_clean(&self) -> Vec<&Seen> {
        let clean = |f: &&Seen| f.step == Some(0) && ((f.code.as_deref() == Some("57P01") && f.quiet) || (f.code.is_none() && f.text.contains("closed")));
        self.failures.iter().filter(|f| !clean(f)).collect()
    }

    /// The ids of failed units of work: none of them may be in any server's table.
    pub fn failed_ids(&self) -> Vec<i64> {
        self.failures.iter().filter_map(|f| f.id).collect()
    }
}

/// The running workload.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    report: Arc<Mutex<Report>>,
}

/// The table every workload writes: one row per acknowledged write; a worker's row gets
/// step 2 in the same transaction, so a row left at step 1 is a torn transaction.
pub const TABLE: &str = "create table if not exists work(id bigint primary key, step int not null)";

fn conn_str(addr: SocketAddr, pw: &str) -> String {
    format!("host={} port={} user=postgres password={pw} dbname=postgres connect_timeout=20", addr.ip(), addr.port())
}

/// A connection and the task that reads it (its end carries a FATAL the server or proxy sent
/// unasked).
struct Conn {
    client: Client,
    reader: JoinHandle<Result<(), tokio_postgres::Error>>,
}

async fn open(addr: SocketAddr, pw: &str) -> Result<Conn, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&conn_str(addr, pw), NoTls).await?;
    Ok(Conn { client, reader: tokio::spawn(conn) })
}

/// The error a failed statement stands for: its own, or (connection closed) the one that
/// closed the connection.
async fn seen(role: Role, step: Option<u8>, id: Option<i64>, e: tokio_postgres::Error, conn: Option<Conn>) -> Seen {
    let mut db = e.as_db_error().cloned();
    if db.is_none() {
        if let Some(c) = conn {
            if let Ok(Ok(Err(end))) = tokio::time::timeout(Duration::from_secs(5), c.reader).await {
                db = end.as_db_error().cloned();
            }
        }
    }
    match db {
        Some(d) => {
            let detail = d.detail().unwrap_or_default().to_string();
            Seen {
                role,
                step,
                code: Some(d.code().code().to_string()),
                quiet: detail.contains("was idle"),
                text: format!("{}: {} ({detail})", d.code().code(), d.message()),
                id,
            }
        }
        None => Seen { role, step, code: None, quiet: false, text: e.to_string(), id },
    }
}

impl Workload {
    /// Creates the table through `addr` and starts the sessions; ids start at `base`.
    pub async fn start(addr: SocketAddr, pw: &str, mix: Mix, base: i64) -> Workload {
        let setup = open(addr, pw).await.expect("connect for the workload's table");
        setup.client.batch_execute(TABLE).await.expect("create the workload's table");
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(Report::default()));
        let next = Arc::new(AtomicI64::new(base));
        let mut tasks = Vec::new();
        let roles = [(Role::Writer, mix.writers), (Role::Worker, mix.workers), (Role::Idle, mix.idle), (Role::Reader, mix.readers)];
        for (role, n) in roles {
            for k in 0..n {
                let (stop, report, next, pw) = (stop.clone(), report.clone(), next.clone(), pw.to_string());
                tasks.push(tokio::spawn(async move { session(addr, pw, role, k, stop, report, next).await }));
            }
        }
        Workload { stop, tasks, report }
    }

    /// Units of work done so far.
    pub fn done(&self) -> u64 {
        self.report.lock().unwrap().done
    }

    /// Stops every session (each ends its unit of work) and returns what they saw.
    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        std::mem::take(&mut *self.report.lock().unwrap())
    }
}

async fn session(addr: SocketAddr, pw: String, role: Role, k: usize, stop: Arc<AtomicBool>, report: Arc<Mutex<Report>>, next: Arc<AtomicI64>) {
    let mut conn: Option<Conn> = None;
    let mut turn = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = conn.take() else {
            match open(addr, &pw).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    let s = seen(role, None, None, e, None).await;
                    report.lock().unwrap().failures.push(s);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            continue;
        };
        turn += 1;
        let id = matches!(role, Role::Writer | Role::Worker).then(|| next.fetch_add(1, Ordering::Relaxed));
        let outcome = match (role, id) {
            (Role::Writer, Some(id)) => c.client.execute("insert into work values ($1, 0)", &[&id]).await.map(|_| Some(id)).map_err(|e| (0u8, e)),
            (Role::Worker, Some(id)) => transaction(&c.client, id).await,
            (Role::Idle, _) => {
                // Mostly idle: a short statement now and then.
                tokio::time::sleep(Duration::from_millis(150 + 37 * (k as u64 % 5))).await;
                c.client.simple_query("select 1").await.map(|_| None).map_err(|e| (0, e))
            }
            _ => {
                let r = c.client.query_one("select count(*) from work", &[]).await.map(|_| None).map_err(|e| (0, e));
                tokio::time::sleep(Duration::from_millis(10 + turn % 7)).await;
                r
            }
        };
        match outcome {
            Ok(id) => {
                let mut r = report.lock().unwrap();
                r.done += 1;
                r.acked.extend(id);
                drop(r);
                conn = Some(c);
            }
            Err((step, e)) => {
                let s = seen(role, Some(step), id, e, Some(c)).await;
                report.lock().unwrap().failures.push(s);
            }
        }
    }
}

/// BEGIN; INSERT; a 30 ms sleep; UPDATE; COMMIT — each statement on its own. Returns the
/// committed id, or the step that failed.
async fn transaction(c: &Client, id: i64) -> Result<Option<i64>, (u8, tokio_postgres::Error)> {
    c.batch_execute("begin").await.map_err(|e| (0, e))?;
    c.execute("insert into work values ($1, 1)", &[&id]).await.map_err(|e| (1, e))?;
    c.batch_execute("select pg_sleep(0.03)").await.map_err(|e| (2, e))?;
    c.execute("update work set step = 2 where id = $1", &[&id]).await.map_err(|e| (3, e))?;
    c.batch_execute("commit").await.map_err(|e| (4, e))?;
    Ok(Some(id))
}
