//! [`DurableQueue`]: operations that must not be lost (a revocation asked for while the control
//! plane is unreachable), kept on local disk and replayed in order, idempotently, when it is
//! back. The files and the replay are here; what an operation is, and what each answer of the
//! server means for it, is in `op`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::{Backoff, Client, Connect, Error};

mod op;

use op::Verdict;
pub use op::{OpAction, OpAnswer, QueuedOp};

/// A directory of operations waiting for the control plane, replayed in order.
///
/// The directory holds one file per operation, `<id>.json`, where the id is a zero-padded
/// number that only grows, so the order survives restarts. Each file is written whole with
/// [`crate::atomic_write`] (mode 0600, synced with its directory) before [`Self::enqueue`]
/// returns. [`Self::open`] removes temporary files a crash left behind and refuses a file that
/// does not parse, rather than silently dropping an operation. Operations the server refuses
/// for good are moved to `rejected/` for a person to look at. One process owns a directory at
/// a time.
///
/// Every [`QueuedOp`] carries the request id it was given when it was created, so sending it
/// again after an unknown outcome (a timeout, a crash before its file was removed) gets the
/// answer the first attempt got, never a second revocation.
///
/// What a replay does with each answer to a `Revoke`:
///
/// | answer | meaning | the op |
/// |---|---|---|
/// | success | revoked now, or earlier under the same request id | removed ([`ReplayOutcome::Applied`]) |
/// | `ALREADY_REVOKED`, `CERTIFICATE_EXPIRED`, `NOT_FOUND` | the certificate can no longer be used (revoked by another request, expired) or never existed there: the goal holds and retrying cannot change the answer | removed ([`ReplayOutcome::Settled`]) |
/// | invalid argument, `IDEMPOTENCY_KEY_REUSED`, permission denied | this op can never be applied as written, by this caller | moved to `rejected/` ([`ReplayOutcome::Rejected`]) |
/// | [`Error::is_retryable`], `CERTIFICATE_CHANGED` (lost a race with a renewal) | may succeed later | kept with every op after it; retry ([`ReplayStop::retryable`]) |
/// | anything else: unauthenticated, internal, another precondition, an answer without Mintgate's `ErrorInfo` (a proxy) | needs a person (new credentials, a server fix) | kept with every op after it; not retried |
///
/// Only answers that carry Mintgate's own `ErrorInfo` with a user fault count as final, so a
/// proxy's 403 or 404 never removes an operation.
#[derive(Debug)]
pub struct DurableQueue {
    dir: PathBuf,
    state: Mutex<State>,
    /// One replay at a time, so an op is never sent by two replays at once.
    replaying: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct State {
    next: u64,
    pending: BTreeMap<u64, QueuedOp>,
}

/// How an op left the queue.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayOutcome {
    /// The server applied it (now, or on an earlier attempt with the same request id).
    Applied(OpAnswer),
    /// The server's final answer says the goal already holds or is moot (e.g. `ALREADY_REVOKED`).
    Settled(Error),
    /// The server will never apply it as written; the file was moved to `rejected/`.
    Rejected(Error),
}

/// An op that reached a final answer during a replay.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayedOp {
    /// Its queue id.
    pub id: u64,
    /// The op as it was queued.
    pub op: QueuedOp,
    /// What the server said, and so where the op went.
    pub outcome: ReplayOutcome,
}

/// Where a replay stopped: this op and every later one are still queued.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayStop {
    /// The queue id of the op that could not be delivered.
    pub id: u64,
    /// Why.
    pub error: Error,
    /// Whether replaying later, unchanged, may succeed (see the module documentation); when
    /// `false`, a person has to act first.
    pub retryable: bool,
}

/// What one replay did, in queue order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayReport {
    /// The ops that left the queue.
    pub finished: Vec<ReplayedOp>,
    /// Set when the replay stopped before the queue was empty.
    pub stopped: Option<ReplayStop>,
}

