//! pgfailover against a direct connection, HAProxy (TCP mode) and PgBouncer (session mode),
//! measured in one interleaved run on this machine:
//!
//!     cargo bench --bench compare
//!
//! Environment: BENCH_ROUNDS (3), BENCH_SECONDS per pgbench run (10), BENCH_COPY_OUT_MB
//! (1024), BENCH_COPY_IN_MB (512), BENCH_COPY_REPEAT (3: a bulk measurement is the best of
//! that many back-to-back runs), BENCH_IDLE connections (5000), BENCH_FAILOVER_TRIALS (5),
//! BENCH_ONLY=throughput,reads,memory,failover,operations (all; `concurrency` and `tls` are
//! opt-in: see concurrency.rs and tls.rs), BENCH_WORKLOADS=a,b,c,d,e (all),
//! BENCH_TARGETS=pgfailover,haproxy,pgbouncer,splice-floor (all that can run here; add
//! sockmap-floor for the in-kernel reference in floors.rs, opt-in: it needs root and makes
//! COPY a third slower), BENCH_PGFAILOVER_THREADS=1,0
//! (compare runtime variants side by side). HAProxy and PgBouncer are used when
//! installed (`apt-get install haproxy pgbouncer`).

// The tests' harness for the real binary: pgfailover is started, configured, waited for
// and stopped the same way in both.
#[path = "../../tests/common/binary/mod.rs"]
mod binary;
mod concurrency;
mod failover;
mod floors;
mod idle;
mod operations;
mod targets;
mod tls;
mod workloads;

use std::collections::HashMap;
use std::time::Instant;

use pgfailover::localpg::{find_bindir, Cluster, ClusterOptions};
use targets::Target;
use workloads::Workload;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    // NaN (a failed run) sorts last.
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("idle-client") {
        idle::client_main(&args[2], args[3].parse().unwrap());
        return;
    }
    if args.get(1).map(String::as_str) == Some("floor-proxy") {
        floors::main(&args[2], &args[3], &args[4]);
        return;
    }
    let only = std::env::var("BENCH_ONLY").unwrap_or_else(|_| "throughput,reads,memory,failover,operations".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    println!("machine: {} cores, {cpu}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    if only.contains("throughput") {
        throughput(dir.path());
    }
    if only.contains("concurrency") {
        concurrency::run(dir.path());
    }
    if only.contains("reads") {
        reads(dir.path());
    }
    if only.contains("memory") {
        memory(dir.path());
    }
    if only.contains("failover") {
        failover_times(dir.path());
    }
    if only.contains("operations") {
        operations_times(dir.path());
    }
    if only.split(',').any(|m| m.trim() == "tls") {
        tls::run(dir.path());
    }
}

fn operations_times(dir: &std::path::Path) {
    use operations::Event;
    let rounds: usize = env_or("BENCH_ROUNDS", 7);
    println!("operations: a new session (connect, SELECT 1) every 10 ms through each event; {rounds} interleaved rounds");
    let c = Cluster::start(ClusterOptions { standbys: 1, ..Default::default() }).expect("cluster");
    let mut rows: Vec<(Event, usize, usize, Vec<f64>)> =
        [Event::Reload, Event::Takeover, Event::SocketUnitRestart, Event::PlainRestart].into_iter().map(|e| (e, 0, 0, Vec::new())).collect();
    for round in 0..rounds {
        for (event, sessions, failed, slowest) in rows.iter_mut() {
            let o = operations::trial(dir, &c, *event);
            println!("round {} {event:?}: {} sessions, {} failed, slowest {:.0} ms", round + 1, o.sessions, o.failed, o.slowest.as_secs_f64() * 1000.0);
            *sessions += o.sessions;
            *failed += o.failed;
            slowest.push(o.slowest.as_secs_f64() * 1000.0);
        }
    }
    println!("| event | sessions | failed | slowest session, median over rounds (max) |");
    println!("|---|---|---|---|");
    for (event, sessions, failed, slowest) in rows.iter_mut() {
        let max = slowest.iter().cloned().fold(0.0, f64::max);
        println!("| {event:?} | {sessions} | {failed} | {:.0} ms ({max:.0} ms) |", median(slowest));
    }
    println!();
}

