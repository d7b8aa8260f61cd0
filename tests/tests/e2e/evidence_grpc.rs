//! `Admin/ExportEvidence`: the auditor (`bob` in the dev policy) streams a period's evidence,
//! writes the files and `mintgate evidence verify` accepts them, CRL included; an operator
//! without the auditor role is refused POLICY_DENIED.

use std::path::Path;

use mintgate_sdk::v1;
use mintgate_sdk::v1::export_evidence_chunk::Part;
use mintgate_tests::csr::csr;
use mintgate_tests::{Backend, Options, TestServer, both_backends};

use crate::evidence::{read_lines, verify};
use crate::governance::reason;
use crate::issuance::{WORKLOAD, enroll_request};
use crate::revocation::revoke_request;

both_backends!(
    the_auditor_streams_evidence_that_verifies_and_no_one_else_may,
    export_over_grpc
);
async fn export_over_grpc(backend: Backend) {
    let server = TestServer::spawn_with(Options {
        checkpoint_every_events: 1,
        ..Options::new(backend)
    })
    .await;
    let since = server.clock.now_odt() - time::Duration::hours(1);
    let (csr_pem, _) = csr(WORKLOAD, &[]);
    let issued = server
        .node()
        .await
        .enroll(enroll_request("g-1", &csr_pem))
        .await
        .unwrap();
    server
        .admin_revocation()
        .await
        .revoke(revoke_request(
            "gr-1",
            &issued.serial,
            v1::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap();
    let until = server.clock.now_odt() + time::Duration::hours(1);
    let request = || v1::ExportEvidenceRequest {
        since: Some(timestamp(since)),
        until: Some(timestamp(until)),
    };

    let mut stream = server
        .admin_as("bob")
        .await
        .export_evidence(request())
        .await
        .unwrap()
        .into_inner();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("evidence");
    let (mut files, mut manifest) = (Vec::<String>::new(), None);
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(manifest.is_none(), "nothing comes after the manifest");
        match chunk.part.unwrap() {
            Part::File(f) => {
                if files.last() != Some(&f.path) {
                    assert!(!files.contains(&f.path), "{} came twice", f.path);
                    files.push(f.path.clone());
                }
                append(&dir.join(&f.path), &f.data);
            }
            Part::Manifest(text) => manifest = Some(text),
        }
    }
    std::fs::write(dir.join("manifest.json"), manifest.expect("a manifest")).unwrap();
    for file in [
        "audit-events.jsonl",
        "checkpoints.jsonl",
        "ca.pem",
        "crl.der",
    ] {
        assert!(files.iter().any(|f| f == file), "{file} in {files:?}");
    }
    let actions: Vec<String> = read_lines(&dir.join("audit-events.jsonl"))
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        actions.iter().any(|a| a == "certificate.revoked"),
        "{actions:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        server.pki.ca.cert_pem
    );

    // Offline, with no database and no server.
    let (ok, text) = verify(&dir, &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains("a CRL of 1 revoked certificates signed by "),
        "{text}"
    );

    // alice (policy-author, issuer, revoker) is no auditor.
    let err = server
        .admin_as("alice")
        .await
        .export_evidence(request())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert_eq!(reason(&err), "POLICY_DENIED");
}

fn timestamp(t: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    }
}

fn append(path: &Path, data: &[u8]) {
    use std::io::Write as _;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(data)
        .unwrap();
}
