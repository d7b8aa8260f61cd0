//! The risk counts: what the store reports about a caller and an identity comes from the
//! requests it recorded (each once, whatever retries came), by window, and old counts go.

use std::time::Duration;

use mintgate_domain::hold::{CastVote, HoldStore, RiskQuery, VoteOutcome};
use mintgate_domain::lifecycle::RequestState;
use mintgate_domain::model::{HoldVote, NewRequest, RequestKind};
use mintgate_domain::risk::{Rates, RiskFacts};
use mintgate_domain::store::CertificateStore;
use mintgate_tests::{Backend, both_backends};

use crate::{Harness, NODE, OPERATOR, OTHER_NODE, WORKLOAD, at, event, request, serial, subject};

const OTHER: &str = "spiffe://dev.mintgate.local/billing/worker";

async fn record(h: &Harness, new: NewRequest) {
    let audit = vec![event(
        "request.recorded",
        &subject(&new.caller, &new.request_id),
    )];
    h.store.insert_request(new, None, audit).await.unwrap();
}

/// An enrollment by `caller` for `spiffe_id`, `secs` from the test's instant.
fn enroll(caller: &str, id: &str, spiffe_id: &str, secs: i64, state: RequestState) -> NewRequest {
    NewRequest {
        spiffe_id: spiffe_id.to_owned(),
        now: at(secs),
        ..request(caller, id, state, None)
    }
}

async fn facts(h: &Harness, spiffe_id: &str, secs: i64, cap: u64) -> RiskFacts {
    let query = RiskQuery {
        caller: NODE,
        node: true,
        spiffe_id,
        now: at(secs),
        identities_cap: cap,
        request_id: Some("r-1"),
    };
    h.store.risk_facts(query).await.unwrap()
}

both_backends!(
    rates_count_each_recorded_request_once_in_its_windows,
    rates_by_window
);
async fn rates_by_window(backend: Backend) {
    let h = Harness::open(backend).await;
    let approved = RequestState::Approved;
    // Two days back: in no window. Two hours back: the baseline. Half an hour back: the last
    // hour. Ten seconds back: the last minute too.
    for (n, secs) in [(2, -48 * 3600), (5, -7200), (2, -1800), (4, -10)] {
        for i in 0..n {
            let id = format!("r{secs}-{i}");
            record(&h, enroll(NODE, &id, WORKLOAD, secs, approved)).await;
        }
    }
    // A retry of a recorded request, another node's request and a renewal count for the
    // identity at most, never twice and never for this node.
    record(&h, enroll(NODE, "r-10-0", WORKLOAD, -10, approved)).await;
    record(&h, enroll(OTHER_NODE, "o-1", WORKLOAD, -5, approved)).await;
    let renewal = NewRequest {
        kind: RequestKind::Renew,
        ..enroll(WORKLOAD, "renew-1", WORKLOAD, -5, approved)
    };
    record(&h, renewal).await;

    let facts = facts(&h, WORKLOAD, 0, 50).await;
    let node = Rates {
        last_minute: 4,
        last_hour: 6,
        baseline: 5,
    };
    assert_eq!(facts.node, Some(node));
    let identity = Rates {
        last_minute: 6,
        last_hour: 8,
        baseline: 5,
    };
    assert_eq!(facts.identity, identity);
    assert_eq!(facts.node_identities_last_hour, 1);
    assert!(facts.node_issued_identity_before);
    h.finish().await;
}

both_backends!(
    a_node_is_known_for_an_identity_once_policy_allowed_it,
    allowed_pairs
);
async fn allowed_pairs(backend: Backend) {
    let h = Harness::open(backend).await;
    let held = enroll(NODE, "held", OTHER, -60, RequestState::PendingApproval);
    record(&h, held).await;
    assert!(!facts(&h, OTHER, 0, 50).await.node_issued_identity_before);
    let denied = enroll(NODE, "denied", OTHER, -30, RequestState::Denied);
    record(&h, denied).await;
    assert!(!facts(&h, OTHER, 0, 50).await.node_issued_identity_before);

    // An approver releases the held one.
    let pk = h
        .store
        .find_request(NODE, "held")
        .await
        .unwrap()
        .unwrap()
        .pk;
    let vote = CastVote {
        pk,
        vote: HoldVote {
            operator: OPERATOR.to_owned(),
            approve: true,
            reason: "expected rollout".to_owned(),
            at: at(-20),
        },
        quorum: 1,
        audit: vec![event("hold.approved", "held")],
        release_audit: vec![event("request.released", "held")],
    };
    assert_eq!(
        h.store.cast_vote(vote).await.unwrap(),
        VoteOutcome::Released
    );
    assert!(facts(&h, OTHER, 0, 50).await.node_issued_identity_before);
    h.finish().await;
}

