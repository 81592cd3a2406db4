//! The data path: the client [`listener`], one [`session`] per client (opened by
//! [`startup`], then spliced), the wire-protocol pieces the proxy speaks ([`wire`]), socket
//! options and bounded connects ([`socket`]), and the [`DataPath`] every session shares.
//! Under `[tls] mode = "terminate"` a session is served by [`terminate`] instead of
//! [`session`]'s splice: the proxy's TLS on both legs, the same opening and framing.

pub mod ask;
pub mod datapath;
pub mod direct;
pub mod framing;
pub mod gate;
pub mod leg;
pub mod listener;
pub mod placement;
pub mod session;
pub mod socket;
pub mod startup;
pub mod stream;
pub mod terminate;
pub mod wire;
pub mod workers;

pub use datapath::DataPath;
pub use listener::run;
