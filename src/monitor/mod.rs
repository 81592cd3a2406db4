//! The health monitor: [`probe`]rs observe every backend, the pure [`machine`] decides, and
//! the monitor [`task`] carries out its actions (route, promotion, history, metrics) and
//! publishes the [`status`] the admin API serves.

pub mod history;
pub mod machine;
pub mod observation;
pub mod probe;
pub mod status;
pub mod task;

pub use task::{spawn, MonitorHandle};
