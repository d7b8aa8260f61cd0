//! Evidence for auditors (DESIGN §17): `mintgate evidence export` writes a period's evidence
//! from the database; `mintgate evidence verify` re-checks it with no database and no server,
//! and names the first thing that does not hold in an edited, reordered, truncated or
//! re-chained export.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mintgate_ca::{FileAuditSigner, audit_key_pem};
use mintgate_domain::audit::ChainedEvent;
use mintgate_domain::ports::AuditSigner as _;
use mintgate_sdk::v1;
use mintgate_server::evidence::{FileEntry, Manifest};
use mintgate_tests::csr::csr;
use mintgate_tests::{ALICE_ID, BOB_ID, Backend, Options, TestServer, both_backends};
use time::format_description::well_known::Rfc3339;

use crate::governance::approve;
use crate::issuance::{WORKLOAD, enroll_request};
use crate::policy::{extended_policy, version_of};
use crate::revocation::revoke_request;

/// An operator who holds a role only for a while in the test.
const DAVE: &str = "spiffe://dev.mintgate.local/operator/dave";

both_backends!(
    an_exported_period_verifies_offline_and_tampering_is_named,
    evidence
);
async fn evidence(backend: Backend) {
    let server = TestServer::spawn_with(Options {
        checkpoint_every_events: 1,
        ..Options::new(backend)
    })
    .await;
    let since = server.clock.now_odt() - time::Duration::hours(1);
    let url = server.database_url.clone();

    // Issuance, a revocation, and a two-person policy change.
    let (csr_pem, _) = csr(WORKLOAD, &[]);
    let issued = server
        .node()
        .await
        .enroll(enroll_request("e-1", &csr_pem))
        .await
        .unwrap();
    let (mut alice, mut bob) = (server.admin_as("alice").await, server.admin_as("bob").await);
    server
        .admin_revocation()
        .await
        .revoke(revoke_request(
            "r-1",
            &issued.serial,
            v1::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap();
    let extended = extended_policy();
    let proposal = alice
        .propose_policy(v1::ProposePolicyRequest {
            request_id: "p-1".to_owned(),
            schema: extended.schema.clone(),
            files: extended
                .files
                .iter()
                .map(|f| v1::PolicyFile {
                    name: f.name.clone(),
                    text: f.text.clone(),
                })
                .collect(),
            label: "CHG-7".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .proposal
        .unwrap();
    approve(&mut bob, &proposal.id).await.unwrap();
    // A role granted and taken away again within the period.
    for (request_id, remove) in [("rb-1", false), ("rb-2", true)] {
        let proposal = alice
            .propose_role_binding(v1::ProposeRoleBindingRequest {
                request_id: request_id.to_owned(),
                operator: DAVE.to_owned(),
                role: "issuer".to_owned(),
                valid_until: None,
                remove,
            })
            .await
            .unwrap()
            .into_inner()
            .proposal
            .unwrap();
        approve(&mut bob, &proposal.id).await.unwrap();
    }
    let until = server.clock.now_odt() + time::Duration::hours(1);
    // The CRL as the server serves it, and the CA certificate that signed it.
    let (code, crl) = server.http_get("/crl").await;
    assert_eq!(code, 200);
    let ca_pem = server.pki.ca.cert_pem.clone();
    let secret: [u8; 32] = hex::decode(server.pki.join_token_key_hex.trim())
        .unwrap()
        .try_into()
        .unwrap();
    // Stopped, the server signs the final head; the database stays for the export.
    let stopped = server.stop().await;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("evidence");
    let (crl_file, ca_file) = (tmp.path().join("crl.der"), tmp.path().join("ca.pem"));
    std::fs::write(&crl_file, &crl).unwrap();
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let (since, until) = (
        since.format(&Rfc3339).unwrap(),
        until.format(&Rfc3339).unwrap(),
    );
    let export = |out: &Path| {
        mintgate(&[
            "evidence",
            "export",
            "--database-url",
            &url,
            "--since",
            &since,
            "--until",
            &until,
            "--out",
            out.to_str().unwrap(),
            "--ca-cert",
            ca_file.to_str().unwrap(),
            "--crl",
            crl_file.to_str().unwrap(),
        ])
    };
    let (ok, text) = export(&dir);
    assert!(ok, "{text}");
    let (ok, text) = export(&dir);
    assert!(!ok, "a non-empty directory is refused: {text}");

    let events = read_events(&dir);
    let checkpoints = read_lines(&dir.join("checkpoints.jsonl"));
    let newest: i64 = checkpoints.last().unwrap()["seq"].as_i64().unwrap();
    assert_eq!(newest, events.len() as i64, "the head is pinned");
    let actions: Vec<&str> = events.iter().map(|e| e.event.action.as_str()).collect();
    for action in [
        "certificate.issued",
        "certificate.revoked",
        "proposal.created",
        "proposal.approved",
        "policy.activated",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    let dev = version_of(&mintgate_domain::policy::PolicySource::dev());
    let new = version_of(&extended);
    for version in [&dev, &new] {
        assert!(
            dir.join("policy")
                .join(version)
                .join("schema.cedarschema")
                .is_file()
        );
    }
    let proposals = read_lines(&dir.join("policy/proposals.jsonl"));
    assert_eq!(proposals.len(), 3, "{proposals:?}");
    let proposals: Vec<_> = proposals
        .into_iter()
        .filter(|p| p["kind"] == "POLICY")
        .collect();
    assert_eq!(proposals[0]["author"], ALICE_ID);
    assert_eq!(proposals[0]["approved_by"], BOB_ID);
    assert_eq!(proposals[0]["policy_version"], new.as_str());
    let activations = read_lines(&dir.join("policy/activations.jsonl"));
    assert_eq!(
        activations.last().unwrap()["proposal_id"],
        proposal.id.as_str()
    );
    assert_eq!(activations.last().unwrap()["label"], "CHG-7");
    assert_eq!(std::fs::read(dir.join("crl.der")).unwrap(), crl);
    assert_eq!(std::fs::read_to_string(dir.join("ca.pem")).unwrap(), ca_pem);
    // Role bindings over the period: dave's issuer binding, gone by now, is there with its
    // grant and its removal; bob's auditor binding from the configuration is still in force.
    let bindings: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.join("role-bindings.json")).unwrap()).unwrap();
    let span = |operator: &str, role: &str| {
        bindings
            .iter()
            .find(|b| b["operator"] == operator && b["role"] == role)
            .unwrap_or_else(|| panic!("{operator} {role} in {bindings:?}"))
            .clone()
    };
    let dave = span(DAVE, "issuer");
    assert_eq!(dave["granted_by"], BOB_ID, "{bindings:?}");
    assert!(dave["ended_at"].is_string(), "{dave}");
    assert_eq!(dave["in_force_at_export"], false);
    let bob_auditor = span(BOB_ID, "auditor");
    assert_eq!(bob_auditor["granted_by"], "bootstrap");
    assert_eq!(bob_auditor["in_force_at_export"], true);
    let controls = std::fs::read_to_string(dir.join("controls.md")).unwrap();
    assert!(controls.contains("`crl.der`: the CRL"), "{controls}");
    for control in [
        "AC-5", "AC-6", "AU-2", "AU-9", "AU-10", "CM-3", "IA-5", "SC-12", "SC-17",
    ] {
        assert!(controls.contains(&format!("## {control}")), "{control}");
    }

    // It verifies with no database: under the exported keys, and under the key the auditor holds.
    drop(stopped);
    let (ok, text) = verify(&dir, &[]);
    assert!(ok, "{text}");
    assert!(text.starts_with("evidence verified:"), "{text}");
    assert!(
        text.contains("audit-keys.pem from the export (weaker"),
        "{text}"
    );
    assert!(
        text.contains("a CRL of 1 revoked certificates signed by "),
        "{text}"
    );
    let key = FileAuditSigner::from_pem(&FileAuditSigner::dev_pem(&secret)).unwrap();
    let trusted = tmp.path().join("audit.pub.pem");
    std::fs::write(&trusted, audit_key_pem(key.public_key())).unwrap();
    let trusted = trusted.to_str().unwrap().to_owned();
    let (ok, text) = verify(&dir, &["--public-key", &trusted]);
    assert!(ok, "{text}");
    assert!(text.contains("under the given public keys"), "{text}");
    let other = FileAuditSigner::from_pem(&FileAuditSigner::dev_pem(&[0xee; 32])).unwrap();
    let untrusted = tmp.path().join("other.pub.pem");
    std::fs::write(&untrusted, audit_key_pem(other.public_key())).unwrap();
    let (ok, text) = verify(&dir, &["--public-key", untrusted.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains("which is not a trusted audit key"), "{text}");

    let first_checkpoint = checkpoints[0]["seq"].as_i64().unwrap();
    let tampered = |name: &str, change: &dyn Fn(&Path)| {
        let copy = tmp.path().join(name);
        copy_dir(&dir, &copy);
        change(&copy);
        let started = Instant::now();
        let (ok, text) = verify(&copy, &["--public-key", &trusted]);
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(!ok, "{name}: verify passed: {text}");
        text
    };

    // Edited: one event's actor changed, the manifest left as it was.
    let text = tampered("edited", &|d| {
        let mut events = read_events(d);
        events[1].event.actor = "spiffe://dev.mintgate.local/nobody".into();
        write_events(d, &events);
    });
    assert!(
        text.starts_with("evidence does not verify: audit-events.jsonl: SHA-256 "),
        "{text}"
    );
    assert!(text.contains("(the file was changed)"), "{text}");

    // Edited and the manifest re-hashed: the event's own hash gives it away.
    let text = tampered("edited-rehashed", &|d| {
        let mut events = read_events(d);
        events[1].event.actor = "spiffe://dev.mintgate.local/nobody".into();
        write_events(d, &events);
        rehash(d);
    });
    assert!(
        text.contains("audit-events.jsonl: audit chain broken at seq 2: hash does not match"),
        "{text}"
    );

    // Reordered (manifest re-hashed).
    let text = tampered("reordered", &|d| {
        let mut events = read_events(d);
        events.swap(1, 2);
        write_events(d, &events);
        rehash(d);
    });
    assert!(
        text.contains("audit chain broken at seq 3: expected seq 2"),
        "{text}"
    );

    // Truncated: the last event removed, the manifest re-hashed (its range too): the checkpoint
    // at the head catches it.
    let text = tampered("truncated", &|d| {
        let mut events = read_events(d);
        events.pop();
        write_events(d, &events);
        let mut manifest = rehash(d);
        manifest.exported.as_mut().unwrap().last -= 1;
        write_manifest(d, &manifest);
    });
    assert!(
        text.contains(&format!(
            "checkpoints.jsonl: audit checkpoint at seq {newest} does not hold: the chain ends at \
             seq {}",
            newest - 1
        )),
        "{text}"
    );

    // Re-chained: an event rewritten and every later hash recomputed, the manifest re-hashed:
    // the chain links up, the first checkpoint past the edit does not hold.
    let pinned = checkpoints
        .iter()
        .map(|c| c["seq"].as_i64().unwrap())
        .find(|&s| s >= 2)
        .unwrap();
    let text = tampered("rechained", &|d| {
        let mut events = read_events(d);
        events[1].event.actor = "spiffe://dev.mintgate.local/nobody".into();
        let mut prev = events[0].hash;
        for e in &mut events[1..] {
            *e = ChainedEvent::seal(e.event.clone(), prev);
            prev = e.hash;
        }
        write_events(d, &events);
        rehash(d);
    });
    assert!(
        text.contains(&format!(
            "checkpoints.jsonl: audit checkpoint at seq {pinned} does not hold: event {pinned} \
             has hash"
        )),
        "{text} (first checkpoint at {first_checkpoint})"
    );

    // The CRL altered (one byte of its signature), the manifest re-hashed.
    let text = tampered("crl", &|d| {
        let mut der = std::fs::read(d.join("crl.der")).unwrap();
        *der.last_mut().unwrap() ^= 1;
        std::fs::write(d.join("crl.der"), der).unwrap();
        rehash(d);
    });
    assert!(
        text.contains("crl.der: its signature does not verify under the CA certificate"),
        "{text}"
    );

    // A file added, and a policy text changed with the manifest re-hashed.
    let text = tampered("extra", &|d| {
        std::fs::write(d.join("notes.txt"), "x").unwrap()
    });
    assert!(
        text.contains("notes.txt: not listed in the manifest"),
        "{text}"
    );
    let text = tampered("policy", &|d| {
        let file = d.join("policy").join(&new).join("extra.cedar");
        let edited = std::fs::read_to_string(&file).unwrap() + "\n// edited\n";
        std::fs::write(&file, edited).unwrap();
        rehash(d);
    });
    assert!(
        text.contains(&format!("policy/{new}: its texts are version ")),
        "{text}"
    );
}

pub(crate) fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn read_events(dir: &Path) -> Vec<ChainedEvent> {
    std::fs::read_to_string(dir.join("audit-events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_events(dir: &Path, events: &[ChainedEvent]) {
    let text: String = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    std::fs::write(dir.join("audit-events.jsonl"), text).unwrap();
}

/// What a forger does after editing: every listed file's hash and size recomputed.
pub(crate) fn rehash(dir: &Path) -> Manifest {
    let mut manifest: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    for entry in &mut manifest.files {
        *entry = FileEntry::of(&entry.path, &std::fs::read(dir.join(&entry.path)).unwrap());
    }
    write_manifest(dir, &manifest);
    manifest
}

fn write_manifest(dir: &Path, manifest: &Manifest) {
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(manifest).unwrap(),
    )
    .unwrap();
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target: PathBuf = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `mintgate evidence verify DIR ARGS`: whether it passed, and what it said.
pub(crate) fn verify(dir: &Path, args: &[&str]) -> (bool, String) {
    let mut all = vec!["evidence", "verify", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    mintgate(&all)
}

fn mintgate(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(mintgate_tests::mintgate_bin())
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}
