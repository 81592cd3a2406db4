//! The binary's own modules, beside `main.rs` (which parses the command line and
//! dispatches):
//!
//! - [`run`]: runs the proxy until a signal stops it, or another process took over.
//! - [`signals`]: SIGTERM/SIGINT (stop), SIGHUP (reload), SIGUSR2 (takeover).
//! - [`reload`]: reads the configuration again and applies it to the running proxy.
//! - [`logging`]: the log subscriber (stderr, text or JSON), its filter and format reloadable.
//! - [`check`]: `--check`, the configuration's summary.
//! - [`status`]: `pgfailover status` and `health`, the admin API for a terminal.
//! - [`demo`]: `pgfailover demo`, a local cluster and the proxy in front.
//!
//! They are not in the library because each owns something of the process: the global log
//! subscriber, the signal dispositions, stdout and the exit code. The library never takes
//! those, so the tests can run several proxies in one process.

pub mod check;
pub mod demo;
pub mod logging;
pub mod reload;
pub mod run;
pub mod signals;
pub mod status;
