//! The measured workloads: pgbench select-only runs and bulk COPY in both directions.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::NoTls;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// pgbench -S -c1 -j1
    SelectC1,
    /// pgbench -S -c16 -j2
    SelectC16,
    /// pgbench -S -C -c8 -j2 (a connection per transaction)
    ConnectPerTx,
    CopyOut,
    CopyIn,
}

impl Workload {
    pub const ALL: [Workload; 5] = [Workload::SelectC1, Workload::SelectC16, Workload::ConnectPerTx, Workload::CopyOut, Workload::CopyIn];
    pub fn label(self) -> &'static str {
        match self {
            Workload::SelectC1 => "(a) pgbench -S -c1 -j1 [tps]",
            Workload::SelectC16 => "(b) pgbench -S -c16 -j2 [tps]",
            Workload::ConnectPerTx => "(c) pgbench -S -C -c8 -j2 [tps]",
            Workload::CopyOut => "(d) COPY out [MB/s]",
            Workload::CopyIn => "(e) COPY in [MB/s]",
        }
    }
}

pub struct Env<'a> {
    pub pgbench: &'a Path,
    pub password: &'a str,
    pub seconds: u64,
    /// Rows to COPY in, already formatted.
    pub copy_in: &'a Bytes,
    pub direct: SocketAddr,
    /// Bulk runs per measurement; the best one counts.
    pub copy_repeat: usize,
    /// libpq's `sslmode` for the pgbench runs (`None`: libpq's default, `prefer`).
    pub sslmode: Option<&'a str>,
    pub rt: &'a tokio::runtime::Runtime,
}

/// Runs one workload against `addr`; returns transactions/s or MB/s.
pub fn run(w: Workload, addr: SocketAddr, env: &Env) -> f64 {
    match w {
        Workload::SelectC1 => pgbench(env, addr, &["-c1", "-j1"]),
        Workload::SelectC16 => pgbench(env, addr, &["-c16", "-j2"]),
        Workload::ConnectPerTx => pgbench(env, addr, &["-C", "-c8", "-j2"]),
        // A bulk run is one client, one proxy and one backend on two vCPUs: when the
        // scheduler puts the backend on the client's vCPU the run goes at half speed (COPY in
        // measured 170 and 335 MB/s back to back for the same target). The best of
        // `copy_repeat` back-to-back runs measures the data path instead of that placement.
        Workload::CopyOut => best_of(env.copy_repeat, || env.rt.block_on(copy_out(addr, env.password))),
        Workload::CopyIn => best_of(env.copy_repeat, || {
            env.rt.block_on(truncate(env.direct, env.password));
            env.rt.block_on(copy_in(addr, env.password, env.copy_in))
        }),
    }
}

fn best_of(n: usize, mut run: impl FnMut() -> f64) -> f64 {
    (0..n.max(1)).map(|_| run()).fold(0.0, f64::max)
}

fn pgbench(env: &Env, addr: SocketAddr, args: &[&str]) -> f64 {
    let out = Command::new(env.pgbench)
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-U", "postgres", "-S", "-n", "-T", &env.seconds.to_string()])
        .args(args)
        .arg("postgres")
        .env("PGPASSWORD", env.password)
        .envs(env.sslmode.map(|m| ("PGSSLMODE", m)))
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pgbench failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    let done: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("pgbench transaction count");
    done / env.seconds as f64
}

fn conn_str(addr: SocketAddr, pw: &str) -> String {
    format!("host={} port={} user=postgres password={pw} dbname=postgres", addr.ip(), addr.port())
}

async fn client(addr: SocketAddr, pw: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(&conn_str(addr, pw), NoTls).await.expect("connect");
    tokio::spawn(conn);
    c
}

async fn copy_out(addr: SocketAddr, pw: &str) -> f64 {
    let c = client(addr, pw).await;
    let start = Instant::now();
    let mut stream = Box::pin(c.copy_out("COPY bench_big TO STDOUT").await.unwrap());
    let mut n = 0usize;
    while let Some(chunk) = stream.next().await {
        n += chunk.unwrap().len();
    }
    n as f64 / 1e6 / start.elapsed().as_secs_f64()
}

async fn truncate(direct: SocketAddr, pw: &str) {
    client(direct, pw).await.batch_execute("TRUNCATE bench_in").await.unwrap();
}

async fn copy_in(addr: SocketAddr, pw: &str, data: &Bytes) -> f64 {
    let c = client(addr, pw).await;
    let start = Instant::now();
    let sink = c.copy_in("COPY bench_in FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut off = 0;
    while off < data.len() {
        let end = (off + (1 << 20)).min(data.len());
        // Chunks end on a row boundary so every CopyData holds whole rows.
        let end = if end < data.len() { off + data[off..end].iter().rposition(|b| *b == b'\n').unwrap() + 1 } else { end };
        sink.send(data.slice(off..end)).await.unwrap();
        off = end;
    }
    sink.finish().await.unwrap();
    data.len() as f64 / 1e6 / start.elapsed().as_secs_f64()
}

/// Creates the tables the workloads use: pgbench's, ~`out_mb` MB to copy out, an empty one
/// to copy into. Returns the rows to copy in (~`in_mb` MB).
pub async fn prepare(direct: SocketAddr, pw: &str, pgbench: &Path, out_mb: usize, in_mb: usize) -> Bytes {
    let st = Command::new(pgbench)
        .args(["-i", "-q", "-s", "10", "-h", "127.0.0.1", "-p", &direct.port().to_string(), "-U", "postgres", "postgres"])
        .env("PGPASSWORD", pw)
        .output()
        .expect("pgbench -i");
    assert!(st.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&st.stderr));
    let c = client(direct, pw).await;
    // ~300 bytes per row in COPY text format.
    let rows = out_mb * 1_000_000 / 300;
    c.batch_execute(&format!(
        "DROP TABLE IF EXISTS bench_big; CREATE TABLE bench_big AS SELECT g, repeat(md5(g::text), 9) AS s FROM generate_series(1, {rows}) g; \
         DROP TABLE IF EXISTS bench_in; CREATE UNLOGGED TABLE bench_in (g bigint, s text);"
    ))
    .await
    .unwrap();
    c.batch_execute("VACUUM ANALYZE bench_big").await.unwrap();
    // The data just written goes to disk now, not in the middle of a measured run. Without
    // this, both servers stalled together for ~2 s within the first minute of a run (every
    // proxy's checks of both timed out at once; most likely the kernel writing back these
    // few hundred MB), which is long enough for a failover under the default health settings.
    c.batch_execute("CHECKPOINT").await.unwrap();
    rustix::fs::sync();
    let mut data = Vec::with_capacity(in_mb * 1_000_000 + 400);
    let mut g = 0u64;
    let row_text = "y".repeat(280);
    while data.len() < in_mb * 1_000_000 {
        g += 1;
        data.extend_from_slice(format!("{g}\t{row_text}\n").as_bytes());
    }
    let _ = Duration::ZERO;
    Bytes::from(data)
}