both_backends!(
    distinct_identities_are_counted_up_to_the_cap_within_the_hour,
    distinct_identities
);
async fn distinct_identities(backend: Backend) {
    let h = Harness::open(backend).await;
    for i in 0..6 {
        let spiffe_id = format!("spiffe://dev.mintgate.local/team/svc-{i}");
        // Asked twice each: still one identity.
        for attempt in 0..2 {
            let id = format!("svc-{i}-{attempt}");
            let secs = if i == 0 { -4000 } else { -100 };
            record(
                &h,
                enroll(NODE, &id, &spiffe_id, secs, RequestState::Approved),
            )
            .await;
        }
    }
    // svc-0 was last asked for more than an hour ago; the one assessed counts itself once.
    assert_eq!(
        facts(&h, WORKLOAD, 0, 50).await.node_identities_last_hour,
        6
    );
    let svc_1 = "spiffe://dev.mintgate.local/team/svc-1";
    assert_eq!(facts(&h, svc_1, 0, 50).await.node_identities_last_hour, 5);
    assert_eq!(facts(&h, WORKLOAD, 0, 3).await.node_identities_last_hour, 4);
    // The one asked for among the recent ones, past the cap: the cap's worth of others.
    assert_eq!(facts(&h, svc_1, 0, 3).await.node_identities_last_hour, 4);
    assert_eq!(facts(&h, svc_1, 0, 1).await.node_identities_last_hour, 2);
    // svc-0 is not recent: all five others count.
    let svc_0 = "spiffe://dev.mintgate.local/team/svc-0";
    assert_eq!(facts(&h, svc_0, 0, 50).await.node_identities_last_hour, 6);
    h.finish().await;
}

both_backends!(the_identity_profile_comes_from_its_certificates, profile);
async fn profile(backend: Backend) {
    let h = Harness::open(backend).await;
    let before = facts(&h, WORKLOAD, 0, 50).await;
    assert!(!before.request_recorded);
    assert!(!before.identity_issued_before);
    assert!(before.identity_key_types.is_empty());
    assert_eq!(before.identity_longest_lifetime, None);

    let s = serial(1);
    let pk = h.approved(NODE, "r-1", &s).await;
    h.issue(pk, &s, None, &["certificate.issued"])
        .await
        .unwrap();
    let after = facts(&h, WORKLOAD, 10, 50).await;
    assert!(after.request_recorded, "the node's request r-1");
    assert!(after.identity_issued_before);
    assert_eq!(after.identity_key_types, vec!["P-256".to_owned()]);
    // issued at +1, not after +3600.
    let lifetime = Duration::from_secs(3599);
    assert_eq!(after.identity_longest_lifetime, Some(lifetime));
    // Past the history, the profile is empty but the identity was still issued before.
    let later = facts(&h, WORKLOAD, 31 * 24 * 3600, 50).await;
    assert!(later.identity_issued_before);
    assert!(later.identity_key_types.is_empty());
    assert_eq!(later.identity_longest_lifetime, None);
    h.finish().await;
}

both_backends!(a_blocked_identity_is_read_with_its_facts, blocked);
async fn blocked(backend: Backend) {
    let h = Harness::open(backend).await;
    assert!(!facts(&h, WORKLOAD, 0, 50).await.identity_blocked);
    h.execute(&format!(
        "INSERT INTO identity_blocks (spiffe_id, reason, blocked_by, blocked_at) \
         VALUES ('{WORKLOAD}', 'KEY_COMPROMISE', '{OPERATOR}', 0)"
    ))
    .await
    .unwrap();
    assert!(facts(&h, WORKLOAD, 0, 50).await.identity_blocked);
    assert!(!facts(&h, OTHER, 0, 50).await.identity_blocked);
    h.finish().await;
}

both_backends!(old_counts_are_pruned_and_recent_ones_kept, prune);
async fn prune(backend: Backend) {
    let h = Harness::open(backend).await;
    record(
        &h,
        enroll(NODE, "old", WORKLOAD, -3 * 3600, RequestState::Approved),
    )
    .await;
    record(&h, enroll(NODE, "new", OTHER, -30, RequestState::Approved)).await;
    // Minute and hour counts for the node and each identity, and one pair each.
    assert_eq!(h.count("risk_counts").await, 8);
    assert_eq!(h.count("node_identities").await, 2);

    // The old minutes go; hours stay for the baseline.
    assert_eq!(h.store.prune_risk_counts(at(0)).await.unwrap(), 2);
    assert_eq!(h.count("risk_counts").await, 6);
    let facts = facts(&h, WORKLOAD, 0, 50).await;
    assert_eq!(facts.node.unwrap().baseline, 1);

    // Much later, everything no window reaches is gone.
    let later = at(31 * 24 * 3600);
    assert_eq!(h.store.prune_risk_counts(later).await.unwrap(), 8);
    assert_eq!(h.count("risk_counts").await, 0);
    assert_eq!(h.count("node_identities").await, 0);
    h.finish().await;
}

/// The read before deciding keeps connections of its own between reads. One that the database
/// ended since (a restart, an administrator) costs no refusal: the read runs again on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_before_deciding_outlives_its_connection() {
    if !mintgate_tests::db::postgres_available().await {
        return;
    }
    let h = Harness::open(Backend::Postgres).await;
    assert!(!facts(&h, WORKLOAD, 0, 50).await.identity_blocked);
    let ended: i64 = h
        .scalar(
            "SELECT COUNT(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND query LIKE '%risk_counts%'",
        )
        .await;
    assert_eq!(ended, 1, "one connection ran the read");
    assert!(!facts(&h, WORKLOAD, 0, 50).await.identity_blocked);
    h.finish().await;
}
