//! The audit trail: every step recorded with who, what, scope and policy; the database refuses
//! edits; `mintgate audit verify` names the first broken link when someone gets around that, and
//! the records without their events when the chain was cut short.

use std::process::Command;
use std::time::Duration;

use mintgate_domain::audit::verify_chain;
use mintgate_domain::store::CertificateStore;
use mintgate_sdk::v1;
use mintgate_tests::csr::{check_issued, csr};
use mintgate_tests::{ADMIN_ID, Backend, NODE_ID, TestServer, both_backends};

use crate::issuance::{WORKLOAD, enroll_request};
use crate::revocation::revoke_request;

both_backends!(issuance_is_audited_and_the_database_refuses_edits, audited);
async fn audited(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let (csr_pem, _) = csr(WORKLOAD, &[]);
    let issued = server
        .node()
        .await
        .enroll(enroll_request("a-1", &csr_pem))
        .await
        .unwrap();
    check_issued(
        &issued.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        WORKLOAD,
        server.clock.now_odt().unix_timestamp(),
    );
    let (denied, _) = csr("spiffe://dev.mintgate.local/payments/api", &[]);
    let _ = server
        .node()
        .await
        .enroll(enroll_request("a-2", &denied))
        .await
        .unwrap_err();

    let chain = server.store().audit_chain().await.unwrap();
    assert_eq!(verify_chain(chain.clone()), Ok(chain.len() as u64));
    let approved = chain
        .iter()
        .find(|e| e.event.action == "request.approved")
        .unwrap();
    assert_eq!(approved.event.actor, NODE_ID);
    assert_eq!(approved.event.spiffe_id.as_deref(), Some(WORKLOAD));
    assert_eq!(approved.event.policy_rule.as_deref(), Some("dev-nodes"));
    assert_eq!(approved.event.request_id.as_deref(), Some("a-1"));
    let signed = chain
        .iter()
        .find(|e| e.event.action == "certificate.issued")
        .unwrap();
    assert_eq!(signed.event.subject, format!("serial:{}", issued.serial));
    assert!(signed.event.not_after.is_some() && signed.event.policy_version.is_some());
    let denial = chain
        .iter()
        .find(|e| e.event.action == "request.denied")
        .unwrap();
    assert!(
        denial
            .event
            .detail
            .as_deref()
            .unwrap()
            .contains("POLICY_DENIED")
    );

    // The database itself refuses UPDATE and DELETE.
    assert!(
        server
            .store()
            .execute_raw("UPDATE audit_events SET actor = 'x' WHERE seq = 1")
            .await
            .is_err()
    );
    assert!(
        server
            .store()
            .execute_raw("DELETE FROM audit_events WHERE seq = 1")
            .await
            .is_err()
    );
    server.shutdown().await;
}

both_backends!(audit_verify_names_the_first_broken_link, tampering);
async fn tampering(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    for i in 0..3 {
        let (csr_pem, _) = csr(WORKLOAD, &[]);
        let issued = server
            .node()
            .await
            .enroll(enroll_request(&format!("t-{i}"), &csr_pem))
            .await
            .unwrap();
        check_issued(
            &issued.certificate_chain_pem,
            &server.pki.ca.cert_pem,
            WORKLOAD,
            server.clock.now_odt().unix_timestamp(),
        );
    }
    let url = server.database_url.clone();
    let out = mintgate(&["audit", "verify", "--database-url", &url]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact"));

    let export = mintgate(&["audit", "export", "--database-url", &url]);
    let lines: Vec<mintgate_domain::audit::ChainedEvent> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        verify_chain(lines.clone()),
        Ok(lines.len() as u64),
        "the export re-verifies"
    );

    // Someone with database access drops the guards, then edits, deletes or reorders events;
    // each time `audit verify` fails and names the first broken link.
    let drop_guards: &[&str] = match backend {
        Backend::Sqlite => &[
            "DROP TRIGGER audit_events_no_update",
            "DROP TRIGGER audit_events_no_delete",
        ],
        Backend::Postgres => &["DROP TRIGGER audit_events_no_update ON audit_events"],
    };
    for sql in drop_guards {
        server.store().execute_raw(sql).await.unwrap();
    }
    let broken = |expect: &'static str| {
        let out = mintgate(&["audit", "verify", "--database-url", &url]);
        assert!(!out.status.success(), "{expect}: verify passed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains(expect), "{expect}: {text}");
    };
    let store = server.store();
    let sql = |s: String| async move { store.execute_raw(&s).await.unwrap() };

    let actor = &lines[1].event.actor;
    sql(
        "UPDATE audit_events SET actor = 'spiffe://dev.mintgate.local/nobody' WHERE seq = 2".into(),
    )
    .await;
    broken("broken at seq 2: hash does not match");
    sql(format!(
        "UPDATE audit_events SET actor = '{actor}' WHERE seq = 2"
    ))
    .await;
    assert!(
        mintgate(&["audit", "verify", "--database-url", &url])
            .status
            .success()
    );

    // Two events swap places.
    sql("UPDATE audit_events SET seq = -1 WHERE seq = 3".into()).await;
    sql("UPDATE audit_events SET seq = 3 WHERE seq = 4".into()).await;
    sql("UPDATE audit_events SET seq = 4 WHERE seq = -1".into()).await;
    broken("broken at seq 3");

    // An event disappears.
    sql("DELETE FROM audit_events WHERE seq = 3".into()).await;
    broken("broken at seq 4: expected seq 3");
    server.shutdown().await;
}

