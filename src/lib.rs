//! pgfailover: a Layer-4 PostgreSQL proxy that keeps applications connected to whichever
//! server is the primary.
//!
//! Module map:
//! - [`config`]: defaults < `proxy.toml` < environment < flags, strict validation.
//! - [`live`]: the configuration in force, and the one way it reaches the running parts: a
//!   `watch` of it that the server publishes a reload to. The data path reads it when a
//!   session needs a setting, the probers and the monitor wake on its change (the monitor's
//!   status says which configuration it decides with, so a reload can wait for it), and the
//!   admin port derives its settings from it per request. Nothing keeps a copy of a
//!   reloadable setting.
//! - [`route`]: the one value sessions read (target backend + epoch), written by the monitor,
//!   and its helpers.
//! - [`proxy`]: the data path — [`proxy::listener`] (accept, shutdown drain),
//!   [`proxy::session`] (one spliced client), [`proxy::startup`] (opening a session: held and
//!   retried until a server accepts the client), [`proxy::wire`] (startup packets, a server's
//!   first answer, the 57P03 `ErrorResponse`), [`proxy::socket`] (socket options, bounded
//!   connects), [`proxy::DataPath`] (what every session shares).
//! - [`monitor`]: health checks, the pure failover state machine (which owns its state and
//!   makes every decision, coordinated ones included), the operations it runs (promote,
//!   switchover, re-point, `synchronous_standby_names`), history, the published status and
//!   the "what if the primary died now" answer.
//! - [`coord`]: several proxies agreeing through etcd, as a transport only: etcd's keys
//!   decoded into events for the machine, and the writes it asks for (leader election,
//!   recorded primary, shared fences, members' views, forwarded admin requests), and whether
//!   etcd grants this proxy's user what coordination needs, asked before the start.
//! - [`cluster`]: the words both share: backend ids, fences, the records kept in etcd.
//! - [`admin`]: the HTTP side port (status, history, trigger, metrics); who may read and
//!   who may act.
//! - [`metrics`]: per-instance Prometheus series.
//! - [`duration`]: human durations ("250ms") and millisecond figures.
//! - [`server`]: wires everything into one running proxy, and applies a reload (what needs a
//!   restart is kept as it runs, the rest is published through [`live`]).
//! - [`takeover`]: restarts without a refused connection — [`takeover::start`] gets the
//!   listeners and the state lock (bound afresh, from systemd, or handed over by the running
//!   process), the handover to the next process, starting that process, systemd's sockets and
//!   notifications.
//! - [`tls`]: the certificates and settings of TLS termination (rustls), built from a
//!   configuration as a whole, so a reload either replaces them all or keeps the ones in force.
//! - [`localpg`]: real local PostgreSQL clusters. In the release binary for `pgfailover
//!   demo`; the tests and benchmarks use the same clusters, and with `testkit` the faults they
//!   inflict on them (crash, hang, freeze).
//! - `testkit` (feature `testkit`, on for the tests and benchmarks only): a throw-away etcd,
//!   the socket-activation launcher, crash injection for the binary.
//!
//! The binary (`src/main.rs`, with its modules under `src/cli/`) parses the command line and
//! owns what is process-wide: logging, signals, the reload from the configuration file, and
//! the `status`, `health` and `demo` commands.
//!
//! No `unsafe` outside `takeover::systemd` (descriptors handed over across an `exec`): system
//! calls go through `rustix` (and `nix` for the user database and a unix socket peer's
//! credentials).
#![deny(unsafe_code)]

pub mod admin;
pub mod cluster;
pub mod config;
pub mod coord;
pub mod duration;
pub mod live;
pub mod localpg;
pub mod metrics;
pub mod monitor;
pub mod proxy;
pub mod route;
pub mod server;
pub mod takeover;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tls;
