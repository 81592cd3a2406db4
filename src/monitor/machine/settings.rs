//! The parts of the configuration the machine's decisions depend on (a reload replaces
//! them whole).

use std::time::Duration;

use crate::config::{PromoteMode, PromotionPolicy, SyncMode, ZonePolicy};

/// The parts of the configuration the decisions depend on.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `health.failure_threshold`: consecutive *down* failures that mark a backend down.
    pub failure_threshold: u32,
    /// `failover.max_lag_bytes`: a standby further behind is not eligible.
    pub max_lag_bytes: u64,
    /// `failover.promote`: whether this proxy promotes at all.
    pub promote: PromoteMode,
    /// `health.timeout`: no check lasts longer, so a failure that ended this long after an
    /// instant began after it.
    pub check_timeout: Duration,
    /// `health.interval`.
    pub interval: Duration,
    /// Re-point standbys at a new primary (`failover.repoint_standbys`, auto mode only).
    pub repoint_standbys: bool,
    /// Bound on a switchover's wait for the other standbys to stream from the candidate.
    pub switchover_wait: Duration,
    /// `failover.promote_timeout`: a promotion still pending this long after it was asked
    /// for is asked for again (`pg_promote` is idempotent).
    pub promote_timeout: Duration,
    /// `[read]`: which standbys the read-only port may use.
    pub read: crate::config::ReadConfig,
    /// `failover.drain_timeout`: how long a switchover waits for open transactions.
    pub drain_timeout: Duration,
    /// `failover.synchronous`: whether the machine manages `synchronous_standby_names`.
    pub synchronous: SyncMode,
    /// `failover.synchronous_count`: the most standbys a commit waits for.
    pub synchronous_count: u32,
    /// `failover.zone_policy`.
    pub zone_policy: ZonePolicy,
    /// Each backend's `priority`, `nofailover` and `zone`, in config order.
    pub policies: Vec<PromotionPolicy>,
}

impl Settings {
    pub fn from_config(cfg: &crate::config::Config) -> Settings {
        Settings {
            failure_threshold: cfg.health.failure_threshold,
            max_lag_bytes: cfg.failover.max_lag_bytes,
            promote: cfg.failover.promote,
            check_timeout: cfg.health.timeout,
            interval: cfg.health.interval,
            repoint_standbys: cfg.failover.repoint_standbys,
            switchover_wait: cfg.failover.trigger_wait,
            drain_timeout: cfg.failover.drain_timeout,
            promote_timeout: cfg.failover.promote_timeout,
            read: cfg.read.clone(),
            synchronous: cfg.failover.synchronous,
            synchronous_count: cfg.failover.synchronous_count,
            zone_policy: cfg.failover.zone_policy,
            policies: cfg.backends().into_iter().map(|b| b.policy).collect(),
        }
    }

    /// Backend `i`'s promotion policy (the machine keeps one per backend).
    pub fn policy(&self, i: crate::cluster::BackendId) -> &PromotionPolicy {
        &self.policies[i.index()]
    }

    /// One policy per backend: the default for those the settings leave out.
    pub(super) fn fit(mut self, backends: usize) -> Settings {
        self.policies.resize(backends, PromotionPolicy::default());
        self
    }

    /// How long the primary must fail without interruption before a standby is promoted.
    pub fn promote_after(&self) -> Duration {
        self.interval * self.failure_threshold.saturating_sub(1)
    }
}