impl ReplayReport {
    /// Whether every op present during the replay reached a final answer.
    pub fn is_drained(&self) -> bool {
        self.stopped.is_none()
    }
}

/// A local failure of the queue itself (the server's answers are in [`ReplayReport`]).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Reading or writing the queue directory failed.
    #[error("queue file {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A queued operation's file does not parse: refused, never dropped.
    #[error("{} is not a queued operation ({source}); move it aside to open the queue", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// An op without a request id could not be replayed idempotently.
    #[error("a queued operation needs a request id")]
    MissingRequestId,
}

impl DurableQueue {
    /// Opens (creating it, mode 0700) the queue directory and loads every queued op, in order.
    /// Removes leftover temporary files; refuses with [`QueueError::Corrupt`] a file that does
    /// not parse.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, QueueError> {
        let dir = dir.as_ref().to_owned();
        create_dir(&dir)?;
        let mut pending = BTreeMap::new();
        for (id, path) in op_files(&dir)? {
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let op: QueuedOp = serde_json::from_slice(&bytes)
                .map_err(|source| QueueError::Corrupt { path, source })?;
            pending.insert(id, op);
        }
        let rejected = rejected_dir(&dir);
        let last_rejected = if rejected.is_dir() {
            op_files(&rejected)?.last().map_or(0, |(id, _)| *id)
        } else {
            0
        };
        let last = pending.keys().next_back().copied().unwrap_or(0);
        Ok(Self {
            dir,
            state: Mutex::new(State {
                next: last.max(last_rejected).saturating_add(1),
                pending,
            }),
            replaying: tokio::sync::Mutex::new(()),
        })
    }

    /// Appends `op` and returns its id once it is on disk (file and directory synced). Blocks
    /// for the write; call it from `spawn_blocking` where a few milliseconds matter.
    pub fn enqueue(&self, op: QueuedOp) -> Result<u64, QueueError> {
        if op.request_id.is_empty() {
            return Err(QueueError::MissingRequestId);
        }
        let json = serde_json::to_vec_pretty(&op).map_err(|e| QueueError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other(e),
        })?;
        // Held across the write, so ids become visible to a replay in order.
        let mut state = self.state();
        let id = state.next;
        let path = op_path(&self.dir, id);
        crate::atomic_write(&path, &json, 0o600).map_err(io(&path))?;
        state.next = id.saturating_add(1);
        state.pending.insert(id, op);
        Ok(id)
    }

    /// The queued ops, in order.
    pub fn pending(&self) -> Vec<(u64, QueuedOp)> {
        let state = self.state();
        state
            .pending
            .iter()
            .map(|(id, op)| (*id, op.clone()))
            .collect()
    }

    /// How many ops are queued.
    pub fn len(&self) -> usize {
        self.state().pending.len()
    }

    /// Whether no op is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends the queued ops in order, each with its own request id, until the queue is empty
    /// or an answer says to stop (see the module documentation). An op that is stopped at
    /// stays queued, and so does every op after it.
    pub async fn replay(&self, client: &Client) -> Result<ReplayReport, QueueError> {
        let _one_at_a_time = self.replaying.lock().await;
        let mut report = ReplayReport::default();
        while let Some((id, op)) = self.first() {
            let outcome = match op.send(client).await {
                Ok(answer) => {
                    self.remove(id)?;
                    ReplayOutcome::Applied(answer)
                }
                Err(error) => match op.verdict(&error) {
                    Verdict::Settled => {
                        self.remove(id)?;
                        ReplayOutcome::Settled(error)
                    }
                    Verdict::Rejected => {
                        self.reject(id)?;
                        tracing::warn!(id, %error, "queued operation rejected; moved aside");
                        ReplayOutcome::Rejected(error)
                    }
                    verdict @ (Verdict::Retry | Verdict::Hold) => {
                        report.stopped = Some(ReplayStop {
                            id,
                            error,
                            retryable: verdict == Verdict::Retry,
                        });
                        break;
                    }
                },
            };
            report.finished.push(ReplayedOp { id, op, outcome });
        }
        Ok(report)
    }

    /// Replays until the queue is empty, connecting afresh for every attempt and sleeping
    /// `backoff` (full jitter) between attempts that stop retryably. Returns everything that
    /// finished, and where it stopped if an answer needs a person (never on a retryable one).
    /// Cancel it by dropping the future: an op is removed only after its final answer.
    pub async fn run_until_drained(
        &self,
        connect: &Connect,
        mut backoff: Backoff,
    ) -> Result<ReplayReport, QueueError> {
        let mut total = ReplayReport::default();
        while let Some((first, _)) = self.first() {
            let round = match connect().await {
                Ok(client) => self.replay(&client).await?,
                Err(error) => ReplayReport {
                    finished: Vec::new(),
                    stopped: Some(ReplayStop {
                        id: first,
                        retryable: error.is_retryable(),
                        error,
                    }),
                },
            };
            if !round.finished.is_empty() {
                backoff.reset();
            }
            total.finished.extend(round.finished);
            match round.stopped {
                None => {}
                Some(stopped) if stopped.retryable => {
                    tracing::info!(id = stopped.id, error = %stopped.error, "queue replay stopped; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Some(stopped) => {
                    total.stopped = Some(stopped);
                    break;
                }
            }
        }
        Ok(total)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn first(&self) -> Option<(u64, QueuedOp)> {
        let state = self.state();
        state
            .pending
            .first_key_value()
            .map(|(id, op)| (*id, op.clone()))
    }

    /// Deletes a finished op. Not synced: if a crash undoes it, the op is replayed once more
    /// under its request id and answered the same.
    fn remove(&self, id: u64) -> Result<(), QueueError> {
        let path = op_path(&self.dir, id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        self.state().pending.remove(&id);
        Ok(())
    }

    /// Moves a rejected op to `rejected/`, where nothing replays it.
    fn reject(&self, id: u64) -> Result<(), QueueError> {
        let rejected = rejected_dir(&self.dir);
        create_dir(&rejected)?;
        let (from, to) = (op_path(&self.dir, id), op_path(&rejected, id));
        std::fs::rename(&from, &to).map_err(io(&from))?;
        self.state().pending.remove(&id);
        Ok(())
    }
}

fn op_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.json"))
}

fn rejected_dir(dir: &Path) -> PathBuf {
    dir.join("rejected")
}

/// The op files in `dir`, by id; removes temporary files left by an interrupted write and
/// ignores anything else.
fn op_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, QueueError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with(".tmp") && path.is_file() {
            // atomic_write's temporary file: never renamed, so never an op.
            std::fs::remove_file(&path).map_err(io(&path))?;
        } else if let Some(id) = name
            .strip_suffix(".json")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
        {
            files.push((id, path));
        }
    }
    files.sort_unstable_by_key(|(id, _)| *id);
    Ok(files)
}

