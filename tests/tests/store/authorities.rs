//! The CA registry in the store (DESIGN §14): the first CA is recorded once and claims what was
//! issued before the registry existed; each rotation step moves a CA only from the state it
//! expects, in the approving transaction; revoking an issuer writes one log entry, revokes
//! every live certificate it signed, and hands over to the prepared successor.

use mintgate_domain::authority::{AuthorityStore, CaAction, CaRecord, CaState, PreparedCa};
use mintgate_domain::governance::{Change, GovernanceStore, NewProposal, ProposalInserted};
use mintgate_domain::lifecycle::CertState;
use mintgate_domain::model::RevocationReason;
use mintgate_domain::store::{CertificateStore, StoreError};
use mintgate_tests::{Backend, both_backends};

use crate::{Harness, ISSUER, NODE, OPERATOR, at, event, serial};

const ALICE: &str = "spiffe://dev.mintgate.local/operator/alice";
const NEXT: &str = "a2a2";

fn first() -> CaRecord {
    CaRecord {
        key_id: ISSUER.to_owned(),
        state: CaState::Active,
        subject: "CN=First".to_owned(),
        chain_pem: "first chain".to_owned(),
        key_ref: "/etc/mintgate/ca.key".to_owned(),
        serial: "0f01".to_owned(),
        not_after: at(100_000),
        prepared_at: at(0),
        activated_at: Some(at(0)),
        retiring_at: None,
        retired_at: None,
        revoked_at: None,
        proposal_id: None,
    }
}

/// Proposes `change` as alice and applies it as the operator; the store's answer.
async fn apply(h: &Harness, id: &str, change: Change, now: i64) -> Result<(), StoreError> {
    let proposal = NewProposal {
        id: id.to_owned(),
        author: ALICE.to_owned(),
        request_id: id.to_owned(),
        payload_hash: format!("hash-{id}"),
        change,
        created_at: at(now),
        expires_at: at(now + 1000),
    };
    let inserted = h
        .store
        .insert_proposal(proposal, None, vec![event("proposal.created", id)])
        .await
        .unwrap();
    assert!(matches!(inserted, ProposalInserted::New(_)));
    h.store
        .apply_proposal(id, OPERATOR, at(now), vec![event("proposal.approved", id)])
        .await
        .map(|_| ())
}

fn step(action: CaAction, key_id: &str) -> Change {
    let prepared = (action == CaAction::Prepare).then(|| PreparedCa {
        subject: "CN=Next".to_owned(),
        chain_pem: "next chain".to_owned(),
        key_ref: "next-label".to_owned(),
        serial: "0f02".to_owned(),
        not_after: at(200_000).unix_timestamp(),
    });
    Change::Ca {
        action,
        key_id: key_id.to_owned(),
        prepared,
    }
}

