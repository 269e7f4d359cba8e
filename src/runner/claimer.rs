//! This daemon's one claimer of runs. Slots that free up while a claim statement is in flight
//! are served together by the next one (up to [`MAX_BATCH`] runs), so a busy daemon claims
//! several runs per round trip, and its own claims never meet at a company's claim lock (where
//! one of them would pass over the company; see the migration `executor_claim_batch`).
//!
//! Builds are few and long; they are claimed one at a time without it.

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use crate::db::queue::{self, ClaimBatch, ClaimLimits};

/// The most runs one statement claims. A claim takes about 0.3 ms per run; this bounds the
/// time a statement holds its companies' claim locks.
pub const MAX_BATCH: usize = 32;

/// A handle for asking the claimer for runs. Cheap to clone; the claimer stops when the last
/// handle is dropped.
#[derive(Clone)]
pub struct RunClaimer {
    requests: mpsc::UnboundedSender<Request>,
}

struct Request {
    wanted: usize,
    reply: oneshot::Sender<Result<ClaimBatch, String>>,
}

impl RunClaimer {
    /// Starts the claimer task.
    pub fn start(pool: Pool, executor_id: String, limits: ClaimLimits) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        tokio::spawn(serve(pool, executor_id, limits, receiver));
        RunClaimer { requests }
    }

    /// Claims up to `wanted` runs (at least one is asked for). The error is the statement's,
    /// as text: one failed statement answers every request it served.
    pub async fn claim(&self, wanted: usize) -> Result<ClaimBatch, String> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            wanted: wanted.max(1),
            reply,
        };
        if self.requests.send(request).is_err() {
            return Err("the claimer has stopped".into());
        }
        answer
            .await
            .unwrap_or_else(|_| Err("the claimer has stopped".into()))
    }
}

async fn serve(
    pool: Pool,
    executor_id: String,
    limits: ClaimLimits,
    mut receiver: mpsc::UnboundedReceiver<Request>,
) {
    while let Some(first) = receiver.recv().await {
        let mut wanted = first.wanted;
        let mut requests = vec![first];
        // Whatever queued up during the last statement goes into this one.
        while wanted < MAX_BATCH {
            match receiver.try_recv() {
                Ok(request) => {
                    wanted += request.wanted;
                    requests.push(request);
                }
                Err(_) => break,
            }
        }
        let claimed = queue::claim_runs(&pool, &executor_id, &limits, wanted.min(MAX_BATCH)).await;
        hand_out(claimed.map_err(|e| e.to_string()), requests);
    }
}

/// Gives each request, in order of arrival, up to what it asked for. A request left with
/// fewer runs than it wanted learns whether the claim was contended.
fn hand_out(claimed: Result<ClaimBatch, String>, requests: Vec<Request>) {
    let batch = match claimed {
        Ok(batch) => batch,
        Err(e) => {
            for request in requests {
                let _ = request.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    let contended = batch.contended;
    let mut runs = batch.runs.into_iter();
    for request in requests {
        let share: Vec<_> = runs.by_ref().take(request.wanted).collect();
        let short = share.len() < request.wanted;
        // The runner's requesters always wait for the answer; one is gone only when its task
        // was dropped at exit, and then its runs are rescued when their lease expires, like
        // those of any daemon that died holding them.
        let _ = request.reply.send(Ok(ClaimBatch {
            runs: share,
            contended: short && contended,
        }));
    }
}