fn throughput(dir: &std::path::Path) {
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let c = Cluster::start(ClusterOptions { standbys: 1, ..Default::default() }).expect("cluster");
    let pw = c.options.password.clone();
    let pgbench = find_bindir().unwrap().join("pgbench");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let direct = targets::direct(c.nodes[0].port);
    println!("preparing data (pgbench scale 10, COPY tables) ...");
    let copy_in = rt.block_on(workloads::prepare(direct.addr, &pw, &pgbench, env_or("BENCH_COPY_OUT_MB", 1024), env_or("BENCH_COPY_IN_MB", 512)));
    let wanted = std::env::var("BENCH_TARGETS").unwrap_or_else(|_| "pgfailover,haproxy,pgbouncer,splice-floor".into());
    let mut all: Vec<Target> = vec![direct];
    if wanted.contains("pgfailover") {
        match std::env::var("BENCH_PGFAILOVER_THREADS") {
            // Several runtime variants side by side, e.g. "1,0".
            Ok(list) => {
                for n in list.split(',').filter_map(|v| v.trim().parse().ok()) {
                    all.push(targets::pgfailover_threads(dir, c.nodes[0].port, Some(c.nodes[1].port), &pw, "1s", "1s", Some(n)));
                }
            }
            Err(_) => all.push(targets::pgfailover(dir, c.nodes[0].port, Some(c.nodes[1].port), &pw, "1s", "1s")),
        }
    }
    // Another build beside the one under test (the commit before a change): paired rounds.
    if let Some(base) = std::env::var_os("BENCH_PGFAILOVER_BASELINE").map(std::path::PathBuf::from) {
        all.push(targets::pgfailover_build(dir, c.nodes[0].port, Some(c.nodes[1].port), &pw, &base, "pgfailover-baseline"));
    }
    if wanted.contains("haproxy") {
        all.extend(targets::haproxy(dir, c.nodes[0].port));
    }
    if wanted.contains("pgbouncer") {
        all.extend(targets::pgbouncer(dir, c.nodes[0].port, &pw));
    }
    // References, not products: the least a userspace splice can cost, and (opt-in) the
    // kernel forwarding the bytes itself (eBPF sockmap).
    for kind in ["splice", "sockmap"] {
        if wanted.contains(&format!("{kind}-floor")) {
            match targets::floor(kind, c.nodes[0].port) {
                Some(t) => all.push(t),
                None => println!("{kind}-floor: cannot run here (sockmap needs root and bpf())"),
            }
        }
    }
    let letters = std::env::var("BENCH_WORKLOADS").unwrap_or_else(|_| "a,b,c,d,e".into());
    let chosen: Vec<usize> = (0..Workload::ALL.len()).filter(|i| letters.contains(["a", "b", "c", "d", "e"][*i])).collect();
    let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
    println!("targets: {names:?}; {rounds} rounds, {seconds}s per pgbench run, order rotated each round\n");
    let env = workloads::Env {
        pgbench: &pgbench,
        password: &pw,
        seconds,
        copy_in: &copy_in,
        direct: all[0].addr,
        copy_repeat: env_or("BENCH_COPY_REPEAT", 3),
        rt: &rt,
        sslmode: None,
    };
    // (workload, target) -> per-round values and CPU%.
    let mut values: HashMap<(usize, usize), Vec<f64>> = HashMap::new();
    let mut cpus: HashMap<(usize, usize), Vec<f64>> = HashMap::new();
    let mut cpu_units: HashMap<(usize, usize), Vec<f64>> = HashMap::new();
    for round in 0..rounds {
        for (wi, w) in Workload::ALL.iter().enumerate().filter(|(i, _)| chosen.contains(i)) {
            for k in 0..all.len() {
                let ti = (k + round) % all.len();
                let t = &all[ti];
                let cpu0 = t.pid.map(targets::cpu_seconds);
                let failovers_before = targets::failover_counts(&all);
                let start = Instant::now();
                // A target that fails a run (e.g. pgfailover refusing while it has no primary)
                // is recorded as NaN and the benchmark goes on.
                let v = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| workloads::run(*w, t.addr, &env))).unwrap_or(f64::NAN);
                let wall = start.elapsed().as_secs_f64();
                targets::warn_failovers(&all, failovers_before, &t.name, w.label());
                let cpu_s = t.pid.map(|p| targets::cpu_seconds(p) - cpu0.unwrap());
                let cpu = cpu_s.map(|c| c / wall * 100.0);
                // CPU per unit of work: per transaction (pgbench) or per MB (COPY), in µs.
                if let Some(c) = cpu_s.filter(|_| v > 0.0) {
                    cpu_units.entry((wi, ti)).or_default().push(c / (v * wall) * 1e6);
                }
                println!("round {} {:<32} {:<10} {:>12.1}{}", round + 1, w.label(), t.name, v, cpu.map(|c| format!("   cpu {c:.0}%")).unwrap_or_default());
                values.entry((wi, ti)).or_default().push(v);
                if let Some(c) = cpu {
                    cpus.entry((wi, ti)).or_default().push(c);
                }
            }
        }
    }
    for t in &all {
        if let Some(n) = t.admin.and_then(targets::failovers).filter(|n| *n > 0) {
            println!("\nWARNING: {} failed over {n} time(s) during the run (see the warnings above); after that it proxied to the promoted standby", t.name);
        }
    }
    println!("\nMedians; ratio = median over rounds of (target / direct in the same round) [min–max]; cpu = proxy process CPU%; CPU per unit = proxy CPU time per transaction (pgbench) or per MB (COPY).\n");
    let mut header = "| workload | direct |".to_string();
    for t in &all[1..] {
        header.push_str(&format!(" {} |", t.name));
    }
    println!("{header}\n|---|---|{}", "---|".repeat(all.len() - 1));
    for (wi, w) in Workload::ALL.iter().enumerate().filter(|(i, _)| chosen.contains(i)) {
        let d = values[&(wi, 0)].clone();
        let mut row = format!("| {} | {:.0} |", w.label(), median(&mut d.clone()));
        for ti in 1..all.len() {
            let v = &values[&(wi, ti)];
            let mut ratios: Vec<f64> = v.iter().zip(&d).map(|(a, b)| a / b).collect();
            let mut cpu = cpus.get(&(wi, ti)).cloned().unwrap_or_default();
            let mut per = cpu_units.get(&(wi, ti)).cloned().unwrap_or_default();
            let (lo, hi) = ratios.iter().fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
            let per_text = if per.is_empty() { String::new() } else { format!(", {:.1} µs CPU per unit", median(&mut per)) };
            row.push_str(&format!(
                " {:.0} (ratio **{:.3}** [{lo:.3}–{hi:.3}], cpu {:.0}%{per_text}) |",
                median(&mut v.clone()),
                median(&mut ratios),
                median(&mut cpu)
            ));
        }
        println!("{row}");
    }
    println!();
}

