//! `mintgate evidence verify`: re-checks an evidence directory with no database and no server,
//! in this order, stopping at the first thing that fails: the manifest (every file present with
//! its size and SHA-256, no file it does not list), the audit chain's links, every checkpoint
//! (signature under a trusted key, and the exported chain has the hash it signed at its seq),
//! the event range the manifest claims, every policy version directory (it loads, and its
//! texts hash to its name), the CA records (each certificate has its listed key id, each state
//! change's approval is that event in the chain), and the CRL's signature under the exported
//! CA certificate. Files are
//! read as streams: memory stays small whatever the chain's length (it keeps the hashes at the
//! checkpoints' seqs only).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};

use mintgate_ca::{CrlError, CrlSummary};
use mintgate_domain::audit::{
    AuditKey, BrokenLink, ChainVerifier, ChainedEvent, Checkpoint, CheckpointSummary,
    FailedCheckpoint, SignedCheckpoint, verify_checkpoints_at,
};
use mintgate_domain::policy::{LoadError, Policy};
use rustls::pki_types::pem::PemObject as _;
use serde::Deserialize;

use super::unapproved::{Adoptions, unapproved};
use super::{
    ACTIVATIONS, AUDIT_KEYS, AUTHORITIES, AuthorityLine, CA_CERT, CHECKPOINTS, CRL, CheckpointLine,
    EVENTS, MANIFEST, Manifest, POLICY_DIR, SeqRange,
};
use crate::config::{ConfigError, load_policy_dir};

/// Which keys checkpoint signatures are checked against.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Keys the auditor holds (`--public-key`).
    Given(Vec<AuditKey>),
    /// `audit-keys.pem` from the export itself: whoever made the export could have made the
    /// keys, so this proves consistency, not who signed.
    Exported,
}

/// What held.
#[derive(Debug)]
pub struct Verified {
    pub files: usize,
    pub events: u64,
    pub in_period: Option<SeqRange>,
    pub checkpoints: CheckpointSummary,
    pub keys_given: bool,
    pub policy_versions: usize,
    /// The CRL, if the export has one.
    pub crl: Option<CrlSummary>,
    /// CAs in `authorities.json`.
    pub authorities: usize,
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let period = self.in_period.map_or_else(
            || "none in the period".to_owned(),
            |r| format!("seq {r} in the period"),
        );
        let keys = if self.keys_given {
            "the given public keys"
        } else {
            "audit-keys.pem from the export (weaker: pass --public-key with a key you hold)"
        };
        let crl = match &self.crl {
            Some(crl) => format!(
                "a CRL of {} revoked certificates signed by {}",
                crl.revoked, crl.issuer
            ),
            None => "no CRL".to_owned(),
        };
        write!(
            f,
            "evidence verified: {} files, audit chain of {} events ({period}), {} under {keys}, \
             {} policy versions, {} CAs with their history, {crl}",
            self.files, self.events, self.checkpoints, self.policy_versions, self.authorities
        )
    }
}

/// The first thing that does not verify.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{MANIFEST}: not a Mintgate evidence manifest: {0}")]
    Manifest(serde_json::Error),
    #[error("{path}: listed in the manifest but missing")]
    Missing { path: String },
    #[error("{path}: {found} bytes, the manifest says {listed} (the manifest was changed)")]
    Size {
        path: String,
        listed: u64,
        found: u64,
    },
    #[error("{path}: SHA-256 {found}, the manifest says {listed} (the file was changed)")]
    Hash {
        path: String,
        listed: String,
        found: String,
    },
    #[error("{path}: not listed in the manifest (a file was added)")]
    Extra { path: String },
    #[error("{file} line {line}: {source}")]
    Line {
        file: &'static str,
        line: usize,
        source: serde_json::Error,
    },
    #[error("{CHECKPOINTS} line {line}: hash or signature is not hex")]
    CheckpointHex { line: usize },
    #[error("{EVENTS}: {0}")]
    Chain(#[from] BrokenLink),
    #[error("{CHECKPOINTS}: {0}")]
    Checkpoint(#[from] FailedCheckpoint),
    #[error("{AUDIT_KEYS}: {0}")]
    Keys(mintgate_ca::AuditKeyError),
    #[error(
        "{EVENTS} holds events {found}, the manifest says {listed} (the events file was cut or \
         extended)",
        found = show(.found), listed = show(.listed)
    )]
    Range {
        listed: Option<SeqRange>,
        found: Option<SeqRange>,
    },
    #[error("{POLICY_DIR}/{version}: {source}")]
    PolicyUnreadable {
        version: String,
        source: ConfigError,
    },
    #[error("{POLICY_DIR}/{version}: does not load: {source}")]
    PolicyInvalid { version: String, source: LoadError },
    #[error("{POLICY_DIR}/{version}: its texts are version {found} (the policy was changed)")]
    PolicyVersion { version: String, found: String },
    #[error("{ACTIVATIONS} line {line}: version {version} is not in {POLICY_DIR}/")]
    PolicyMissing { line: usize, version: String },
    #[error("{CRL}: there is no {CA_CERT} to check its signature with")]
    CrlWithoutCa,
    #[error("{CRL}: {0}")]
    Crl(#[source] CrlError),
    #[error("{AUTHORITIES}: {0}")]
    Authorities(serde_json::Error),
    #[error("{AUTHORITIES}: CA {key_id}: {problem}")]
    Authority { key_id: String, problem: String },
}

