//! pgfailover: a Layer-4 PostgreSQL proxy that keeps applications connected to whichever
//! server is the primary.
//!
//! Module map:
//! - [`config`]: defaults < `proxy.toml` < environment < flags, strict validation.
//! - [`route`]: the one value sessions read (target backend + epoch), written by the monitor,
//!   and its helpers.
//! - [`proxy`]: the data path — [`proxy::listener`] (accept, shutdown drain),
//!   [`proxy::session`] (one spliced client), [`proxy::startup`] (opening a session: held and
//!   retried until a server accepts the client), [`proxy::wire`] (startup packets, a server's
//!   first answer, the 57P03 `ErrorResponse`), [`proxy::socket`] (socket options, bounded
//!   connects), [`proxy::DataPath`] (what every session shares).
//! - [`monitor`]: health checks, the pure failover state machine (which owns its state and
//!   makes every decision, coordinated ones included), the operations it runs (promote,
//!   switchover, re-point), history and the published status.
//! - [`coord`]: several proxies agreeing through etcd, as a transport only: etcd's keys
//!   decoded into events for the machine, and the writes it asks for (leader election,
//!   recorded primary, shared fences, members' views, forwarded admin requests).
//! - [`cluster`]: the words both share: backend ids, fences, the records kept in etcd.
//! - [`admin`]: the HTTP side port (status, history, trigger, metrics).
//! - [`metrics`]: per-instance Prometheus series.
//! - [`duration`]: human durations ("250ms") and millisecond figures.
//! - [`localpg`]: real local PostgreSQL clusters for tests, benchmarks and the demo.
//! - [`localetcd`]: real local etcd members for the coordination tests and benchmarks.
//! - [`server`]: wires everything into one running proxy, and applies a reload.
//! - [`takeover`]: restarts without a refused connection — the state lock, the listening
//!   sockets handed to a new process, systemd socket activation and notifications.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod coord;
pub mod duration;
pub mod localetcd;
pub mod localpg;
pub mod metrics;
pub mod monitor;
pub mod proxy;
pub mod route;
pub mod server;
pub mod takeover;