/// Each CA's key id and state, by key id.
async fn states(h: &Harness) -> Vec<(String, CaState)> {
    let mut all: Vec<_> = h
        .store
        .authorities()
        .await
        .unwrap()
        .into_iter()
        .map(|ca| (ca.key_id, ca.state))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

both_backends!(
    the_first_ca_is_recorded_once_and_claims_earlier_certificates,
    first_ca
);
async fn first_ca(backend: Backend) {
    let h = Harness::open(backend).await;
    let pk = h.approved(NODE, "r-1", &serial(1)).await;
    h.issue(pk, &serial(1), None, &["certificate.issued"])
        .await
        .unwrap();
    // As a certificate stored before the registry existed looks.
    h.execute("UPDATE certificates SET issuer_key_id = NULL")
        .await
        .unwrap();
    assert!(h.store.register_first_authority(first()).await.unwrap());
    let again = CaRecord {
        key_id: "other".to_owned(),
        ..first()
    };
    assert!(!h.store.register_first_authority(again).await.unwrap());
    assert_eq!(states(&h).await, [(ISSUER.to_owned(), CaState::Active)]);
    let stored = h.store.certificate(&serial(1)).await.unwrap().unwrap();
    assert_eq!(stored.issuer_key_id.as_deref(), Some(ISSUER));
    assert!(h.store.issued_unexpired(ISSUER, at(10)).await.unwrap());
    assert!(
        !h.store
            .issued_unexpired(ISSUER, at(1_000_000))
            .await
            .unwrap()
    );
    h.finish().await;
}

both_backends!(
    each_rotation_step_moves_a_ca_only_from_the_state_it_expects,
    rotation_steps
);
async fn rotation_steps(backend: Backend) {
    let h = Harness::open(backend).await;
    h.store.register_first_authority(first()).await.unwrap();
    apply(&h, "p-prepare", step(CaAction::Prepare, NEXT), 10)
        .await
        .unwrap();
    // The same CA twice, or activating what is not prepared, changes nothing.
    let twice = apply(&h, "p-prepare-2", step(CaAction::Prepare, NEXT), 11).await;
    assert!(matches!(twice, Err(StoreError::Conflict(_))), "{twice:?}");
    let not_prepared = apply(&h, "p-activate-first", step(CaAction::Activate, ISSUER), 12).await;
    assert!(matches!(not_prepared, Err(StoreError::Conflict(_))));
    assert_eq!(
        states(&h).await,
        [
            (ISSUER.to_owned(), CaState::Active),
            (NEXT.to_owned(), CaState::Prepared)
        ]
    );
    apply(&h, "p-activate", step(CaAction::Activate, NEXT), 20)
        .await
        .unwrap();
    let retire_active = apply(&h, "p-retire-next", step(CaAction::Retire, NEXT), 21).await;
    assert!(matches!(retire_active, Err(StoreError::Conflict(_))));
    apply(&h, "p-retire", step(CaAction::Retire, ISSUER), 30)
        .await
        .unwrap();
    let all = h.store.authorities().await.unwrap();
    let next = all.iter().find(|ca| ca.key_id == NEXT).unwrap();
    assert_eq!(
        (next.state, next.activated_at, next.proposal_id.as_deref()),
        (CaState::Active, Some(at(20)), Some("p-prepare"))
    );
    let old = all.iter().find(|ca| ca.key_id == ISSUER).unwrap();
    assert_eq!(
        (old.state, old.retiring_at, old.retired_at),
        (CaState::Retired, Some(at(20)), Some(at(30)))
    );
    // A failed approval left its proposal open and no event behind.
    let chain = h.chain().await;
    let approvals = chain
        .iter()
        .filter(|e| e.event.action == "proposal.approved")
        .count();
    assert_eq!(approvals, 3);
    h.finish().await;
}

both_backends!(
    revoking_an_issuer_is_one_entry_for_everything_it_signed,
    revoke_issuer
);
async fn revoke_issuer(backend: Backend) {
    let h = Harness::open(backend).await;
    h.store.register_first_authority(first()).await.unwrap();
    for n in 1..=3 {
        let pk = h.approved(NODE, &format!("r-{n}"), &serial(n)).await;
        h.issue(pk, &serial(n), None, &["certificate.issued"])
            .await
            .unwrap();
    }
    let revoke = Change::RevokeIssuer {
        key_id: ISSUER.to_owned(),
        reason: RevocationReason::CaCompromise,
    };
    // The active CA with no successor cannot go.
    let alone = apply(&h, "p-alone", revoke.clone(), 10).await;
    assert!(matches!(alone, Err(StoreError::Conflict(_))));
    assert_eq!(h.store.revocation_bounds().await.unwrap().head, 0);
    apply(&h, "p-prepare", step(CaAction::Prepare, NEXT), 11)
        .await
        .unwrap();
    apply(&h, "p-revoke", revoke, 12).await.unwrap();

    let bounds = h.store.revocation_bounds().await.unwrap();
    assert_eq!(bounds.head, 1, "one entry");
    let entries = h.store.live_revocations(at(13)).await.unwrap();
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert!(entry.issuer);
    assert_eq!(
        (
            entry.issuer_key_id.as_str(),
            entry.serial.to_hex(),
            entry.reason
        ),
        (ISSUER, "0f01".to_owned(), RevocationReason::CaCompromise)
    );
    // A whole CA's revocation is its issuer's business: neither CA's own CRL lists it.
    for key_id in [ISSUER, NEXT] {
        assert_eq!(h.store.crl_entries(key_id, at(13)).await.unwrap(), []);
    }
    let statuses = h
        .store
        .certificate_statuses(&[serial(1), serial(2), serial(3)])
        .await
        .unwrap();
    for status in statuses {
        assert_eq!(status.state, CertState::Revoked);
        assert_eq!(status.revocation.as_ref().map(|r| r.seq), Some(1));
    }
    assert_eq!(
        states(&h).await,
        [
            (ISSUER.to_owned(), CaState::Revoked),
            (NEXT.to_owned(), CaState::Active)
        ]
    );
    h.finish().await;
}
