//! TLS termination (`BENCH_ONLY=tls`, opt-in): pgfailover with `tls.mode = "terminate"` beside
//! PgBouncer with `client_tls_sslmode = require`, both in clear to the server, and pgfailover
//! passing TLS through, on workloads (a), (b) and (c) with every client over TLS
//! (`PGSSLMODE=require`). Each figure is paired with a direct TLS connection to PostgreSQL in
//! the same round (ratio = target / direct), the order rotated each round; BENCH_ROUNDS
//! (7), BENCH_SECONDS (10).
//!
//!     BENCH_ONLY=tls cargo bench --bench compare

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use pgfailover::localpg::{find_bindir, Cluster, ClusterOptions};

use crate::targets::{self, Target};
use crate::workloads::{self, Workload};
use crate::{env_or, median};

/// A self-signed certificate and key for both proxies, readable by PgBouncer (which runs as
/// the `postgres` user).
fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("bench-tls.crt"), dir.join("bench-tls.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
    for f in [&cert, &key] {
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    (cert, key)
}

pub fn run(dir: &Path) {
    let rounds: usize = env_or("BENCH_ROUNDS", 7);
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let c = Cluster::start(ClusterOptions { standbys: 1, ssl: true, ..Default::default() }).expect("cluster");
    let pw = c.options.password.clone();
    let pgbench = find_bindir().unwrap().join("pgbench");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    println!("tls: preparing data (pgbench scale 10) ...");
    let copy_in = rt.block_on(workloads::prepare(targets::direct(c.nodes[0].port).addr, &pw, &pgbench, 1, 1));
    let (cert, key) = certificate(dir);
    let mut all: Vec<Target> = vec![targets::direct_named(c.nodes[0].port, "direct-tls")];
    all.push(targets::pgfailover_terminate(dir, c.nodes[0].port, Some(c.nodes[1].port), &pw, &cert, &key));
    match targets::pgbouncer_tls(dir, c.nodes[0].port, &pw, &cert, &key) {
        Some(t) => all.push(t),
        None => println!("pgbouncer-tls: not installed (apt-get install pgbouncer)"),
    }
    let mut passthrough = targets::pgfailover(dir, c.nodes[0].port, Some(c.nodes[1].port), &pw, "1s", "1s");
    passthrough.name = "pgfailover-passthrough".into();
    all.push(passthrough);
    let env =
        workloads::Env { pgbench: &pgbench, password: &pw, seconds, copy_in: &copy_in, direct: all[0].addr, copy_repeat: 1, rt: &rt, sslmode: Some("require") };
    let chosen = [Workload::SelectC1, Workload::SelectC16, Workload::ConnectPerTx];
    let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
    println!("tls targets: {names:?}; every client sslmode=require; {rounds} rounds, {seconds}s per pgbench run, order rotated each round\n");
    let mut values: HashMap<(usize, usize), Vec<f64>> = HashMap::new();
    let mut per_tx: HashMap<(usize, usize), Vec<f64>> = HashMap::new();
    for round in 0..rounds {
        for (wi, w) in chosen.iter().enumerate() {
            for k in 0..all.len() {
                let ti = (k + round) % all.len();
                let t = &all[ti];
                let cpu0 = t.pid.map(targets::cpu_seconds);
                let start = Instant::now();
                let v = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| workloads::run(*w, t.addr, &env))).unwrap_or(f64::NAN);
                let wall = start.elapsed().as_secs_f64();
                let cpu_s = t.pid.map(|p| targets::cpu_seconds(p) - cpu0.unwrap_or(0.0));
                if let Some(cs) = cpu_s.filter(|_| v > 0.0) {
                    per_tx.entry((wi, ti)).or_default().push(cs / (v * wall) * 1e6);
                }
                println!("round {} {:<32} {:<22} {:>12.1}", round + 1, w.label(), t.name, v);
                values.entry((wi, ti)).or_default().push(v);
            }
        }
    }
    println!("\nTLS, medians; ratio = median over rounds of (target / direct-tls in the same round) [min–max]; CPU = the proxy's CPU time per transaction.\n");
    let mut header = "| workload | direct-tls |".to_string();
    for t in &all[1..] {
        header.push_str(&format!(" {} |", t.name));
    }
    println!("{header}\n|---|---|{}", "---|".repeat(all.len() - 1));
    for (wi, w) in chosen.iter().enumerate() {
        let d = values[&(wi, 0)].clone();
        let mut row = format!("| {} | {:.0} |", w.label(), median(&mut d.clone()));
        for ti in 1..all.len() {
            let v = &values[&(wi, ti)];
            let mut ratios: Vec<f64> = v.iter().zip(&d).map(|(a, b)| a / b).collect();
            let (lo, hi) = ratios.iter().fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
            let mut cpu = per_tx.get(&(wi, ti)).cloned().unwrap_or_default();
            let cpu_text = if cpu.is_empty() { String::new() } else { format!(", {:.1} µs CPU/tx", median(&mut cpu)) };
            row.push_str(&format!(" {:.0} (ratio **{:.3}** [{lo:.3}–{hi:.3}]{cpu_text}) |", median(&mut v.clone()), median(&mut ratios)));
        }
        println!("{row}");
    }
    println!();
}
