//! The health monitor: [`probe`]rs observe every backend, the pure [`machine`] decides (and,
//! when coordinated, keeps the one copy of what the proxies share through etcd and decides
//! about it too), and the monitor [`task`] carries out its actions (route, promotion,
//! switchover, re-pointing standbys, history, metrics, the coordinator's writes) and
//! publishes the [`status`] the admin API serves. The task decides nothing itself.

pub mod candidates;
pub mod check_error;
pub mod conninfo;
pub mod event;
pub mod handle;
pub mod history;
pub mod machine;
pub mod observation;
pub mod operations;
pub mod probe;
pub mod standby_names;
pub mod status;
pub mod task;

pub use handle::{MonitorHandle, Triggered};
pub use task::{spawn, Lifeline};