/// Verifies the evidence in `dir`.
pub fn verify(dir: &Path, trust: Trust) -> Result<Verified, Failure> {
    let manifest: Manifest =
        serde_json::from_slice(&read(&dir.join(MANIFEST))?).map_err(Failure::Manifest)?;
    check_files(dir, &manifest)?;

    // A bad checkpoints file is reported after the chain, whose links come first.
    let checkpoints = checkpoints(dir);
    let wanted: HashSet<i64> = checkpoints
        .iter()
        .flatten()
        .map(|c| c.checkpoint.seq)
        .collect();
    let authorities = authorities(dir, &manifest)?;
    let approvals: HashSet<i64> = authorities
        .iter()
        .flat_map(|a| &a.history)
        .filter_map(|t| t.approval_seq)
        .collect();
    let chain = read_chain(dir, &wanted, &approvals)?;
    let checkpoints = checkpoints?;
    let (keys, keys_given) = match trust {
        Trust::Given(keys) => (keys, true),
        Trust::Exported => {
            let pem = String::from_utf8_lossy(&read(&dir.join(AUDIT_KEYS))?).into_owned();
            let keys = match mintgate_ca::audit_keys_from_pem(&pem) {
                Ok(keys) => keys,
                // An export with no keys has no checkpoints to check either (or they fail).
                Err(_) if pem.trim().is_empty() => Vec::new(),
                Err(e) => return Err(Failure::Keys(e)),
            };
            (keys, false)
        }
    };
    let keys: HashMap<String, AuditKey> = keys.into_iter().map(|k| (k.key_id.clone(), k)).collect();
    let head = chain.found.map_or(0, |r| r.last);
    let summary = verify_checkpoints_at(
        head,
        |seq| chain.hashes.get(&seq).copied(),
        &checkpoints,
        &keys,
        mintgate_ca::verify_signature,
    )?;
    if chain.found != manifest.exported {
        return Err(Failure::Range {
            listed: manifest.exported,
            found: chain.found,
        });
    }
    let policy_versions = check_policies(dir, &manifest)?;
    check_authorities(&authorities, &chain)?;
    let crl = check_crl(dir, &manifest)?;
    Ok(Verified {
        files: manifest.files.len(),
        events: chain.count,
        in_period: manifest.in_period,
        checkpoints: summary,
        keys_given,
        policy_versions,
        crl,
        authorities: authorities.len(),
    })
}

/// What reading the events file found.
struct Chain {
    count: u64,
    found: Option<SeqRange>,
    /// The hash at each of the wanted seqs the chain has.
    hashes: HashMap<i64, [u8; 32]>,
    /// The action and subject of the events at the CA approvals' seqs.
    approvals: HashMap<i64, (String, String)>,
    adoptions: Adoptions,
}

