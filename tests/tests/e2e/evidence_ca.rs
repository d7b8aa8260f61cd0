//! The CA lifecycle in the evidence (DESIGN §14, §17): `authorities.json` lists every CA with
//! each state it entered, the proposal and approver, and where that approval is in the audit
//! chain; `evidence verify` checks the certificates' key ids and the approvals offline, and
//! names a CA whose record was edited.

use std::time::Duration;

use mintgate_sdk::v1;
use mintgate_server::evidence::{AuthorityLine, ExportRequest, Trust, export_to_dir, verify};
use mintgate_tests::{Backend, Options, TestServer, both_backends};

use crate::evidence::{copy_dir, rehash};
use crate::governance::approve;
use crate::rotation::{key_id_of, prepare, propose, revoke_issuer, step, successor};

both_backends!(
    the_evidence_holds_each_ca_state_change_and_its_approval,
    ca_history
);
async fn ca_history(backend: Backend) {
    let server = TestServer::spawn_with(Options {
        ca_publish: Duration::ZERO,
        ..Options::new(backend)
    })
    .await;
    let since = server.clock.now_odt() - time::Duration::hours(1);
    let keys = tempfile::tempdir().unwrap();
    let (next, key) = successor(&server, keys.path());
    let (old_id, next_id) = (
        key_id_of(&server.pki.ca.cert_pem),
        key_id_of(&next.cert_pem),
    );
    // A minute after the first CA's start, as any rotation comes.
    server.clock.advance(Duration::from_secs(60));
    prepare(&server, &next, &key).await;
    let mut bob = server.admin_as("bob").await;
    let activate = propose(
        &server,
        "alice",
        step("activate", v1::CaAction::Activate, &next_id),
    )
    .await;
    approve(&mut bob, &activate.id).await.unwrap();
    let revoke = revoke_issuer(&server, &old_id).await;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("evidence");
    let request = ExportRequest {
        since,
        until: server.clock.now_odt() + time::Duration::hours(1),
        ca_cert: None,
        crl: None,
        now: server.clock.now_odt(),
    };
    export_to_dir(server.store(), &request, &dir).await.unwrap();
    let read = |dir: &std::path::Path| -> Vec<AuthorityLine> {
        serde_json::from_slice(&std::fs::read(dir.join("authorities.json")).unwrap()).unwrap()
    };
    let authorities = read(&dir);
    let history = |key_id: &str| -> Vec<(String, Option<String>, Option<String>, bool)> {
        authorities
            .iter()
            .find(|a| a.key_id == key_id)
            .unwrap()
            .history
            .iter()
            .map(|t| {
                let by = t
                    .approved_by
                    .as_ref()
                    .map(|b| b.rsplit('/').next().unwrap().to_owned());
                (
                    t.state.clone(),
                    t.proposal.clone(),
                    by,
                    t.approval_seq.is_some(),
                )
            })
            .collect()
    };
    let bob_id = Some("bob".to_owned());
    let prepared = authorities
        .iter()
        .find(|a| a.key_id == next_id)
        .unwrap()
        .history[0]
        .proposal
        .clone();
    assert_eq!(
        history(&next_id),
        [
            ("PREPARED".to_owned(), prepared, bob_id.clone(), true),
            (
                "ACTIVE".to_owned(),
                Some(activate.id.clone()),
                bob_id.clone(),
                true
            ),
        ]
    );
    assert_eq!(
        history(&old_id),
        [
            ("PREPARED".to_owned(), None, None, false),
            ("ACTIVE".to_owned(), None, None, false),
            (
                "RETIRING".to_owned(),
                Some(activate.id.clone()),
                bob_id.clone(),
                true
            ),
            ("REVOKED".to_owned(), Some(revoke.id.clone()), bob_id, true),
        ]
    );
    let verified = verify(&dir, Trust::Exported).unwrap();
    assert_eq!(verified.authorities, 2);
    let controls = std::fs::read_to_string(dir.join("controls.md")).unwrap();
    assert!(controls.contains("2 CAs"), "{controls}");

    // A record pointed at another event, or at another CA's certificate, is named, even with
    // the manifest recomputed.
    let tampered = |edit: &dyn Fn(&mut Vec<AuthorityLine>)| {
        let copy = tmp.path().join(format!("t-{}", rand_suffix()));
        copy_dir(&dir, &copy);
        let mut lines = read(&copy);
        edit(&mut lines);
        std::fs::write(
            copy.join("authorities.json"),
            serde_json::to_vec_pretty(&lines).unwrap(),
        )
        .unwrap();
        rehash(&copy);
        verify(&copy, Trust::Exported).unwrap_err().to_string()
    };
    let moved = tampered(&|lines| {
        let step = &mut listed(lines, &old_id).history[3];
        *step.approval_seq.as_mut().unwrap() -= 1;
    });
    assert!(
        moved.contains(&format!("authorities.json: CA {old_id}: REVOKED")),
        "{moved}"
    );
    let swapped = tampered(&|lines| {
        let chain = lines[0].chain_pem.clone();
        lines[0].chain_pem = lines[1].chain_pem.clone();
        lines[1].chain_pem = chain;
    });
    assert!(swapped.contains("its certificate's key id is"), "{swapped}");
    // A state change that names no proposal is one no operator approved: named too.
    let unproposed = tampered(&|lines| {
        let step = &mut listed(lines, &old_id).history[3];
        (step.proposal, step.approved_by, step.approval_seq) = (None, None, None);
    });
    assert!(
        unproposed.contains(&format!("CA {old_id}: REVOKED at ")),
        "{unproposed}"
    );
    assert!(unproposed.contains("names no proposal"), "{unproposed}");
    // Nor does a CA pass for adopted (PREPARED and ACTIVE at once, by no proposal) without the
    // `ca.adopted` event that says so.
    let unadopted = tampered(&|lines| {
        let next = listed(lines, &next_id);
        let prepared_at = next.history[0].at.clone();
        for step in &mut next.history {
            (step.proposal, step.approved_by, step.approval_seq) = (None, None, None);
        }
        next.history[1].at = prepared_at;
    });
    assert!(
        unadopted.contains(&format!("CA {next_id}: it is PREPARED and ACTIVE at once")),
        "{unadopted}"
    );
    server.shutdown().await;
}

/// The CA `key_id` in `authorities.json`'s lines.
fn listed<'a>(lines: &'a mut [AuthorityLine], key_id: &str) -> &'a mut AuthorityLine {
    lines.iter_mut().find(|a| a.key_id == key_id).unwrap()
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}
