//! The health monitor: [`probe`]rs observe every backend, the pure [`machine`] decides, and
//! the monitor [`task`] carries out its actions (route, promotion, switchover, re-pointing
//! standbys, history, metrics) and publishes the [`status`] the admin API serves.

pub mod check_error;
pub mod conninfo;
pub mod event;
pub mod handle;
pub mod history;
pub mod machine;
pub mod observation;
pub mod operations;
pub mod probe;
pub mod status;
pub mod task;

pub use handle::{MonitorHandle, Triggered};
pub use task::{spawn, Lifeline};
