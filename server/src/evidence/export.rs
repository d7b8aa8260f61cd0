//! `mintgate evidence export` and `Admin/ExportEvidence`: read the database (one snapshot for
//! the audit chain, its checkpoints and keys, the chain a page at a time; then the change-control
//! records) and write the evidence files into a [`Sink`], the manifest last. Needs no server;
//! memory stays at one page of the chain whatever its length.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use mintgate_domain::audit::SignedCheckpoint;
use mintgate_domain::authority::AuthorityStore as _;
use mintgate_domain::governance::{Activation, Change, GovernanceStore as _, ProposalRecord};
use mintgate_domain::store::StoreError;
use mintgate_store::{ChainBounds, SqlStore};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::sink::{DirSink, Hashing, Sink};
use super::{
    ACTIVATIONS, AUDIT_KEYS, AUTHORITIES, CA_CERT, CHECKPOINTS, CONTROLS, CRL, CheckpointLine,
    EVENTS, FORMAT, Manifest, POLICY_DIR, PROPOSALS, Period, ROLE_BINDINGS, SeqRange, bindings,
    controls,
};

/// Events read from the database at a time.
const PAGE: u64 = 2000;

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub since: OffsetDateTime,
    pub until: OffsetDateTime,
    /// The CA certificate(s), PEM, written as `ca.pem`.
    pub ca_cert: Option<Vec<u8>>,
    /// The current CRL (DER, as `/crl` serves it), written as `crl.der`; it must verify under
    /// `ca_cert`.
    pub crl: Option<Vec<u8>>,
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
    #[error("a CRL needs the CA certificate that verifies it (--ca-cert)")]
    CrlWithoutCa,
    #[error("the CRL does not verify under the CA certificate: {0}")]
    Crl(#[source] mintgate_ca::CrlError),
    #[error("the reader of the export went away")]
    ReaderGone,
    #[error("reading the database")]
    Store(#[from] StoreError),
    #[error("encoding JSON")]
    Json(#[from] serde_json::Error),
    #[error("formatting a time")]
    Time(#[from] time::error::Format),
}

/// Writes the evidence for `request`'s period into the directory `out`, which must not exist
/// or be empty; returns the manifest written.
pub async fn export_to_dir(
    store: &SqlStore,
    request: &ExportRequest,
    out: &Path,
) -> Result<Manifest, ExportError> {
    check_period(request)?;
    refuse_non_empty(out)?;
    export(store, request, &mut DirSink::new(out)).await
}

/// Writes the evidence for `request`'s period into `sink`, the manifest last; returns it.
pub async fn export<S: Sink>(
    store: &SqlStore,
    request: &ExportRequest,
    sink: &mut S,
) -> Result<Manifest, ExportError> {
    check_period(request)?;
    let (since, until) = (request.since, request.until);
    if let Some(crl) = &request.crl {
        let ca = request.ca_cert.as_ref().ok_or(ExportError::CrlWithoutCa)?;
        mintgate_ca::verify_crl(ca, crl).map_err(ExportError::Crl)?;
    }
    let mut files = Hashing::new(sink);
    let (from, to) = (since.unix_timestamp(), until.unix_timestamp());
    let snapshot = store.audit_snapshot().await?;
    let chain = async {
        let bounds = snapshot.chain_bounds(from, to).await?;
        let checkpoints = snapshot.checkpoints().await?;
        let keys = snapshot.keys().await?;
        let (exported, pinned) = exported_head(bounds, checkpoints, to);
        files.start(EVENTS).await?;
        let (mut after, mut line) = (0, Vec::new());
        // Each proposal's approval seq, to order role-binding changes within a second.
        let mut approvals = HashMap::new();
        while after < exported {
            let page = snapshot.chain_page(after, exported, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.event.seq;
            for event in &page {
                if event.event.action == "proposal.approved"
                    && let Some(id) = event.event.subject.strip_prefix("proposal:")
                {
                    approvals.insert(id.to_owned(), event.event.seq);
                }
                line.clear();
                serde_json::to_writer(&mut line, event)?;
                line.push(b'\n');
                files.write(&line).await?;
            }
        }
        Ok::<_, ExportError>((bounds, after, pinned, keys, approvals))
    }
    .await;
    snapshot.close().await;
    let (bounds, exported, pinned, keys, approvals) = chain?;

    let pinned = checkpoint_lines(pinned);
    files.file(CHECKPOINTS, &json_lines(&pinned)?).await?;
    let mut pem = String::new();
    for key in &keys {
        pem.push_str(&format!("# audit key {} ({})\n", key.key_id, key.algorithm));
        pem.push_str(&mintgate_ca::audit_key_pem(key));
    }
    files.file(AUDIT_KEYS, pem.as_bytes()).await?;

    let mut policy = BTreeMap::new();
    let versions = policy_files(store, since, until, &mut policy).await?;
    for (path, bytes) in &policy {
        files.file(path, bytes).await?;
    }
    let all_proposals = {
        let mut all = store.proposals(None, i64::MAX as u64).await?;
        all.reverse();
        all
    };
    let proposals = proposal_lines(&all_proposals, since, until)?;
    files.file(PROPOSALS, &json_lines(&proposals)?).await?;
    let rows = store.role_bindings().await?;
    let spans =
        bindings::spans_in_period(&rows, &all_proposals, &approvals, since, until, request.now)?;
    files
        .file(ROLE_BINDINGS, &serde_json::to_vec_pretty(&spans)?)
        .await?;
    let cas = store.authorities().await?;
    let authorities = super::authorities::lines(&cas, &all_proposals, &approvals)?;
    files
        .file(AUTHORITIES, &serde_json::to_vec_pretty(&authorities)?)
        .await?;
    if let Some(ca) = &request.ca_cert {
        files.file(CA_CERT, ca).await?;
    }
    if let Some(crl) = &request.crl {
        files.file(CRL, crl).await?;
    }
    let exported = (exported > 0).then_some(SeqRange {
        first: 1,
        last: exported,
    });
    let in_period = bounds
        .in_period
        .map(|(first, last)| SeqRange { first, last });
    let facts = controls::Facts {
        events: exported.map_or(0, |r| usize::try_from(r.last).unwrap_or(usize::MAX)),
        in_period,
        checkpoints: pinned.len(),
        policy_versions: versions,
        proposals: proposals.len(),
        bindings: spans.len(),
        ca_cert: request.ca_cert.is_some(),
        crl: request.crl.is_some(),
        authorities: authorities.len(),
    };
    files
        .file(CONTROLS, controls::render(&facts).as_bytes())
        .await?;

    let (entries, sink) = files.entries();
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        tool_version: env!("CARGO_PKG_VERSION").to_owned(),
        exported_at: request.now.format(&Rfc3339)?,
        period: Period {
            since: since.format(&Rfc3339)?,
            until: until.format(&Rfc3339)?,
        },
        exported,
        in_period,
        files: entries,
    };
    let mut text = serde_json::to_vec_pretty(&manifest)?;
    text.push(b'\n');
    sink.finish(&text).await?;
    Ok(manifest)
}

fn check_period(request: &ExportRequest) -> Result<(), ExportError> {
    if request.since > request.until {
        return Err(ExportError::Period {
            since: request.since.format(&Rfc3339)?,
            until: request.until.format(&Rfc3339)?,
        });
    }
    Ok(())
}

/// How far the events file goes, and the checkpoints it carries: up to the last event by
/// `until`, and on to the first checkpoint at or after it (so that a cut of the period's newest
/// events is caught), or to the newest checkpoint signed by `until` if that is further.
fn exported_head(
    bounds: ChainBounds,
    mut checkpoints: Vec<SignedCheckpoint>,
    until: i64,
) -> (i64, Vec<SignedCheckpoint>) {
    let last = bounds.last_by_until.unwrap_or(0);
    let head = bounds.head.unwrap_or(0);
    checkpoints.sort_by_key(|c| c.checkpoint.seq);
    let signed_by_until = checkpoints
        .iter()
        .filter(|c| c.checkpoint.at <= until)
        .map(|c| c.checkpoint.seq)
        .max()
        .unwrap_or(0);
    // No event by `until`: nothing to pin.
    let pinning = checkpoints
        .iter()
        .map(|c| c.checkpoint.seq)
        .find(|&s| s >= last && last > 0)
        .unwrap_or(last);
    let exported = last.max(signed_by_until).max(pinning).min(head);
    checkpoints.retain(|c| c.checkpoint.seq <= exported);
    (exported, checkpoints)
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

/// Proposals created or decided in the period, oldest first (`all` is oldest first).
fn proposal_lines(
    all: &[ProposalRecord],
    since: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<Vec<ProposalLine>, ExportError> {
    let in_period = |t: OffsetDateTime| since <= t && t <= until;
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
            Change::RoleBinding { .. }
            | Change::Unblock { .. }
            | Change::Ca { .. }
            | Change::RevokeIssuer { .. } => (None, None),
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

#[cfg(test)]
mod tests {
    use mintgate_domain::audit::{AuditEvent, ChainedEvent, Checkpoint, GENESIS};

    use super::*;

    /// What the store's `chain_bounds` answers for `chain` (the period's start does not matter
    /// to the head).
    fn exported(
        chain: &[ChainedEvent],
        checkpoints: &[SignedCheckpoint],
        until: i64,
    ) -> (i64, Vec<SignedCheckpoint>) {
        let bounds = ChainBounds {
            in_period: None,
            last_by_until: chain
                .iter()
                .rev()
                .find(|e| e.event.at <= until)
                .map(|e| e.event.seq),
            head: chain.last().map(|e| e.event.seq),
        };
        exported_head(bounds, checkpoints.to_vec(), until)
    }

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
        let (head, pinned) = exported(&chain, &both, 35);
        assert_eq!((head, seqs(&pinned)), (5, vec![2, 5]));
        // No checkpoint after the period: the chain ends with it, unpinned past seq 2.
        let (head, pinned) = exported(&chain, &both[..1], 35);
        assert_eq!((head, seqs(&pinned)), (3, vec![2]));
        // Nothing by `until`: nothing exported.
        let (head, pinned) = exported(&chain, &both, 5);
        assert_eq!((head, seqs(&pinned)), (0, vec![]));
    }
}