both_backends!(audit_verify_reports_a_chain_cut_short, truncation);
async fn truncation(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let node = server.node().await;
    let admin = server.admin().await;
    let enroll = |request_id: &'static str| {
        let node = node.clone();
        let (csr_pem, _) = csr(WORKLOAD, &[]);
        let (ca, now) = (
            server.pki.ca.cert_pem.clone(),
            server.clock.now_odt().unix_timestamp(),
        );
        async move {
            let issued = node
                .enroll(enroll_request(request_id, &csr_pem))
                .await
                .unwrap();
            check_issued(&issued.certificate_chain_pem, &ca, WORKLOAD, now);
            issued.serial
        }
    };
    let revoke = |request_id: &'static str, serial: String| {
        let admin = admin.clone();
        async move {
            let reason = v1::RevocationReason::KeyCompromise;
            admin
                .revoke(revoke_request(request_id, &serial, reason))
                .await
                .unwrap()
        }
    };
    let first = enroll("k-1").await;
    let second = enroll("k-2").await;
    revoke("v-1", first).await;
    let kept = server.store().audit_chain().await.unwrap().len();

    // Later: one more certificate, and a second revocation.
    server.clock.advance(Duration::from_secs(60));
    let late = enroll("k-3").await;
    revoke("v-2", second.clone()).await;
    let url = server.database_url.clone();
    let (ok, text) = verify(&url);
    assert!(ok, "{text}");
    assert!(
        text.contains("intact") && text.contains("covering every certificate"),
        "{text}"
    );

    // Someone with database access cuts the chain after the first revocation. What is left
    // still links up, so only the records without their events give it away.
    let drop_guard = match backend {
        Backend::Sqlite => "DROP TRIGGER audit_events_no_delete",
        Backend::Postgres => "DROP TRIGGER audit_events_no_update ON audit_events",
    };
    server.store().execute_raw(drop_guard).await.unwrap();
    let cut = format!("DELETE FROM audit_events WHERE seq > {kept}");
    server.store().execute_raw(&cut).await.unwrap();
    let left = server.store().audit_chain().await.unwrap();
    assert_eq!(verify_chain(&left), Ok(kept as u64));

    let (ok, text) = verify(&url);
    assert!(!ok, "verify passed a cut chain: {text}");
    assert!(!text.contains("broken"), "{text}");
    for expected in [
        "audit chain incomplete: 5 records have no audit event".to_owned(),
        format!("the chain may have been truncated after seq {kept}"),
        format!("certificate {late} (ACTIVE, issued "),
        format!("certificate {second} (REVOKED "),
        format!("revocation 2 of certificate {second} (revoked "),
        format!("request k-3 of {NODE_ID} (ENROLL ISSUED, "),
        format!("request v-2 of {ADMIN_ID} (REVOKE ISSUED, "),
    ] {
        assert!(text.contains(&expected), "{expected}: {text}");
    }
    assert!(text.contains("has no certificate.issued event"), "{text}");
    assert!(text.contains("has no certificate.revoked event"), "{text}");
    server.shutdown().await;
}

/// `mintgate audit verify` on `url`: whether it passed, and what it said.
fn verify(url: &str) -> (bool, String) {
    let out = mintgate(&["audit", "verify", "--database-url", url]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success(), text)
}

fn mintgate(args: &[&str]) -> std::process::Output {
    Command::new(mintgate_tests::mintgate_bin())
        .args(args)
        .output()
        .unwrap()
}
