//! The words every part uses for the PostgreSQL cluster the proxy serves: its backends'
//! fences, and the values the coordinated proxies keep in etcd (the recorded primary, the
//! shared fences, each proxy's view, forwarded admin requests).
//!
//! Types only, no behaviour: the monitor (which decides) and coordination (which carries
//! the decisions to etcd and etcd's news back) both import this module, and it imports
//! neither, so no import runs back up the layers.

pub mod fence;
pub mod records;

pub use fence::{Fence, FenceKind};
pub use records::{FenceRecord, MemberView, PrimaryRecord, Request, Response};
