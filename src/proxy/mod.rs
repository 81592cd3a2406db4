//! The data path: the client [`listener`], one [`session`] per client (opened by
//! [`startup`], then spliced), the wire-protocol pieces the proxy speaks ([`wire`]), socket
//! options and bounded connects ([`socket`]), and the [`DataPath`] every session shares.

pub mod datapath;
pub mod framing;
pub mod gate;
pub mod listener;
pub mod placement;
pub mod session;
pub mod socket;
pub mod startup;
pub mod wire;
pub mod workers;

pub use datapath::DataPath;
pub use listener::run;