/// (a) and (b) through the read-only port, as a paired ratio to a direct connection to the
/// same standby, beside HAProxy in front of that standby.
fn reads(dir: &std::path::Path) {
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let c = Cluster::start(ClusterOptions { standbys: 1, ..Default::default() }).expect("cluster");
    let pw = c.options.password.clone();
    let pgbench = find_bindir().unwrap().join("pgbench");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    println!("read-only port: preparing data (pgbench scale 10) on the primary ...");
    let copy_in = rt.block_on(workloads::prepare(targets::direct(c.nodes[0].port).addr, &pw, &pgbench, 1, 1));
    // The standby must have the data before it is read.
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while c.psql(1, "select count(*) from pgbench_accounts").ok().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0) < 1_000_000 {
        assert!(Instant::now() < deadline, "the standby never got the pgbench data");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut all: Vec<Target> =
        vec![targets::direct_named(c.nodes[1].port, "direct-standby"), targets::pgfailover_read(dir, c.nodes[0].port, c.nodes[1].port, &pw)];
    all.extend(targets::haproxy_named(dir, c.nodes[1].port, "haproxy-ro"));
    let env = workloads::Env { pgbench: &pgbench, password: &pw, seconds, copy_in: &copy_in, direct: all[0].addr, copy_repeat: 1, rt: &rt, sslmode: None };
    let chosen = [Workload::SelectC1, Workload::SelectC16];
    let mut values: HashMap<(usize, usize), Vec<f64>> = HashMap::new();
    for round in 0..rounds {
        for (wi, w) in chosen.iter().enumerate() {
            for k in 0..all.len() {
                let ti = (k + round) % all.len();
                let v = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| workloads::run(*w, all[ti].addr, &env))).unwrap_or(f64::NAN);
                println!("round {} {:<32} {:<16} {:>12.1}", round + 1, w.label(), all[ti].name, v);
                values.entry((wi, ti)).or_default().push(v);
            }
        }
    }
    println!("\nRead-only port, medians; ratio = median over rounds of (target / direct-standby in the same round).\n");
    let mut header = "| workload | direct-standby |".to_string();
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
            row.push_str(&format!(" {:.0} (ratio **{:.3}**, {lo:.3}–{hi:.3}) |", median(&mut v.clone()), median(&mut ratios)));
        }
        println!("{row}");
    }
    println!();
}

