//! `mintgate evidence export`: reads the database (one snapshot for the audit chain, its
//! checkpoints and keys; then the change-control records) and writes the evidence directory with
//! its manifest. Needs no server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mintgate_domain::audit::{ChainedEvent, SignedCheckpoint};
use mintgate_domain::governance::{
    Activation, Change, GovernanceStore as _, ProposalRecord, RoleBinding,
};
use mintgate_domain::store::StoreError;
use mintgate_store::SqlStore;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{
    ACTIVATIONS, AUDIT_KEYS, CA_CERT, CHECKPOINTS, CONTROLS, CheckpointLine, EVENTS, FORMAT,
    FileEntry, MANIFEST, Manifest, POLICY_DIR, PROPOSALS, Period, ROLE_BINDINGS, SeqRange,
    controls,
};

/// What to export, and where.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub since: OffsetDateTime,
    pub until: OffsetDateTime,
    /// Must not exist or be empty.
    pub out: PathBuf,
    /// The CA certificate (PEM) to include as `ca.pem`.
    pub ca_cert: Option<PathBuf>,
    /// The exporting machine's time (recorded, and what "in force" means for role bindings).
    pub now: OffsetDateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("--since {since} is after --until {until}")]
    Period { since: String, until: String },
    #[error("{} is not empty: evidence is written into an empty directory", .0.display())]
    NotEmpty(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy version {0} is activated but not stored")]
    MissingPolicy(String),
    #[error("policy file name {0:?} is not a plain file name")]
    FileName(String),
    #[error("reading the database")]
    Store(#[from] StoreError),
    #[error("encoding JSON")]
    Json(#[from] serde_json::Error),
    #[error("formatting a time")]
    Time(#[from] time::error::Format),
}

/// Writes the evidence for `request`'s period into `request.out`; returns the manifest written.
pub async fn export(store: &SqlStore, request: &ExportRequest) -> Result<Manifest, ExportError> {
    let (since, until) = (request.since, request.until);
    if since > until {
        return Err(ExportError::Period {
            since: since.format(&Rfc3339)?,
            until: until.format(&Rfc3339)?,
        });
    }
    refuse_non_empty(&request.out)?;
    let snapshot = store.audit_snapshot().await?;
    let read = async {
        Ok::<_, StoreError>((
            snapshot.chain().await?,
            snapshot.checkpoints().await?,
            snapshot.keys().await?,
        ))
    }
    .await;
    snapshot.close().await;
    let (chain, checkpoints, keys) = read?;

    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let (from, to) = (since.unix_timestamp(), until.unix_timestamp());
    let in_period = seq_range(chain.iter().filter(|e| (from..=to).contains(&e.event.at)));
    let (exported, pinned) = exported_head(&chain, &checkpoints, to);
    let events = &chain[..usize::try_from(exported).unwrap_or(0)];
    files.insert(EVENTS.to_owned(), json_lines(events)?);
    let pinned = checkpoint_lines(pinned);
    files.insert(CHECKPOINTS.to_owned(), json_lines(&pinned)?);
    let mut pem = String::new();
    for key in &keys {
        pem.push_str(&format!("# audit key {} ({})\n", key.key_id, key.algorithm));
        pem.push_str(&mintgate_ca::audit_key_pem(key));
    }
    files.insert(AUDIT_KEYS.to_owned(), pem.into_bytes());

    let versions = policy_files(store, since, until, &mut files).await?;
    let proposals = proposal_lines(store, since, until).await?;
    files.insert(PROPOSALS.to_owned(), json_lines(&proposals)?);
    let bindings: Vec<BindingLine> = store
        .role_bindings()
        .await?
        .iter()
        .map(|b| BindingLine::of(b, request.now))
        .collect::<Result<_, _>>()?;
    files.insert(
        ROLE_BINDINGS.to_owned(),
        serde_json::to_vec_pretty(&bindings)?,
    );
    if let Some(path) = &request.ca_cert {
        files.insert(CA_CERT.to_owned(), read_file(path)?);
    }
    let facts = controls::Facts {
        events: events.len(),
        in_period,
        checkpoints: pinned.len(),
        policy_versions: versions,
        proposals: proposals.len(),
        bindings: bindings.len(),
        ca_cert: request.ca_cert.is_some(),
    };
    files.insert(CONTROLS.to_owned(), controls::render(&facts).into_bytes());

    let manifest = Manifest {
        format: FORMAT.to_owned(),
        tool_version: env!("CARGO_PKG_VERSION").to_owned(),
        exported_at: request.now.format(&Rfc3339)?,
        period: Period {
            since: since.format(&Rfc3339)?,
            until: until.format(&Rfc3339)?,
        },
        exported: seq_range(events.iter()),
        in_period,
        files: files
            .iter()
            .map(|(path, bytes)| FileEntry::of(path, bytes))
            .collect(),
    };
    for (path, bytes) in &files {
        write_file(&request.out.join(path), bytes)?;
    }
    let mut text = serde_json::to_vec_pretty(&manifest)?;
    text.push(b'\n');
    write_file(&request.out.join(MANIFEST), &text)?;
    Ok(manifest)
}

/// How far the events file goes, and the checkpoints it carries: up to the last event by
/// `until`, and on to the first checkpoint at or after it (so that a cut of the period's newest
/// events is caught), or to the newest checkpoint signed by `until` if that is further.
fn exported_head(
    chain: &[ChainedEvent],
    checkpoints: &[SignedCheckpoint],
    until: i64,
) -> (i64, Vec<SignedCheckpoint>) {
    let last = chain
        .iter()
        .rev()
        .find(|e| e.event.at <= until)
        .map_or(0, |e| e.event.seq);
    let head = chain.last().map_or(0, |e| e.event.seq);
    let mut sorted = checkpoints.to_vec();
    sorted.sort_by_key(|c| c.checkpoint.seq);
    let signed_by_until = sorted
        .iter()
        .filter(|c| c.checkpoint.at <= until)
        .map(|c| c.checkpoint.seq)
        .max()
        .unwrap_or(0);
    // No event by `until`: nothing to pin.
    let pinning = sorted
        .iter()
        .map(|c| c.checkpoint.seq)
        .find(|&s| s >= last && last > 0)
        .unwrap_or(last);
    let exported = last.max(signed_by_until).max(pinning).min(head);
    sorted.retain(|c| c.checkpoint.seq <= exported);
    (exported, sorted)
}

fn seq_range<'a>(mut events: impl Iterator<Item = &'a ChainedEvent>) -> Option<SeqRange> {
    let first = events.next()?.event.seq;
    let last = events.last().map_or(first, |e| e.event.seq);
    Some(SeqRange { first, last })
}

fn checkpoint_lines(checkpoints: Vec<SignedCheckpoint>) -> Vec<CheckpointLine> {
    checkpoints
        .into_iter()
        .map(|c| CheckpointLine {
            seq: c.checkpoint.seq,
            hash: hex::encode(c.checkpoint.hash),
            at: c.checkpoint.at,
            key_id: c.checkpoint.key_id,
            signature: hex::encode(c.signature),
        })
        .collect()
}

/// `policy/<version>/` for every version active at some time in the period (the one active at
/// its start included), and `policy/activations.jsonl`. Returns how many versions.
async fn policy_files(
    store: &SqlStore,
    since: OffsetDateTime,
    until: OffsetDateTime,
    files: &mut BTreeMap<String, Vec<u8>>,
) -> Result<usize, ExportError> {
    let activations = store.activations().await?;
    // The last activation by `since` was in force at the start; later ones up to `until` too.
    let start = activations
        .iter()
        .rposition(|a| a.activated_at <= since)
        .unwrap_or(0);
    let relevant: Vec<&Activation> = activations[start.min(activations.len())..]
        .iter()
        .filter(|a| a.activated_at <= until)
        .collect();
    let versions: BTreeSet<&str> = relevant.iter().map(|a| a.version.as_str()).collect();
    for version in &versions {
        let stored = store
            .policy_version(version)
            .await?
            .ok_or_else(|| ExportError::MissingPolicy((*version).to_owned()))?;
        let dir = format!("{POLICY_DIR}/{version}");
        files.insert(
            format!("{dir}/{}", mintgate_domain::policy::SCHEMA_FILE),
            stored.source.schema.into_bytes(),
        );
        for file in stored.source.files {
            // Names come from a directory listing or a proposal: never a path of their own.
            if file.name.is_empty() || file.name.starts_with('.') || file.name.contains(['/', '\\'])
            {
                return Err(ExportError::FileName(file.name));
            }
            files.insert(format!("{dir}/{}", file.name), file.text.into_bytes());
        }
    }
    let lines = relevant
        .iter()
        .map(|a| ActivationLine::of(a))
        .collect::<Result<Vec<_>, _>>()?;
    files.insert(ACTIVATIONS.to_owned(), json_lines(&lines)?);
    Ok(versions.len())
}

/// Proposals created or decided in the period, oldest first.
async fn proposal_lines(
    store: &SqlStore,
    since: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<Vec<ProposalLine>, ExportError> {
    let in_period = |t: OffsetDateTime| since <= t && t <= until;
    let mut all = store.proposals(None, i64::MAX as u64).await?;
    all.reverse();
    all.iter()
        .filter(|p| in_period(p.created_at) || p.approved_at.is_some_and(in_period))
        .map(ProposalLine::of)
        .collect()
}

#[derive(Serialize)]
struct ActivationLine {
    seq: i64,
    version: String,
    proposal_id: Option<String>,
    label: Option<String>,
    activated_at: String,
    /// The operator whose approval activated it (`bootstrap` for the first).
    activated_by: String,
}

impl ActivationLine {
    fn of(a: &Activation) -> Result<Self, ExportError> {
        Ok(Self {
            seq: a.seq,
            version: a.version.clone(),
            proposal_id: a.proposal_id.clone(),
            label: a.label.clone(),
            activated_at: a.activated_at.format(&Rfc3339)?,
            activated_by: a.activated_by.clone(),
        })
    }
}

#[derive(Serialize)]
struct ProposalLine {
    id: String,
    kind: &'static str,
    /// What it changes, in one line.
    change: String,
    /// For a policy proposal: the version proposed and the one active when it was.
    policy_version: Option<String>,
    base_version: Option<String>,
    author: String,
    request_id: String,
    payload_hash: String,
    state: &'static str,
    created_at: String,
    expires_at: String,
    approved_by: Option<String>,
    approved_at: Option<String>,
    superseded_by: Option<String>,
}

impl ProposalLine {
    fn of(p: &ProposalRecord) -> Result<Self, ExportError> {
        let (policy_version, base_version) = match &p.change {
            Change::Policy {
                version,
                base_version,
                ..
            } => (Some(version.clone()), Some(base_version.clone())),
            Change::RoleBinding { .. } | Change::Unblock { .. } => (None, None),
        };
        Ok(Self {
            id: p.id.clone(),
            kind: p.change.kind().as_str(),
            change: p.change.describe(),
            policy_version,
            base_version,
            author: p.author.clone(),
            request_id: p.request_id.clone(),
            payload_hash: p.payload_hash.clone(),
            state: p.state.as_str(),
            created_at: p.created_at.format(&Rfc3339)?,
            expires_at: p.expires_at.format(&Rfc3339)?,
            approved_by: p.approved_by.clone(),
            approved_at: p.approved_at.map(|t| t.format(&Rfc3339)).transpose()?,
            superseded_by: p.superseded_by.clone(),
        })
    }
}

#[derive(Serialize)]
struct BindingLine {
    operator: String,
    role: String,
    valid_until: Option<String>,
    granted_by: String,
    granted_at: String,
    proposal_id: Option<String>,
    /// Whether it was in force at export time (not past `valid_until`).
    in_force_at_export: bool,
}

impl BindingLine {
    fn of(b: &RoleBinding, now: OffsetDateTime) -> Result<Self, ExportError> {
        Ok(Self {
            operator: b.operator.clone(),
            role: b.role.clone(),
            valid_until: b.valid_until.map(|t| t.format(&Rfc3339)).transpose()?,
            granted_by: b.granted_by.clone(),
            granted_at: b.granted_at.format(&Rfc3339)?,
            proposal_id: b.proposal_id.clone(),
            in_force_at_export: b.valid_at(now),
        })
    }
}

fn json_lines<T: Serialize>(items: &[T]) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    for item in items {
        serde_json::to_writer(&mut out, item)?;
        out.push(b'\n');
    }
    Ok(out)
}

fn refuse_non_empty(dir: &Path) -> Result<(), ExportError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => match entries.into_iter().next() {
            Some(_) => Err(ExportError::NotEmpty(dir.to_owned())),
            None => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ExportError::Io {
            path: dir.to_owned(),
            source,
        }),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, ExportError> {
    std::fs::read(path).map_err(|source| ExportError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let io = |source| ExportError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, bytes).map_err(io)
}

#[cfg(test)]
mod tests {
    use mintgate_domain::audit::{AuditEvent, Checkpoint, GENESIS};

    use super::*;

    fn chain(times: &[i64]) -> Vec<ChainedEvent> {
        let mut prev = GENESIS;
        (1..)
            .zip(times)
            .map(|(seq, &at)| {
                let e = ChainedEvent::seal(
                    AuditEvent {
                        seq,
                        at,
                        actor: "a".into(),
                        action: "x".into(),
                        subject: "s".into(),
                        spiffe_id: None,
                        dns_names: vec![],
                        key_type: None,
                        not_before: None,
                        not_after: None,
                        policy_version: None,
                        policy_rule: None,
                        request_id: None,
                        detail: None,
                    },
                    prev,
                );
                prev = e.hash;
                e
            })
            .collect()
    }

    fn checkpoint(chain: &[ChainedEvent], seq: i64) -> SignedCheckpoint {
        let e = &chain[usize::try_from(seq - 1).unwrap()];
        SignedCheckpoint {
            checkpoint: Checkpoint {
                seq,
                hash: e.hash,
                at: e.event.at,
                key_id: "k".into(),
            },
            signature: vec![],
        }
    }

    #[test]
    fn the_export_runs_on_to_the_checkpoint_that_pins_the_period() {
        let chain = chain(&[10, 20, 30, 40, 50]);
        let both = [checkpoint(&chain, 2), checkpoint(&chain, 5)];
        let seqs = |c: &[SignedCheckpoint]| c.iter().map(|c| c.checkpoint.seq).collect::<Vec<_>>();
        // The period ends after seq 3; seq 5's checkpoint pins it, so the chain goes on to 5.
        let (head, pinned) = exported_head(&chain, &both, 35);
        assert_eq!((head, seqs(&pinned)), (5, vec![2, 5]));
        // No checkpoint after the period: the chain ends with it, unpinned past seq 2.
        let (head, pinned) = exported_head(&chain, &both[..1], 35);
        assert_eq!((head, seqs(&pinned)), (3, vec![2]));
        // Nothing by `until`: nothing exported.
        let (head, pinned) = exported_head(&chain, &both, 5);
        assert_eq!((head, seqs(&pinned)), (0, vec![]));
    }
}
