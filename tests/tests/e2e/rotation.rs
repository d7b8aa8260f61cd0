//! The CA lifecycle end to end (DESIGN §14), on SQLite and PostgreSQL: a staged rotation with
//! clients connected (prepare, publish, activate, retire; each step two people) in which no
//! handshake fails, and the compromise drill (RevokeIssuer) that cuts off everything the CA
//! signed, including for a subscriber that was offline during it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mintgate_ca::{CertAndKey, FileKey, dev_successor_ca};
use mintgate_domain::store::CertificateStore as _;
use mintgate_sdk::{
    Client, Connect, RevocationWatcher, TrustBundleConfig, TrustBundleWatcher, WatcherConfig, v1,
};
use mintgate_tests::csr::{check_issued, csr};
use mintgate_tests::{Backend, Options, TestServer, both_backends};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tonic::Code;

use crate::governance::{approve, reason};
use crate::issuance::enroll_request;
use crate::revocation::{Workload, enroll};

const WEB: &str = "spiffe://dev.mintgate.local/workload/web";
const API: &str = "spiffe://dev.mintgate.local/workload/api";
/// Shorter than a certificate's lifetime (an hour by default): old certificates are still
/// valid when the new CA becomes active.
const PUBLISH: Duration = Duration::from_secs(600);

/// alice and bob are CA custodians (each proposes, the other approves).
pub(crate) fn custodians(backend: Backend) -> Options {
    let id = |name: &str| format!("spiffe://dev.mintgate.local/operator/{name}");
    let roles = |r: &[&str]| r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    Options {
        operators: Some(HashMap::from([
            (id("admin"), roles(&["admin"])),
            (id("alice"), roles(&["ca-custodian", "revoker"])),
            (id("bob"), roles(&["ca-custodian", "auditor"])),
        ])),
        ca_publish: PUBLISH,
        ..Options::new(backend)
    }
}

/// A successor issuing CA under the dev root, its key in a file only its owner may read.
pub(crate) fn successor(server: &TestServer, dir: &Path) -> (CertAndKey, String) {
    let key = FileKey::generate_p256().unwrap();
    let ca = CertAndKey {
        cert_pem: dev_successor_ca(&server.pki.root, "Mintgate Dev Issuing CA 2", &key).unwrap(),
        key_pem: key.to_pkcs8_pem(),
    };
    let path = dir.join("ca-2.key");
    std::fs::write(&path, &ca.key_pem).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (ca, path.display().to_string())
}

pub(crate) fn key_id_of(cert_pem: &str) -> String {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                Some(hex::encode(id.0))
            }
            _ => None,
        })
        .unwrap()
}

pub(crate) async fn propose(
    server: &TestServer,
    who: &str,
    request: v1::ProposeCaRequest,
) -> v1::Proposal {
    server
        .admin_as(who)
        .await
        .propose_ca(request)
        .await
        .unwrap()
        .into_inner()
        .proposal
        .unwrap()
}

pub(crate) fn step(id: &str, action: v1::CaAction, key_id: &str) -> v1::ProposeCaRequest {
    v1::ProposeCaRequest {
        request_id: id.into(),
        action: action.into(),
        key_id: key_id.into(),
        ..Default::default()
    }
}

/// Prepares `ca` (alice proposes, bob approves).
pub(crate) async fn prepare(server: &TestServer, ca: &CertAndKey, key: &str) {
    let proposal = propose(
        server,
        "alice",
        v1::ProposeCaRequest {
            request_id: "prepare-1".into(),
            action: v1::CaAction::Prepare.into(),
            chain_pem: ca.cert_pem.clone(),
            key: key.into(),
            key_id: String::new(),
        },
    )
    .await;
    assert_eq!(proposal.kind(), v1::ProposalKind::Ca);
    assert_eq!(proposal.subject, key_id_of(&ca.cert_pem));
    approve(&mut server.admin_as("bob").await, &proposal.id)
        .await
        .unwrap();
}

