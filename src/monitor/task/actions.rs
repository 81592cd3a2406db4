//! Carrying out the machine's actions: each one becomes a route or gate change, an
//! operation on its own task (its outcome fed back as a command), a history event, or a
//! write through the coordinator. Nothing is decided here.

use std::time::Duration;

use crate::cluster::{Census, Scope};
use crate::coord::SharedWrite;
use crate::monitor::event::EventKind;
use crate::monitor::handle::Command;
use crate::monitor::machine::Action;
use crate::monitor::operations::{self, OpError, PromoteError};

use super::{task_failed, MonitorTask, TASK_FAILED};

impl MonitorTask {
    /// Runs an operation on its own task and feeds its outcome back as a command; if the
    /// operation panics, `failed` is fed back instead, so no step waits for ever.
    pub(super) fn run_op<F>(&self, op: F, failed: Command)
    where
        F: std::future::Future<Output = Command> + Send + 'static,
    {
        use futures_util::FutureExt;
        let tx = self.commands.clone();
        let stop = self.life.shutdown.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                done = std::panic::AssertUnwindSafe(op).catch_unwind() => {
                    let _ = tx.send(done.unwrap_or(failed)).await;
                }
                _ = stop.cancelled() => {}
            }
        });
    }

    pub(super) fn apply(&mut self, action: Action) {
        let s = self.machine.settings();
        let (pt, ct, wait) = (s.promote_timeout, s.check_timeout, s.switchover_wait);
        match action {
            Action::Route { target, reason } => {
                self.account_no_primary();
                if self.route.set(target, &reason) {
                    match target {
                        Some(t) => {
                            tracing::info!(primary = %self.backends[t.index()].name, epoch = self.route.current().epoch, "route: new sessions go to the primary")
                        }
                        None => tracing::warn!(%reason, "route: no primary; new sessions are held"),
                    }
                }
            }
            Action::RouteReason(reason) => {
                self.route.set(None, &reason);
            }
            Action::Promote { attempt, backend: i, synchronous } => {
                let b = self.backends[i.index()].clone();
                let failed = Command::Promoted { attempt, i, result: Err(PromoteError::Pending(TASK_FAILED.into())) };
                // Coordinated: the fencing-token transaction records the decision first; no
                // promotion without it.
                let gate = self.coord.clone().zip(self.machine.promotion_record(i));
                self.run_op(
                    async move {
                        if let Some((coord, r)) = gate {
                            if let Err(why) = coord.record_primary(r.record, r.fences, r.expect).await {
                                return Command::Promoted { attempt, i, result: Err(PromoteError::NotAllowed(why)) };
                            }
                        }
                        Command::Promoted { attempt, i, result: operations::promote(&b, pt, ct, synchronous.as_deref()).await }
                    },
                    failed,
                );
            }
            Action::StopWrites { attempt, backend: i } => {
                let b = self.backends[i.index()].clone();
                let failed = Command::WritesStopped { attempt, i, result: Err(task_failed()) };
                // Coordinated: only while this proxy still holds the leadership.
                let coord = self.coord.clone();
                self.run_op(
                    async move {
                        if let Some(c) = coord {
                            if let Err(why) = c.confirm_leadership().await {
                                return Command::WritesStopped { attempt, i, result: Err(OpError::NotAllowed(why)) };
                            }
                        }
                        Command::WritesStopped { attempt, i, result: operations::stop_writes(&b, ct, wait).await }
                    },
                    failed,
                );
            }
            Action::AwaitReplay { attempt, backend: i, lsn } => {
                let b = self.backends[i.index()].clone();
                let failed = Command::Replayed { attempt, i, result: Err(task_failed()) };
                self.run_op(async move { Command::Replayed { attempt, i, result: operations::await_replay(&b, lsn, ct, wait).await } }, failed);
            }
            Action::AllowWrites { attempt, backend: i } => {
                let b = self.backends[i.index()].clone();
                let failed = Command::WritesAllowed { attempt, i, result: Err(task_failed()) };
                self.run_op(
                    async move {
                        // The old primary must not stay read-only because of one lost packet.
                        let mut result = operations::allow_writes(&b, ct).await;
                        for _ in 0..3 {
                            if result.is_ok() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            result = operations::allow_writes(&b, ct).await;
                        }
                        Command::WritesAllowed { attempt, i, result }
                    },
                    failed,
                );
            }
            Action::Repoint { standby, primary } => {
                let (s, p) = (self.backends[standby.index()].clone(), self.backends[primary.index()].clone());
                tracing::info!(standby = %s.name, primary = %p.name, "re-pointing standby at the primary");
                let failed = Command::Repointed { standby, primary, result: Err(task_failed()) };
                self.run_op(async move { Command::Repointed { standby, primary, result: operations::repoint(&s, &p, ct).await } }, failed);
            }
            Action::SetSynchronous { backend: i, value } => {
                let b = self.backends[i.index()].clone();
                let failed = Command::SynchronousSet { i, value: value.clone(), result: Err(TASK_FAILED.into()) };
                // Coordinated: only while this proxy still holds the leadership.
                let coord = self.coord.clone();
                self.run_op(
                    async move {
                        if let Some(c) = coord {
                            if let Err(why) = c.confirm_leadership().await {
                                return Command::SynchronousSet { i, value, result: Err(format!("not allowed: {why}")) };
                            }
                        }
                        let result = operations::set_synchronous(&b, value.as_deref(), ct).await.map_err(|e| e.to_string());
                        Command::SynchronousSet { i, value, result }
                    },
                    failed,
                );
            }
            Action::CheckNow(i) => {
                if let Some(p) = self.probe_now.get(i.index()) {
                    let _ = p.try_send(None);
                }
            }
            Action::Record(e) => {
                let from = e.from.as_deref().unwrap_or("-");
                let to = e.to.as_deref().unwrap_or("-");
                match e.kind {
                    EventKind::Recovery | EventKind::Unfence | EventKind::Repoint => {
                        tracing::info!(kind = e.kind.as_str(), from, to, reason = %e.reason, "history")
                    }
                    _ => tracing::warn!(kind = e.kind.as_str(), from, to, reason = %e.reason, trigger = %e.trigger, "history"),
                }
                if let Ok(mut h) = self.history.lock() {
                    h.push(e);
                }
            }
            Action::ShareFence { backend, fence, while_record } => {
                if let Some(c) = &self.coord {
                    c.put_fence(backend, fence, while_record);
                }
            }
            Action::LiftFence { backend, revision } => {
                if let Some(c) = &self.coord {
                    c.delete_fence(backend, revision);
                }
            }
            Action::RecordPrimary { backend, recording } => self.record_primary(backend, recording),
            Action::Gate(scope) => {
                match scope {
                    Some(Scope::Everything) => tracing::warn!("gate: holding new sessions and quiet sessions' next statements"),
                    Some(Scope::Backend(b)) => {
                        tracing::warn!(backend = %self.backends[b.index()].name, "gate: holding this backend's new sessions and its quiet sessions' next statements")
                    }
                    None => tracing::info!("gate: nothing held"),
                }
                self.gate.set(scope);
            }
            Action::AwaitDrain { id, scope, until } => {
                let gate = self.gate.clone();
                let failed = Command::Drained { id: id.clone(), census: Census::default() };
                self.run_op(async move { Command::Drained { census: gate.settle(scope, until.into()).await, id } }, failed);
            }
            Action::ShareDrain(d) => self.share_write(SharedWrite::Drain(d)),
            Action::EndSharedMaintenance => self.share_write(SharedWrite::Maintenance(None)),
            // Kept in the state directory with the fences (after every batch of actions).
            Action::Maintenance(_) => {}
            Action::FailoverDone(d) => self.metrics.failover_duration.record(d.as_secs_f64()),
            Action::Concluded { attempt, outcome } => {
                for tx in self.waiting.remove(&attempt).unwrap_or_default() {
                    let _ = tx.send(outcome.clone());
                }
            }
        }
    }

    /// Writes one of the shared keys through the coordinator, in the background (a failed
    /// write is logged: the machine sees etcd's state through the watch either way).
    fn share_write(&self, what: SharedWrite) {
        let Some(c) = self.coord.clone() else { return };
        self.tracker.spawn(async move {
            if let Err(e) = c.share(what.clone()).await {
                tracing::warn!(error = %e, write = ?what, "could not write to etcd");
            }
        });
    }
}