fn create_dir(dir: &Path) -> Result<(), QueueError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io(dir))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> QueueError + '_ {
    move |source| QueueError::Io {
        path: path.to_owned(),
        source,
    }
}
#[cfg(test)]
mod tests {
    use mintgate_proto::v1;

    use super::*;

    fn revoke(serial: &str) -> QueuedOp {
        QueuedOp::revoke(serial, v1::RevocationReason::KeyCompromise)
    }

    fn serials(queue: &DurableQueue) -> Vec<String> {
        queue
            .pending()
            .into_iter()
            .map(|(_, op)| match op.action {
                OpAction::Revoke { serial, .. } => serial,
            })
            .collect()
    }

    #[test]
    fn order_and_request_ids_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let queue = DurableQueue::open(dir.path()).unwrap();
        let ops = [revoke("0a"), revoke("0b"), revoke("0c")];
        let ids: Vec<u64> = ops
            .iter()
            .map(|op| queue.enqueue(op.clone()).unwrap())
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        drop(queue);

        let queue = DurableQueue::open(dir.path()).unwrap();
        let pending = queue.pending();
        assert_eq!(pending.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
        assert_eq!(
            pending.into_iter().map(|(_, op)| op).collect::<Vec<_>>(),
            ops
        );
        // New ops go after the old ones, never reusing an id.
        assert_eq!(queue.enqueue(revoke("0d")).unwrap(), 4);
        assert_eq!(serials(&queue), ["0a", "0b", "0c", "0d"]);
        // Ids are numbers, not names: the eleventh op still comes after the ninth.
        for i in 5..=11 {
            queue.enqueue(revoke(&format!("{i:02x}"))).unwrap();
        }
        drop(queue);
        let reopened = DurableQueue::open(dir.path()).unwrap();
        assert_eq!(reopened.pending().last().unwrap().0, 11);
        assert_eq!(serials(&reopened)[8..], ["09", "0a", "0b"]);
    }

