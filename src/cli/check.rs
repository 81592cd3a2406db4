//! `pgfailover --check`: the configuration is valid; a summary of it, never a secret.

use pgfailover::config::Config;

/// One line per backend and the key settings; never a secret.
pub fn summary(cfg: &Config) -> String {
    let mut s = format!(
        "configuration OK: listen {}, admin {}, health every {} (timeout {}, threshold {}), promote {}, hold {}, drain {}, max clients {}",
        cfg.listen,
        cfg.admin_listen,
        humantime::format_duration(cfg.health.interval),
        humantime::format_duration(cfg.health.timeout),
        cfg.health.failure_threshold,
        cfg.failover.promote,
        humantime::format_duration(cfg.failover.hold_timeout),
        humantime::format_duration(cfg.failover.drain_timeout),
        cfg.proxy.max_client_connections,
    );
    for (i, b) in cfg.backends().iter().enumerate() {
        let role = if i == 0 { "primary" } else { "standby" };
        s.push_str(&format!("\n  {role} {} at {} (db {}, user {}, ssl {})", b.name, b.address(), b.database, b.user, b.ssl));
    }
    s
}
