//! The health monitor: probers observe every backend, the pure [`machine`] decides, and
//! the monitor task carries out its actions (route, promotion, history, metrics).

pub mod history;
pub mod machine;
pub mod observation;
