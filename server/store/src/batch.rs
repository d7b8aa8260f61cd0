//! Group commit for the issuance path (DESIGN §8): one writer task gathers the writes that
//! concurrent requests submit, applies them in one transaction, commits once, and only then
//! answers each request. A write refused by its conditions leaves the rest of the batch alone;
//! a failed transaction fails every write in it. Durability is unchanged: nothing is answered
//! before the commit that holds it is durable.
//!
//! The writer task owns the transaction, so a client that goes away cannot cancel a batch other
//! clients are waiting on.

use std::sync::Arc;

use mintgate_domain::Serial;
use mintgate_domain::audit::AuditEvent;
use mintgate_domain::lifecycle::RequestState;
use mintgate_domain::model::NewRequest;
use mintgate_domain::store::{Inserted, NewCertificate, StoreError, TokenUse};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use crate::Writer;
use crate::health::Unready;
use crate::issuance::Completion;
use crate::metrics::Done;

/// Most writes in one transaction. Bounds the time a batch holds the writer lock.
const MAX_BATCH: usize = 512;
/// Under load — the batch just committed held at least `LINGER_FROM` writes — the writer waits
/// `LINGER` before it takes the next, so that each commit (each `fsync`) makes more writes
/// durable at the cost of a few milliseconds per write, as PostgreSQL's `commit_delay` does
/// with `commit_siblings`. A write that finds the writer idle never waits.
const LINGER_FROM: usize = 64;
const LINGER: std::time::Duration = std::time::Duration::from_millis(8);

/// Most rows in one multi-row INSERT: a power of two, well under SQLite's and PostgreSQL's
/// bound-parameter limits (8,192 parameters at 16 columns).
pub(crate) const INSERT_ROWS: usize = 512;

/// A write of the issuance path, as a caller submits it.
pub(crate) enum Op {
    InsertRequest {
        request: NewRequest,
        token: Option<TokenUse>,
        audit: Vec<AuditEvent>,
    },
    CompleteIssuance {
        pk: i64,
        cert: NewCertificate,
        supersedes: Option<Serial>,
        audit: Vec<AuditEvent>,
    },
    MoveRequest {
        pk: i64,
        from: (RequestState, Option<Serial>),
        to: (RequestState, Option<Serial>),
        now: OffsetDateTime,
        audit: Vec<AuditEvent>,
    },
}

/// What an [`Op`] did, once it is durable.
pub(crate) enum Outcome {
    Inserted(Inserted),
    Completed,
    Moved(bool),
}

struct Job {
    op: Op,
    /// The submitting RPC's span: its audit events are logged inside it.
    span: tracing::Span,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// The submitting side; the writer task ends when every clone of it is dropped.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    jobs: mpsc::UnboundedSender<Job>,
}

impl GroupCommit {
    /// Starts the writer task on the current tokio runtime.
    pub(crate) fn start(writer: Arc<Writer>) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(writer, rx));
        Self { jobs }
    }

    /// Whether the writer task still takes writes.
    pub(crate) fn is_running(&self) -> bool {
        !self.jobs.is_closed()
    }

    /// Applies `op` in the next batch and answers once that batch is durable.
    pub(crate) async fn submit(&self, op: Op) -> Result<Outcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            op,
            span: tracing::Span::current(),
            reply,
        };
        self.jobs.send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the store's writer failed or has stopped".into())
}

async fn run(writer: Arc<Writer>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let loaded = jobs.len() >= LINGER_FROM;
        // Each batch is a task of its own: a bug that panics fails that batch (its callers
        // hear that the writer failed, and its transaction rolls back), not every later write.
        let (writer, batch) = (writer.clone(), std::mem::take(&mut jobs));
        let batch = tokio::spawn(async move { commit_batch(&writer, batch).await });
        if let Err(e) = batch.await
            && e.is_panic()
        {
            tracing::error!(error = %e, "a group-commit batch panicked");
        }
        if loaded {
            tokio::time::sleep(LINGER).await;
        }
    }
}

