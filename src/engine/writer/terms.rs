//! The writer under an election (`ha.rs`): it writes only in the terms this instance
//! leads. Each term starts over: the list is forgotten and read again (another
//! instance wrote in between, and its items are not a foreign writer's), the bulk
//! operation the previous leader recorded as pending is waited out first, and only the
//! difference is written, never the whole list. A term ends at once when the role
//! changes: the writer's futures are dropped mid-request, and the Cloudflare client's
//! fence refuses any write outside the leader's window in any case.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::Writer;
use crate::engine::foreign::ForeignWatch;
use crate::ha::{Ha, Role};

impl Writer {
    /// Serves `ha`: from now on every write is fenced by it.
    pub(in crate::engine) fn serve(&mut self, ha: Arc<Ha>) {
        self.cloudflare.fence_with(ha.clone());
        self.ha = Some(ha);
    }

    /// The writer task under an election: waits to lead, writes while leading, and
    /// returns on shutdown.
    pub(in crate::engine) async fn run_terms(&mut self, ha: Arc<Ha>, token: CancellationToken) {
        let mut roles = ha.subscribe();
        let mut lists: Option<Vec<super::Target>> = None;
        loop {
            let term = loop {
                if let Role::Leader { term } = *roles.borrow_and_update() {
                    break term;
                }
                // A standby's idle writer is no wedge.
                self.telemetry.health().writer_due = None;
                tokio::select! {
                    biased;
                    () = token.cancelled() => return,
                    changed = roles.changed() => if changed.is_err() { return },
                }
            };
            let ended = async {
                loop {
                    if roles.changed().await.is_err() {
                        return;
                    }
                    if *roles.borrow_and_update() != (Role::Leader { term }) {
                        return;
                    }
                }
            };
            tokio::select! {
                biased;
                () = ended => {
                    info!(term, "the writer stopped: this instance no longer holds the lease");
                    let mut health = self.telemetry.health();
                    health.writer_due = None;
                    health.pending_since = None;
                }
                () = self.term(&ha, &mut lists, &token) => return,
            }
        }
    }

    /// One term, until shutdown (a lost lease drops it from outside).
    async fn term(
        &mut self,
        ha: &Ha,
        lists: &mut Option<Vec<super::Target>>,
        token: &CancellationToken,
    ) {
        self.shared.state().forget_list();
        self.foreign = ForeignWatch::new();
        self.shared.refresh_list.store(true, Ordering::SeqCst);
        if let Some(op_id) = ha.take_inherited() {
            info!(
                op_id,
                "waiting out the bulk operation the previous writer left pending"
            );
            let outcome = self.wait_for(&op_id, token).await;
            info!(op_id, outcome = ?outcome, "the previous writer's bulk operation is over");
            ha.record_operation(None);
        }
        if lists.is_none() {
            *lists = self.resolve_lists(token).await;
        }
        let Some(targets) = lists.clone() else {
            return;
        };
        self.run(&targets, token.clone()).await;
    }
}
