//! The words every part uses for the PostgreSQL cluster the proxy serves: its backends (by
//! [`BackendId`]), their fences, and the values the coordinated proxies keep in etcd (the
//! recorded primary, the shared fences, each proxy's view, forwarded admin requests, the
//! pause, a switchover's drain and maintenance mode).
//!
//! Types only, no behaviour: the monitor (which decides) and coordination (which carries
//! the decisions to etcd and etcd's news back) both import this module, and it imports
//! neither, so no import runs back up the layers.

pub mod fence;
pub mod pause;
pub mod records;

pub use fence::{Fence, FenceKind};
pub use pause::{Census, DrainPhase, DrainRecord, Maintenance, PauseAck, PauseRecord, Scope};
pub use records::{FenceRecord, MemberView, PrimaryRecord, Request, Response};

/// A backend, by its place in the configuration (config order): how the machine, the
/// route, the data path and the metrics name it. Its [`index`](BackendId::index) is its
/// position in every per-backend list. (Between proxies, and on disk, a backend goes by its
/// configured name.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId(usize);

impl BackendId {
    pub const fn new(index: usize) -> BackendId {
        BackendId(index)
    }

    pub const fn index(self) -> usize {
        self.0
    }

    /// The first `n` backends, in config order.
    pub fn all(n: usize) -> impl DoubleEndedIterator<Item = BackendId> + Clone {
        (0..n).map(BackendId)
    }
}