async fn commit_batch(writer: &Writer, jobs: Vec<Job>) {
    let (ops, waiters): (Vec<_>, Vec<_>) =
        jobs.into_iter().map(|j| (j.op, (j.span, j.reply))).unzip();
    let spans = waiters.iter().map(|(span, _)| span);
    match apply_and_commit(writer, ops, spans).await {
        Ok(results) => {
            for ((span, reply), result) in waiters.into_iter().zip(results) {
                let result = result.map(|(outcome, done)| {
                    span.in_scope(|| done.report(writer.metrics()));
                    outcome
                });
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            // Nothing in the batch is durable; every caller hears why.
            tracing::error!(error = ?e, writes = waiters.len(), "a group-commit batch failed");
            writer.health.failed(Unready::WriteFailed);
            let e = Arc::new(e);
            for (_, reply) in waiters {
                let _ = reply.send(Err(StoreError::Unavailable(Box::new(e.clone()))));
            }
        }
    }
}

type Applied = Result<(Outcome, Done), StoreError>;

/// Applies the ops, then commits them all. Requests without a join token and all completions
/// go in set-based statements for the whole batch; requests with a token and moves one by one.
/// An op refused with [`StoreError::Conflict`] has written nothing and is left out; any other
/// error leaves the transaction half-applied, so none of the batch commits.
async fn apply_and_commit(
    writer: &Writer,
    ops: Vec<Op>,
    spans: impl Iterator<Item = &tracing::Span>,
) -> Result<Vec<Applied>, StoreError> {
    let count = ops.len();
    let mut tx = writer.begin().await?;
    // One look at the identity blocks for the whole batch: nothing in a batch adds one.
    let identities = ops.iter().filter_map(|op| match op {
        Op::CompleteIssuance { cert, .. } => Some(cert.spiffe_id.clone()),
        _ => None,
    });
    tx.load_blocks(identities.collect()).await?;

    let mut applied = Vec::with_capacity(count);
    let (mut inserts, mut completions) = (Vec::new(), Vec::new());
    for ((i, op), span) in ops.into_iter().enumerate().zip(spans) {
        let one = match op {
            Op::InsertRequest {
                request,
                token: None,
                audit,
            } => {
                inserts.push((i, request, audit));
                continue;
            }
            Op::CompleteIssuance {
                pk,
                cert,
                supersedes,
                audit,
            } => {
                completions.push(Completion {
                    tag: i,
                    pk,
                    cert,
                    supersedes,
                    audit,
                });
                continue;
            }
            Op::InsertRequest {
                request,
                token: Some(token),
                audit,
            } => tx
                .insert_request_with_token(request, token, audit)
                .instrument(span.clone())
                .await
                .map(Outcome::Inserted),
            Op::MoveRequest {
                pk,
                from,
                to,
                now,
                audit,
            } => tx
                .move_request(pk, from, to, now, audit)
                .instrument(span.clone())
                .await
                .map(Outcome::Moved),
        };
        // A refusal has written nothing; any other error fails the batch.
        let answer = match one {
            Ok(outcome) => Ok((outcome, tx.take_done())),
            Err(refused @ StoreError::Conflict(_)) => Err(refused),
            Err(e) => return Err(e),
        };
        applied.push((i, answer));
    }
    for (i, answer) in tx.insert_requests(inserts).await? {
        applied.push((
            i,
            answer.map(|(inserted, done)| (Outcome::Inserted(inserted), done)),
        ));
    }
    for (i, answer) in tx.complete_issuances(completions).await? {
        applied.push((i, answer.map(|done| (Outcome::Completed, done))));
    }

    let requests = applied
        .iter()
        .map(|(_, r)| r.as_ref().map_or(0, |(_, done)| done.requests))
        .sum();
    tx.commit(requests).await?;
    // Back in submission order, one answer per op.
    applied.sort_unstable_by_key(|(i, _)| *i);
    Ok(applied.into_iter().map(|(_, answer)| answer).collect())
}

/// `rows` for statements of power-of-two sizes up to `max`, largest first (200 rows: 128, 64,
/// 8). The connection then meets a few statement texts per table, each prepared once and kept
/// in its cache, not a new one for each batch size: preparing a statement of hundreds of rows
/// costs more than running it.
pub(crate) fn statement_chunks<T>(mut rows: Vec<T>, max: usize) -> impl Iterator<Item = Vec<T>> {
    std::iter::from_fn(move || {
        let size = (1usize << rows.len().checked_ilog2()?).min(max);
        let rest = rows.split_off(size);
        Some(std::mem::replace(&mut rows, rest))
    })
}

#[cfg(test)]
mod tests {
    use super::statement_chunks;

    #[test]
    fn rows_go_in_statements_of_a_few_sizes() {
        let sizes = |n: usize, max| {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<Vec<usize>> = statement_chunks(rows, max).collect();
            assert_eq!(
                chunks.concat(),
                (0..n).collect::<Vec<_>>(),
                "every row, in order"
            );
            chunks.iter().map(Vec::len).collect::<Vec<_>>()
        };
        assert_eq!(sizes(0, 512), Vec::<usize>::new());
        assert_eq!(sizes(1, 512), [1]);
        assert_eq!(sizes(200, 512), [128, 64, 8]);
        assert_eq!(sizes(1537, 512), [512, 512, 512, 1]);
        assert_eq!(sizes(300, 128), [128, 128, 32, 8, 4]);
    }
}
