//! The monitor task's side of coordination: etcd's news into the machine, and the machine's
//! coordination actions (fences to share or lift, a record to write, this proxy's view) out
//! to the coordinator. Nothing is decided here.

use tokio::sync::mpsc;

use crate::cluster::BackendId;
use crate::coord::Event as CoordEvent;
use crate::monitor::handle::Command;
use crate::monitor::machine::{Now, Recording};
use crate::monitor::status::{CoordStatus, Status};

use super::MonitorTask;

/// The next batch of coordination events, or never when this proxy is not coordinated.
pub(super) async fn next_coord_events(events: &mut Option<mpsc::Receiver<Vec<CoordEvent>>>) -> Vec<CoordEvent> {
    match events {
        Some(rx) => match rx.recv().await {
            Some(e) => e,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

impl MonitorTask {
    /// One batch (an etcd read or one watch response): applied whole, then re-decided once.
    pub(super) fn coordination_events(&mut self, batch: Vec<CoordEvent>) {
        let acts = self.machine.coordinated(batch, Now::current());
        self.apply_all(acts);
    }

    /// After every change: what the machine shares (its fence changes, a record), and this
    /// proxy's view.
    pub(super) fn share(&mut self) {
        let Some(coord) = self.coord.clone() else { return };
        for a in self.machine.share(Now::current()) {
            self.apply(a);
        }
        if let Some(view) = self.machine.own_view() {
            coord.publish_view(view);
        }
    }

    /// Writes a record outside a promotion, and reports how it went.
    pub(super) fn record_primary(&self, i: BackendId, recording: Recording) {
        let Some(coord) = self.coord.clone() else { return };
        let epoch = recording.record.epoch;
        let failed = Command::Recorded { i, epoch, rev: None };
        self.run_op(
            async move {
                let name = recording.record.name.clone();
                let rev = match coord.record_primary(recording.record, recording.fences, recording.expect).await {
                    Ok(rev) => {
                        tracing::info!(primary = %name, epoch, "recorded the primary in etcd");
                        Some(rev)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not record the primary in etcd");
                        None
                    }
                };
                Command::Recorded { i, epoch, rev }
            },
            failed,
        );
    }

    /// The status's coordination part, from the machine's view and the coordinator's figures.
    pub(super) fn coordination_status(&self) -> Option<CoordStatus> {
        let (coord, view) = (self.coord.as_ref()?, self.machine.coordination()?);
        Some(CoordStatus::of(view, &coord.cluster, coord.figures()))
    }

    pub(super) fn coordination_metrics(&self, status: &Status) {
        let x = &self.metrics;
        match &status.coordination {
            Some(c) => {
                x.coordination_enabled.set(1.0);
                x.coordination_leader.set(if c.is_leader { 1.0 } else { 0.0 });
                x.coordination_etcd_up.set(if c.etcd_reachable { 1.0 } else { 0.0 });
                x.coordination_lease_failures.absolute(c.lease_renewal_failures);
            }
            None => x.coordination_enabled.set(0.0),
        }
        for (i, g) in BackendId::all(x.routed_primary.len()).zip(&x.routed_primary) {
            g.set(if self.machine.route() == Some(i) { 1.0 } else { 0.0 });
        }
    }
}
