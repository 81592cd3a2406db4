//! The real `pgfailover` binary as a child process, for the tests of `tests/` and the
//! benchmarks of `benches/compare` (which include this directory with `#[path]`).
//!
//! - [`config`]: `proxy.toml` from a typed builder ([`ProxyToml`]), on free loopback ports.
//! - [`site`]: a directory with that file and a state directory, which one process or
//!   several in turn (a takeover) run on ([`Site`]).
//! - [`launch`]: how one process is started ([`Launch`]): arguments, environment, a socket
//!   as systemd passes it, log files.
//! - [`process`]: the running process ([`Process`]): its log, signals by PID, readiness and
//!   exit polled with a deadline; killed and reaped when dropped.
//! - [`admin`]: one blocking HTTP GET to the admin port.
//!
//! Every path into the library this harness needs is named in this file, so that reshaping
//! `src/` changes one place here.

// Each test target, and the benchmark, uses a part of the harness.
#![allow(dead_code, unused_imports)]

pub mod admin;
pub mod config;
pub mod launch;
pub mod process;
pub mod site;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};

pub use admin::Reply;
pub use config::ProxyToml;
pub use launch::Launch;
pub use process::{Process, Signal};
pub use site::Site;

/// The binary under test, built by cargo for this test or benchmark target.
pub const BIN: &str = env!("CARGO_BIN_EXE_pgfailover");

/// A throw-away PostgreSQL cluster (the library's fixture) whose nodes a config can name.
pub use pgfailover::localpg::Cluster;

/// A loopback address on a port nobody listens on now.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], pgfailover::localpg::free_port().expect("a free loopback port")))
}

/// The launcher that hands `fd` to the binary as systemd hands a socket unit's socket.
fn socket_activated(fd: std::os::fd::RawFd) -> Command {
    pgfailover::testkit::socket_activated(std::path::Path::new(BIN), fd)
}

/// Variables the binary reads (configuration layers, log filter, systemd's protocol): the
/// environment of whoever runs the tests must not change what a test starts.
const READ_BY_THE_BINARY: &[&str] = &["DB_", "PGFAILOVER_", "FAILOVER_", "RUST_LOG", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"];

/// Removes from `cmd` every inherited variable the binary would read.
fn hermetic(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if READ_BY_THE_BINARY.iter().any(|p| key.to_string_lossy().starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// The binary with none of the caller's settings, for a run the test drives itself.
pub fn command() -> Command {
    let mut cmd = Command::new(BIN);
    hermetic(&mut cmd).stdin(Stdio::null());
    cmd
}

/// Runs the binary to completion (`--check`, `status`, a start that must fail) with `env`
/// as its only settings from the environment.
pub fn run<A: AsRef<OsStr>>(args: &[A], env: &[(&str, &str)]) -> Output {
    command().args(args).envs(env.iter().copied()).output().expect("run pgfailover")
}
