//! Workload (b), `pgbench -S -c16 -j2`, against a direct connection, HAProxy and pgfailover
//! (and, with `BENCH_PGFAILOVER_BASELINE=<binary>`, another build of pgfailover beside it),
//! in interleaved rounds (`BENCH_ROUNDS`, default 9). Prints, per target, the paired ratio
//! to direct (median and range over rounds), the proxy's CPU time per transaction, and how
//! busy the whole machine was.
//!
//!     BENCH_ONLY=concurrency cargo bench --bench compare

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::binary::Cluster;
use crate::targets::{self, Target};
use crate::workloads::{self, Workload};
use crate::{env_or, median};

/// One round's figures for one target.
struct Sample {
    tps: f64,
    /// Proxy CPU seconds per transaction (None for direct).
    cpu_per_tx: Option<f64>,
    /// Share of the machine's CPU time not idle during the run.
    busy: f64,
}

/// Non-idle and total jiffies of the whole machine so far (`/proc/stat`'s first line).
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle + iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

pub fn run(dir: &Path) {
    let rounds: usize = env_or("BENCH_ROUNDS", 9);
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let c = Cluster::start(pgfailover::localpg::ClusterOptions { standbys: 1, ..Default::default() }).expect("cluster");
    let pw = c.options.password.clone();
    let pgbench = pgfailover::localpg::find_bindir().unwrap().join("pgbench");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let direct = targets::direct(c.nodes[0].port);
    println!("concurrency: preparing data (pgbench scale 10) ...");
    let copy_in = rt.block_on(workloads::prepare(direct.addr, &pw, &pgbench, 1, 1));
    let mut all: Vec<Target> = vec![direct];
    all.extend(targets::haproxy(dir, c.nodes[0].port));
    all.push(targets::pgfailover(dir, c.nodes[0].port, Some(c.nodes[1].port), &pw, "1s", "1s"));
    if let Some(base) = std::env::var_os("BENCH_PGFAILOVER_BASELINE").map(PathBuf::from) {
        all.push(targets::pgfailover_build(dir, c.nodes[0].port, Some(c.nodes[1].port), &pw, &base, "pgfailover-baseline"));
    }
    if std::env::var("BENCH_TARGETS").is_ok_and(|t| t.contains("pgbouncer")) {
        all.extend(targets::pgbouncer(dir, c.nodes[0].port, &pw));
    }
    let env = workloads::Env { pgbench: &pgbench, password: &pw, seconds, copy_in: &copy_in, direct: all[0].addr, copy_repeat: 1, rt: &rt, sslmode: None };
    let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
    println!("targets: {names:?}; {rounds} rounds of {}, {seconds}s each, order rotated each round\n", Workload::SelectC16.label());
    let mut samples: Vec<Vec<Sample>> = (0..all.len()).map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..all.len() {
            let ti = (k + round) % all.len();
            let t = &all[ti];
            let cpu0 = t.pid.map(targets::cpu_seconds);
            let (busy0, total0) = machine_jiffies();
            let failovers_before = targets::failover_counts(&all);
            let start = Instant::now();
            let tps = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| workloads::run(Workload::SelectC16, t.addr, &env))).unwrap_or(f64::NAN);
            let wall = start.elapsed().as_secs_f64();
            let (busy1, total1) = machine_jiffies();
            let busy = (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64;
            let cpu_per_tx = t.pid.map(|p| (targets::cpu_seconds(p) - cpu0.unwrap_or(0.0)) / (tps * wall));
            println!(
                "round {} {:<22} {:>10.1} tps{}   machine busy {:.0}%",
                round + 1,
                t.name,
                tps,
                cpu_per_tx.map(|c| format!("   cpu/tx {:.1} µs", c * 1e6)).unwrap_or_default(),
                busy * 100.0
            );
            samples[ti].push(Sample { tps, cpu_per_tx, busy });
            targets::warn_failovers(&all, failovers_before, &t.name, Workload::SelectC16.label());
        }
    }
    println!("\n(b) pgbench -S -c16 -j2, {rounds} interleaved rounds: ratio = target / direct in the same round; median [min–max].\n");
    println!("| target | ratio to direct | proxy CPU per transaction | whole machine busy |");
    println!("|---|---|---|---|");
    let direct_tps: Vec<f64> = samples[0].iter().map(|s| s.tps).collect();
    for (t, s) in all.iter().zip(&samples) {
        let mut ratios: Vec<f64> = s.iter().zip(&direct_tps).map(|(a, d)| a.tps / d).collect();
        let mut cpu: Vec<f64> = s.iter().filter_map(|x| x.cpu_per_tx).map(|c| c * 1e6).collect();
        let mut busy: Vec<f64> = s.iter().map(|x| x.busy * 100.0).collect();
        let range = |v: &[f64]| v.iter().fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
        let (rlo, rhi) = range(&ratios);
        let cpu_text = if cpu.is_empty() {
            "–".to_string()
        } else {
            let (lo, hi) = range(&cpu);
            format!("{:.1} µs [{lo:.1}–{hi:.1}]", median(&mut cpu))
        };
        println!("| {} | {:.3} [{rlo:.3}–{rhi:.3}] | {cpu_text} | {:.0} % |", t.name, median(&mut ratios), median(&mut busy));
    }
    println!();
}
