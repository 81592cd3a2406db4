//! `pgfailover demo`: a local primary + standby in a temporary directory with the proxy in
//! front, for trying the product in one command. Ctrl-C stops and removes everything.

use std::process::ExitCode;

use pgfailover::config::{process_env, Config, Overrides, Secret};
use pgfailover::localpg::{Cluster, ClusterOptions};

/// 32 hex digits from the kernel's random source.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    if openssl::rand::rand_bytes(&mut bytes).is_err() {
        // Unlikely; the demo is local, and the token still differs per run.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        bytes = t.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn main(overrides: Overrides) -> ExitCode {
    // The demo's cluster replaces any configured backends; other settings still apply.
    let mut cfg = match Config::load(None, &process_env, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgfailover: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!("pgfailover demo: starting a local PostgreSQL primary and standby ...");
    let cluster = match Cluster::start(ClusterOptions { standbys: 1, ..Default::default() }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgfailover demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let password = cluster.options.password.clone();
    cfg.primary.name = "pg-a".into();
    cfg.primary.host = "127.0.0.1".into();
    cfg.primary.port = cluster.nodes[0].port;
    cfg.primary.password = Some(Secret::new(password.clone()));
    let mut standby = cfg.primary.clone();
    standby.name = "pg-b".into();
    standby.port = cluster.nodes[1].port;
    cfg.standbys = vec![standby];
    // The trigger needs a token: the demo makes one up (unless one is configured) and
    // prints a curl line that uses it.
    let token = cfg.admin_token.clone().unwrap_or_else(|| Secret::new(random_token()));
    cfg.admin_token = Some(token.clone());
    let logs = super::logging::init(&cfg);
    let code = super::run::until_signal(cfg.clone(), logs, None, |bound| {
        let a = bound.client_addr;
        println!(
            "\npgfailover demo is running (Ctrl-C stops it and deletes the cluster in {dir}).\n\n\
             primary  pg-a  127.0.0.1:{p0}\n\
             standby  pg-b  127.0.0.1:{p1}\n\
             proxy         {a}\n\n\
             Connect through the proxy:\n  \
               psql \"postgresql://postgres:{password}@{ip}:{port}/postgres\"\n\n\
             Admin port:\n  \
               curl -s http://{admin}/failover/status\n  \
               curl -s http://{admin}/metrics\n\n\
             Switch over to the standby (nothing lost; admin token {token}):\n  \
               curl -s -X POST -H 'Authorization: Bearer {token}' http://{admin}/failover/trigger\n\n\
             Make the primary fail and watch the standby take over:\n  \
               kill -QUIT $(head -1 {pid})\n",
            token = token.expose(),
            dir = cluster.path().display(),
            p0 = cluster.nodes[0].port,
            p1 = cluster.nodes[1].port,
            ip = a.ip(),
            port = a.port(),
            admin = bound.admin_addr,
            pid = cluster.nodes[0].data.join("postmaster.pid").display(),
        );
    });
    eprintln!("pgfailover demo: stopping PostgreSQL and removing {}", cluster.path().display());
    drop(cluster);
    code
}
