//! The audit trail: every step recorded with who, what, scope and policy; the database refuses
//! edits; `mintgate audit verify` names the first broken link when someone gets around that.

use std::process::Command;

use mintgate_domain::audit::verify_chain;
use mintgate_domain::store::CertificateStore;
use mintgate_tests::csr::{check_issued, csr};
use mintgate_tests::{Backend, NODE_ID, TestServer, both_backends};

use crate::issuance::{WORKLOAD, enroll_request};

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

fn mintgate(args: &[&str]) -> std::process::Output {
    Command::new(mintgate_tests::mintgate_bin())
        .args(args)
        .output()
        .unwrap()
}