    #[test]
    fn op_files_are_private_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let queue = DurableQueue::open(dir.path().join("queue")).unwrap();
        let op = revoke("0a");
        queue.enqueue(op.clone()).unwrap();
        let path = dir.path().join("queue/00000000000000000001.json");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["request_id"], op.request_id.as_str());
        assert_eq!(
            json["action"]["revoke"]["reason"],
            "REVOCATION_REASON_KEY_COMPROMISE"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_corrupt_op_file_is_refused_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let queue = DurableQueue::open(dir.path()).unwrap();
        queue.enqueue(revoke("0a")).unwrap();
        queue.enqueue(revoke("0b")).unwrap();
        drop(queue);
        let torn = dir.path().join("00000000000000000002.json");
        std::fs::write(&torn, b"{\"request_id\": \"r\", \"act").unwrap();
        match DurableQueue::open(dir.path()) {
            Err(QueueError::Corrupt { path, .. }) => assert_eq!(path, torn),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // An unknown reason is refused too, and the file is left as it was.
        let unknown = br#"{"request_id":"r","action":{"revoke":{"serial":"0b","reason":"BORED"}}}"#;
        std::fs::write(&torn, unknown).unwrap();
        let err = DurableQueue::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("BORED"), "{err}");
        assert_eq!(std::fs::read(&torn).unwrap(), unknown);
    }

    #[test]
    fn a_leftover_temporary_file_is_ignored_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let queue = DurableQueue::open(dir.path()).unwrap();
        queue.enqueue(revoke("0a")).unwrap();
        drop(queue);
        // What a crash inside atomic_write leaves: a torn temporary file, never renamed.
        let temp = dir.path().join(".tmpA1b2C3");
        std::fs::write(&temp, b"{\"request_id\"").unwrap();
        let queue = DurableQueue::open(dir.path()).unwrap();
        assert_eq!(serials(&queue), ["0a"]);
        assert!(!temp.exists());
    }

    #[test]
    fn an_op_without_a_request_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let queue = DurableQueue::open(dir.path()).unwrap();
        let mut op = revoke("0a");
        op.request_id.clear();
        assert!(matches!(
            queue.enqueue(op),
            Err(QueueError::MissingRequestId)
        ));
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_server_stops_the_replay_and_keeps_every_op() {
        let dir = tempfile::tempdir().unwrap();
        let queue = DurableQueue::open(dir.path()).unwrap();
        queue.enqueue(revoke("0a")).unwrap();
        queue.enqueue(revoke("0b")).unwrap();
        // Nothing listens on port 1.
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let report = queue.replay(&Client::from_channel(channel)).await.unwrap();
        assert!(report.finished.is_empty());
        let stopped = report.stopped.unwrap();
        assert_eq!((stopped.id, stopped.retryable), (1, true));
        assert!(stopped.error.is_retryable());
        assert_eq!(serials(&queue), ["0a", "0b"]);
        assert_eq!(
            serials(&DurableQueue::open(dir.path()).unwrap()),
            ["0a", "0b"]
        );
    }
}