/// Reads the events file a line at a time, checking every link.
fn read_chain(
    dir: &Path,
    wanted: &HashSet<i64>,
    approval_seqs: &HashSet<i64>,
) -> Result<Chain, Failure> {
    let path = dir.join(EVENTS);
    let unreadable = |source| Failure::Unreadable {
        path: path.clone(),
        source,
    };
    let mut reader = BufReader::new(std::fs::File::open(&path).map_err(unreadable)?);
    let mut links = ChainVerifier::new();
    let (mut found, mut hashes) = (None::<SeqRange>, HashMap::new());
    let mut approvals = HashMap::new();
    let mut adoptions = Adoptions {
        adopted: HashSet::new(),
        chain_ends: None,
    };
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(unreadable)? == 0 {
            break;
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        let event: ChainedEvent =
            serde_json::from_slice(&line).map_err(|source| Failure::Line {
                file: EVENTS,
                line: number,
                source,
            })?;
        links.push(&event)?;
        let seq = event.event.seq;
        if wanted.contains(&seq) {
            hashes.insert(seq, event.hash);
        }
        adoptions.chain_ends = adoptions.chain_ends.max(Some(event.event.at));
        if event.event.action == "ca.adopted"
            && let Some(key_id) = event.event.subject.strip_prefix("ca:")
        {
            adoptions.adopted.insert(key_id.to_owned());
        }
        if approval_seqs.contains(&seq) {
            approvals.insert(seq, (event.event.action, event.event.subject));
        }
        found = Some(found.map_or(
            SeqRange {
                first: seq,
                last: seq,
            },
            |r| SeqRange { last: seq, ..r },
        ));
    }
    Ok(Chain {
        count: links.count(),
        found,
        hashes,
        approvals,
        adoptions,
    })
}

/// `authorities.json`, if the export has one.
fn authorities(dir: &Path, manifest: &Manifest) -> Result<Vec<AuthorityLine>, Failure> {
    if !manifest.files.iter().any(|f| f.path == AUTHORITIES) {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&read(&dir.join(AUTHORITIES))?).map_err(Failure::Authorities)
}

/// Each CA's chain starts with a certificate that has the key id it is listed under, each
/// state change's approval is, at the seq it names, that proposal's `proposal.approved` event,
/// and a state change names no proposal only where [`unapproved`] allows it.
fn check_authorities(authorities: &[AuthorityLine], chain: &Chain) -> Result<(), Failure> {
    for ca in authorities {
        let problem = |problem: String| Failure::Authority {
            key_id: ca.key_id.clone(),
            problem,
        };
        let first = rustls::pki_types::CertificateDer::pem_slice_iter(ca.chain_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| problem("chain_pem holds no certificate".to_owned()))?;
        let key_id = mintgate_ca::subject_key_id_hex(&first)
            .map_err(|e| problem(format!("its certificate does not parse as a CA: {e}")))?;
        if key_id != ca.key_id {
            return Err(problem(format!("its certificate's key id is {key_id}")));
        }
        for step in &ca.history {
            let (Some(seq), Some(proposal)) = (step.approval_seq, &step.proposal) else {
                continue;
            };
            let expected = ("proposal.approved", format!("proposal:{proposal}"));
            match chain.approvals.get(&seq) {
                Some((action, subject)) if *action == expected.0 && *subject == expected.1 => {}
                Some((action, subject)) => {
                    return Err(problem(format!(
                        "{}: event {seq} is {action} {subject}, not the approval of {proposal}",
                        step.state
                    )));
                }
                None if chain.found.is_some_and(|r| seq <= r.last) => {
                    return Err(problem(format!(
                        "{}: event {seq} is not in {EVENTS}",
                        step.state
                    )));
                }
                None => {}
            }
        }
    }
    match unapproved(authorities, &chain.adoptions) {
        Some((key_id, problem)) => Err(Failure::Authority { key_id, problem }),
        None => Ok(()),
    }
}

/// The CRL, if there is one, is signed by the CA certificate beside it.
fn check_crl(dir: &Path, manifest: &Manifest) -> Result<Option<CrlSummary>, Failure> {
    let listed = |path: &str| manifest.files.iter().any(|f| f.path == path);
    if !listed(CRL) {
        return Ok(None);
    }
    if !listed(CA_CERT) {
        return Err(Failure::CrlWithoutCa);
    }
    let ca = read(&dir.join(CA_CERT))?;
    let crl = read(&dir.join(CRL))?;
    mintgate_ca::verify_crl(&ca, &crl)
        .map(Some)
        .map_err(Failure::Crl)
}