/// Revokes the CA `key_id` for compromise (alice proposes, bob approves); the proposal.
pub(crate) async fn revoke_issuer(server: &TestServer, key_id: &str) -> v1::Proposal {
    let proposal = server
        .revocation_as(&server.pki.alice.cert_pem, &server.pki.alice.key_pem)
        .await
        .revoke_issuer(v1::RevokeIssuerRequest {
            request_id: "drill".into(),
            key_id: key_id.to_owned(),
            reason: v1::RevocationReason::CaCompromise.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .proposal
        .unwrap();
    approve(&mut server.admin_as("bob").await, &proposal.id)
        .await
        .unwrap();
    proposal
}

async fn next_bundle(stream: &mut tonic::Streaming<v1::TrustBundle>) -> v1::TrustBundle {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a bundle within 10 s")
        .unwrap()
        .expect("the stream is open")
}

/// Each CA's key id and state, in the order of the states' life (CAs prepared in the same
/// second have no newest).
pub(crate) fn states(bundle: &v1::TrustBundle) -> Vec<(String, v1::CaState)> {
    let mut states: Vec<_> = bundle
        .authorities
        .iter()
        .map(|a| (a.key_id.clone(), a.state()))
        .collect();
    states.sort_by_key(|(_, state)| *state as i32);
    states
}

/// Enrolls `id` and checks the certificate chains, through `ca` (the CA then the root), with
/// webpki and has Mintgate's profile (x509-parser).
async fn enroll_under(server: &TestServer, ca_pem: &str, id: &str, request_id: &str) -> Workload {
    let now = server.clock.now_odt().unix_timestamp();
    let (csr_pem, key) = csr(id, &[]);
    let issued = server
        .node()
        .await
        .enroll(enroll_request(request_id, &csr_pem))
        .await
        .unwrap();
    check_issued(&issued.certificate_chain_pem, ca_pem, id, now);
    Workload {
        chain_pem: issued.certificate_chain_pem,
        key_pem: key.serialize_pem(),
        serial: issued.serial,
    }
}

both_backends!(
    a_staged_rotation_with_clients_connected_fails_no_handshake,
    staged_rotation
);
async fn staged_rotation(backend: Backend) {
    let server = TestServer::spawn_with(custodians(backend)).await;
    let dir = tempfile::tempdir().unwrap();
    let old_id = key_id_of(&server.pki.ca.cert_pem);
    let web = enroll(&server, WEB, "web-1").await;
    let web_client = server
        .client_with(&web.chain_pem, &web.key_pem)
        .await
        .unwrap();
    let mut bundles = server.node().await.watch_trust_bundle().await.unwrap();
    let first = next_bundle(&mut bundles).await;
    assert_eq!(states(&first), [(old_id.clone(), v1::CaState::Active)]);
    // The agent's and the SDK's copy of the bundle, replaced atomically on each change.
    let bundle_file = dir.path().join("bundle.pem");
    let (url, material) = (
        server.url(),
        server.material(&server.pki.node.cert_pem, &server.pki.node.key_pem),
    );
    let follower = TrustBundleWatcher::spawn(
        Arc::new(move || {
            let (url, material) = (url.clone(), material.clone());
            Box::pin(async move { Client::connect(&url, "localhost", &material).await })
        }),
        TrustBundleConfig {
            path: Some(bundle_file.clone()),
            ..TrustBundleConfig::default()
        },
    );

    // Prepared: in the bundle at once, signing nothing yet.
    let (next, key) = successor(&server, dir.path());
    let new_id = key_id_of(&next.cert_pem);
    prepare(&server, &next, &key).await;
    let prepared = next_bundle(&mut bundles).await;
    assert_eq!(
        states(&prepared),
        [
            (new_id.clone(), v1::CaState::Prepared),
            (old_id.clone(), v1::CaState::Active)
        ]
    );
    let new_ca_pem = CertificateDer::pem_slice_iter(next.cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let in_bundle = |pem: &str| {
        CertificateDer::pem_slice_iter(pem.as_bytes()).any(|c| c.unwrap() == new_ca_pem)
    };
    assert!(in_bundle(&prepared.bundle_pem));
    let (code, served) = server.http_get("/bundle.pem").await;
    assert_eq!(code, 200);
    assert_eq!(String::from_utf8(served).unwrap(), prepared.bundle_pem);
    let mut latest = follower.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        latest.wait_for(|b| b.as_ref().is_some_and(|b| b.version == prepared.version)),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(in_bundle(&std::fs::read_to_string(&bundle_file).unwrap()));
    let still_old = enroll(&server, API, "api-1").await;
    assert_ne!(still_old.serial, web.serial);

    // Activation waits until the bundle has been out for [ca] publish_seconds.
    let activate = propose(
        &server,
        "alice",
        step("activate-1", v1::CaAction::Activate, &new_id),
    )
    .await;
    let mut bob = server.admin_as("bob").await;
    let early = approve(&mut bob, &activate.id).await.unwrap_err();
    assert_eq!(
        (early.code(), reason(&early).as_str()),
        (Code::FailedPrecondition, "CA_NOT_PUBLISHED")
    );
    let own = approve(&mut server.admin_as("alice").await, &activate.id)
        .await
        .unwrap_err();
    assert_eq!(reason(&own), "SELF_APPROVAL");
    server.clock.advance(PUBLISH);
    approve(&mut bob, &activate.id).await.unwrap();
    let active = next_bundle(&mut bundles).await;
    assert_eq!(
        states(&active),
        [
            (new_id.clone(), v1::CaState::Active),
            (old_id.clone(), v1::CaState::Retiring)
        ]
    );

    // New certificates come from the new CA; the old ones keep working, on the connections
    // they had and on new ones.
    let api = enroll_under(&server, &next.cert_pem, API, "api-2").await;
    let api_client = server
        .client_with(&api.chain_pem, &api.key_pem)
        .await
        .unwrap();
    for client in [&web_client, &api_client] {
        client.check_status(vec![web.serial.clone()]).await.unwrap();
    }
    let web_again = server
        .client_with(&web.chain_pem, &web.key_pem)
        .await
        .unwrap();
    web_again
        .check_status(vec![api.serial.clone()])
        .await
        .unwrap();
    let renewed = web_client
        .renew(v1::RenewRequest {
            request_id: "web-renew".into(),
            csr: csr(WEB, &[]).0.into_bytes(),
            ttl: None,
        })
        .await
        .unwrap();
    check_issued(
        &renewed.certificate_chain_pem,
        &next.cert_pem,
        WEB,
        server.clock.now_odt().unix_timestamp(),
    );

    // Retiring waits until the last certificate the old CA signed has expired.
    let retire = propose(
        &server,
        "bob",
        step("retire-1", v1::CaAction::Retire, &old_id),
    )
    .await;
    let mut alice = server.admin_as("alice").await;
    let early = approve(&mut alice, &retire.id).await.unwrap_err();
    assert_eq!(reason(&early), "CA_STILL_ISSUED");
    let last = [&web, &still_old]
        .iter()
        .map(|w| not_after(&w.chain_pem))
        .max()
        .unwrap();
    let now = server.clock.now_odt().unix_timestamp();
    server
        .clock
        .advance(Duration::from_secs((last - now + 1).try_into().unwrap()));
    approve(&mut alice, &retire.id).await.unwrap();
    let retired = next_bundle(&mut bundles).await;
    assert_eq!(
        states(&retired),
        [
            (new_id.clone(), v1::CaState::Active),
            (old_id.clone(), v1::CaState::Retired)
        ]
    );
    let old_ca = CertificateDer::pem_slice_iter(server.pki.ca.cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert!(
        !CertificateDer::pem_slice_iter(retired.bundle_pem.as_bytes())
            .any(|c| c.unwrap() == old_ca),
        "a retired CA leaves the bundle"
    );
    let listed = server
        .admin_as("bob")
        .await
        .list_authorities(v1::ListAuthoritiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.version, retired.version);
    // The new CA's CRL is at the address its certificates name.
    let (code, _) = server.http_get(&format!("/crl/{new_id}")).await;
    assert_eq!(code, 200);
}

fn not_after(chain_pem: &str) -> i64 {
    let der = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.validity().not_after.timestamp()
}

both_backends!(
    the_compromise_drill_revokes_everything_the_ca_signed,
    compromise_drill
);
async fn compromise_drill(backend: Backend) {
    let server = TestServer::spawn_with(custodians(backend)).await;
    let dir = tempfile::tempdir().unwrap();
    let old_id = key_id_of(&server.pki.ca.cert_pem);
    let web = enroll(&server, WEB, "web-1").await;
    let api = enroll(&server, API, "api-1").await;
    let alice = || server.revocation_as(&server.pki.alice.cert_pem, &server.pki.alice.key_pem);
    let revoke_issuer = |id: &str| v1::RevokeIssuerRequest {
        request_id: id.into(),
        key_id: old_id.clone(),
        reason: v1::RevocationReason::CaCompromise.into(),
    };

    // The active CA cannot go without a successor ready.
    let refused = alice()
        .await
        .revoke_issuer(revoke_issuer("drill-0"))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::FailedPrecondition, "CA_NO_SUCCESSOR")
    );
    let (next, key) = successor(&server, dir.path());
    let new_id = key_id_of(&next.cert_pem);
    prepare(&server, &next, &key).await;

    // A subscriber (here with the node's identity) follows the feed, then goes offline before
    // the drill.
    let state_file = dir.path().join("revocations.json");
    let (url, material) = (
        server.url(),
        server.material(&server.pki.node.cert_pem, &server.pki.node.key_pem),
    );
    let connect: Connect = Arc::new(move || {
        let (url, material) = (url.clone(), material.clone());
        Box::pin(async move { Client::connect(&url, "localhost", &material).await })
    });
    let config = WatcherConfig {
        state_file: Some(state_file.clone()),
        ..WatcherConfig::default()
    };
    let offline = RevocationWatcher::spawn(connect.clone(), config.clone()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), offline.set().contacted())
        .await
        .unwrap();
    let cursor = offline.set().cursor();
    drop(offline);

    let web_client = server
        .client_with(&web.chain_pem, &web.key_pem)
        .await
        .unwrap();
    web_client
        .check_status(vec![web.serial.clone()])
        .await
        .unwrap();
    let proposal = alice()
        .await
        .revoke_issuer(revoke_issuer("drill-1"))
        .await
        .unwrap()
        .into_inner()
        .proposal
        .unwrap();
    assert_eq!(proposal.kind(), v1::ProposalKind::RevokeIssuer);
    // Nothing is revoked until a second custodian approves.
    web_client
        .check_status(vec![web.serial.clone()])
        .await
        .unwrap();
    approve(&mut server.admin_as("bob").await, &proposal.id)
        .await
        .unwrap();

    // One log entry, applied to every serial of the issuer: the open connection is cut, a new
    // handshake is refused, and the registry answers REVOKED with the CA's entry.
    let head = server.store().revocation_bounds().await.unwrap().head;
    assert_eq!(head, cursor + 1, "one entry for the whole CA");
    let cut = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if web_client
                .check_status(vec![web.serial.clone()])
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(cut.is_ok(), "the revoked CA's certificate is cut off");
    assert!(
        server
            .client_with(&web.chain_pem, &web.key_pem)
            .await
            .is_err()
    );
    let statuses = server
        .admin()
        .await
        .check_status(vec![web.serial.clone(), api.serial.clone()])
        .await
        .unwrap()
        .statuses;
    for status in &statuses {
        assert_eq!(status.status(), v1::CertificateStatus::Revoked);
        let entry = status.revocation.as_ref().unwrap();
        assert!(entry.issuer);
        assert_eq!(entry.issuer_key_id, old_id);
    }

    // The successor is active, and the compromised CA is out of the bundle.
    let bundle = server
        .admin_as("bob")
        .await
        .list_authorities(v1::ListAuthoritiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        states(&bundle),
        [
            (new_id.clone(), v1::CaState::Active),
            (old_id.clone(), v1::CaState::Revoked)
        ]
    );
    assert_eq!(
        CertificateDer::pem_slice_iter(bundle.bundle_pem.as_bytes()).count(),
        2,
        "the successor and the root"
    );

    // The offline subscriber resumes from its cursor and learns it in one event.
    let back = RevocationWatcher::spawn(connect, config).unwrap();
    tokio::time::timeout(Duration::from_secs(10), back.set().applied_through(head))
        .await
        .unwrap();
    let leaf = |w: &Workload| {
        CertificateDer::pem_slice_iter(w.chain_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
    };
    assert!(back.set().is_issuer_revoked(&old_id));
    assert!(back.set().is_revoked_certificate(&leaf(&web)));
    assert!(back.set().is_revoked_certificate(&leaf(&api)));

    // Workloads enroll again, under the new CA, and connect again.
    let web = enroll_under(&server, &next.cert_pem, WEB, "web-2").await;
    assert!(!back.set().is_revoked_certificate(&leaf(&web)));
    let client = server
        .client_with(&web.chain_pem, &web.key_pem)
        .await
        .unwrap();
    client.check_status(vec![web.serial.clone()]).await.unwrap();
    // A leaf minted with the compromised key that names no issuer key, presented with the
    // compromised CA, is refused at the handshake too.
    let old_ca = server
        .pki
        .ca
        .cert_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        old_ca,
        rcgen::KeyPair::from_pem(&server.pki.ca.key_pem).unwrap(),
    )
    .unwrap();
    let forged_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(WEB.try_into().unwrap())];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = false;
    let forged = params.signed_by(&forged_key, &issuer).unwrap();
    let forged_chain = format!("{}{old_ca}", forged.pem());
    assert!(
        server
            .client_with(&forged_chain, &forged_key.serialize_pem())
            .await
            .is_err()
    );

    // The compromised CA signs no CRL any more; the successor does.
    let (code, _) = server.http_get(&format!("/crl/{old_id}")).await;
    assert_eq!(code, 404);
    let (code, _) = server.http_get("/crl").await;
    assert_eq!(code, 200);
}