fn memory(dir: &std::path::Path) {
    let n: usize = env_or("BENCH_IDLE", 5000);
    let c = Cluster::start(ClusterOptions { standbys: 0, ..Default::default() }).expect("cluster");
    let pw = c.options.password.clone();
    let Some(bouncer) = targets::pgbouncer(dir, c.nodes[0].port, &pw) else {
        println!("memory: skipped (needs pgbouncer as the backend that holds {n} idle connections)");
        return;
    };
    println!("memory per idle connection ({n} idle clients; PgBouncer behind the proxy):");
    let ours = targets::pgfailover(dir, bouncer.addr.port(), None, &pw, "1s", "1s");
    let per = idle::per_connection(ours.addr, ours.pid.unwrap(), n);
    println!("| pgfailover | {per:.0} bytes/connection |");
    drop(ours);
    // The build before a change, when given: idle memory must not grow.
    if let Some(base) = std::env::var_os("BENCH_PGFAILOVER_BASELINE").map(std::path::PathBuf::from) {
        let b = targets::pgfailover_build(dir, bouncer.addr.port(), None, &pw, &base, "pgfailover-baseline");
        let per = idle::per_connection(b.addr, b.pid.unwrap(), n);
        println!("| pgfailover-baseline | {per:.0} bytes/connection |");
    }
    if let Some(h) = targets::haproxy(dir, bouncer.addr.port()) {
        let per = idle::per_connection(h.addr, h.pid.unwrap(), n);
        println!("| haproxy | {per:.0} bytes/connection |");
    }
    println!();
}

fn failover_times(dir: &std::path::Path) {
    let trials: usize = env_or("BENCH_FAILOVER_TRIALS", 5);
    println!("failover: immediate stop of the primary -> first INSERT acknowledged by the promoted standby");
    println!("(new connection + INSERT every 20 ms; interval 250ms, timeout 500ms, threshold 3)");
    println!("one proxy alone, and three proxies coordinated through etcd (connections to each in turn), interleaved");
    // etcd for the coordinated trials, when installed (Debian: etcd-server).
    let etcd = pgfailover::testkit::etcd::Etcd::start(1).map_err(|e| println!("coordinated trials skipped: {e}")).ok();
    let mut rows: Vec<(&str, usize, Vec<f64>, u64)> = vec![("1 proxy", 1, Vec::new(), 0)];
    if etcd.is_some() {
        rows.push(("3 coordinated proxies", 3, Vec::new(), 0));
    }
    for i in 0..trials {
        for (label, n, times, refused) in rows.iter_mut() {
            let t = failover::trial(dir, *n, etcd.as_ref().filter(|_| *n > 1));
            println!(
                "trial {} ({label}): {:.0} ms, refused connections {}, sessions cut in flight {}",
                i + 1,
                t.time.as_secs_f64() * 1000.0,
                t.refused,
                t.writes_lost_sessions
            );
            times.push(t.time.as_secs_f64() * 1000.0);
            *refused += t.refused;
        }
    }
    for (label, _, times, refused) in rows.iter_mut() {
        let max = times.iter().cloned().fold(0.0, f64::max);
        let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
        println!("| failover, {label} | median {:.0} ms | min {min:.0} ms | max {max:.0} ms | refused {refused} |", median(times));
    }
    println!();
}
