//! pgfailover: a Layer-4 PostgreSQL proxy that keeps applications connected to whichever
//! server is the primary.
//!
//! Module map:
//! - [`config`]: defaults < `proxy.toml` < environment < flags, strict validation.
//! - [`route`]: the one value sessions read (target backend + epoch), written by the monitor.
//! - [`proxy`]: the client listener and shutdown drain; [`session`]: one spliced client.
//! - [`startup`]: opening a session: held and retried until a server accepts the client.
//! - [`wire`]: the startup packets, a server's first answer, the 57P03 `ErrorResponse`.
//! - [`net`]: socket options (nodelay, keepalive, user timeout) and bounded connects.
//! - [`metrics`]: per-instance Prometheus series.
//! - [`localpg`]: real local PostgreSQL clusters for tests, benchmarks and the demo.
//! - [`server`]: wires everything into one running proxy.

pub mod admin;
pub mod config;
pub mod duration;
pub mod localpg;
pub mod metrics;
pub mod monitor;
pub mod net;
pub mod proxy;
pub mod route;
pub mod server;
pub mod session;
pub mod startup;
pub mod wire;