/// Every listed file has its size and hash; nothing else is there.
fn check_files(dir: &Path, manifest: &Manifest) -> Result<(), Failure> {
    let mut present = BTreeSet::new();
    walk(dir, "", &mut present)?;
    present.remove(MANIFEST);
    for entry in &manifest.files {
        if !present.remove(&entry.path) {
            return Err(Failure::Missing {
                path: entry.path.clone(),
            });
        }
        let (found, size) = hash_file(&dir.join(&entry.path))?;
        if found != entry.sha256 {
            return Err(Failure::Hash {
                path: entry.path.clone(),
                listed: entry.sha256.clone(),
                found,
            });
        }
        if size != entry.size {
            return Err(Failure::Size {
                path: entry.path.clone(),
                listed: entry.size,
                found: size,
            });
        }
    }
    match present.into_iter().next() {
        Some(path) => Err(Failure::Extra { path }),
        None => Ok(()),
    }
}

/// Every version directory under `policy/` loads and hashes to its name, and every activation
/// names one. Returns how many there are.
fn check_policies(dir: &Path, manifest: &Manifest) -> Result<usize, Failure> {
    let prefix = format!("{POLICY_DIR}/");
    let versions: BTreeSet<&str> = manifest
        .files
        .iter()
        .filter_map(|f| f.path.strip_prefix(&prefix)?.split_once('/'))
        .map(|(version, _)| version)
        .collect();
    for version in &versions {
        let source = load_policy_dir(&dir.join(POLICY_DIR).join(version)).map_err(|source| {
            Failure::PolicyUnreadable {
                version: (*version).to_owned(),
                source,
            }
        })?;
        let policy = Policy::load(&source, None).map_err(|source| Failure::PolicyInvalid {
            version: (*version).to_owned(),
            source,
        })?;
        if policy.version() != *version {
            return Err(Failure::PolicyVersion {
                version: (*version).to_owned(),
                found: policy.version().to_owned(),
            });
        }
    }
    #[derive(Deserialize)]
    struct Named {
        version: String,
    }
    let activations: Vec<Named> = json_lines(dir, ACTIVATIONS)?;
    for (i, a) in activations.iter().enumerate() {
        if !versions.contains(a.version.as_str()) {
            return Err(Failure::PolicyMissing {
                line: i + 1,
                version: a.version.clone(),
            });
        }
    }
    Ok(versions.len())
}

fn checkpoints(dir: &Path) -> Result<Vec<SignedCheckpoint>, Failure> {
    let lines: Vec<CheckpointLine> = json_lines(dir, CHECKPOINTS)?;
    lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let bad = || Failure::CheckpointHex { line: i + 1 };
            let hash = hex::decode(&l.hash)
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .ok_or_else(bad)?;
            Ok(SignedCheckpoint {
                checkpoint: Checkpoint {
                    seq: l.seq,
                    hash,
                    at: l.at,
                    key_id: l.key_id,
                },
                signature: hex::decode(&l.signature).map_err(|_| bad())?,
            })
        })
        .collect()
}

fn json_lines<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    file: &'static str,
) -> Result<Vec<T>, Failure> {
    let bytes = read(&dir.join(file))?;
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(i, line)| {
            serde_json::from_slice(line).map_err(|source| Failure::Line {
                file,
                line: i + 1,
                source,
            })
        })
        .collect()
}

/// Every file under `dir`, as `/`-separated paths relative to it.
fn walk(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) -> Result<(), Failure> {
    let unreadable = |source| Failure::Unreadable {
        path: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = format!("{prefix}{name}");
        if entry.file_type().map_err(unreadable)?.is_dir() {
            walk(&entry.path(), &format!("{path}/"), out)?;
        } else {
            out.insert(path);
        }
    }
    Ok(())
}

/// A file's SHA-256 (hex) and size, read a buffer at a time.
fn hash_file(path: &Path) -> Result<(String, u64), Failure> {
    let unreadable = |source| Failure::Unreadable {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let (mut buffer, mut size) = (vec![0; 64 * 1024], 0u64);
    loop {
        let n = file.read(&mut buffer).map_err(unreadable)?;
        if n == 0 {
            break;
        }
        hash.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hash.finish()), size))
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|source| Failure::Unreadable {
        path: path.to_owned(),
        source,
    })
}

fn show(range: &Option<SeqRange>) -> String {
    range.map_or_else(|| "none".to_owned(), |r| r.to_string())
}
