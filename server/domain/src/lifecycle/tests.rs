//! Tests for the lifecycle transition functions: the tables below are the specification
//! (DESIGN §5), written out independently of the `match` they check.

use proptest::prelude::*;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::*;

use CertEvent as CE;
use CertState as CS;
use RequestEvent as RE;
use RequestState as RS;

/// Every allowed request edge; every pair not listed must be refused.
const REQUEST_EDGES: [(RequestState, RequestEvent, RequestState); 12] = [
    (RS::Received, RE::Verify, RS::Verified),
    (RS::Received, RE::Reject, RS::Rejected),
    (RS::Verified, RE::Approve, RS::Approved),
    (RS::Verified, RE::HoldForApproval, RS::PendingApproval),
    (RS::Verified, RE::Deny, RS::Denied),
    (RS::Verified, RE::Reject, RS::Rejected),
    (RS::PendingApproval, RE::Approve, RS::Approved),
    (RS::PendingApproval, RE::Deny, RS::Denied),
    (RS::PendingApproval, RE::ApprovalTimeout, RS::Expired),
    (RS::Approved, RE::Sign, RS::Issued),
    (RS::Approved, RE::Fail, RS::Failed),
    (RS::Failed, RE::Retry, RS::Approved),
];

const NOT_AFTER: OffsetDateTime = datetime!(2030-01-01 00:00 UTC);
const BEFORE: OffsetDateTime = datetime!(2029-12-31 23:59:59 UTC);

/// Every certificate (state, event, past notAfter?) case and its answer: the next state or the
/// reason code of the refusal.
const CERT_CASES: [(CertState, CertEvent, bool, Result<CertState, &str>); 24] = [
    (CS::Active, CE::Supersede, false, Ok(CS::Superseded)),
    (CS::Active, CE::Supersede, true, Err("CERTIFICATE_EXPIRED")),
    (
        CS::Active,
        CE::Expire,
        false,
        Err("INVALID_STATE_TRANSITION"),
    ),
    (CS::Active, CE::Expire, true, Ok(CS::Expired)),
    (CS::Active, CE::Revoke, false, Ok(CS::Revoked)),
    (CS::Active, CE::Revoke, true, Err("CERTIFICATE_EXPIRED")),
    (
        CS::Superseded,
        CE::Supersede,
        false,
        Err("CERTIFICATE_SUPERSEDED"),
    ),
    (
        CS::Superseded,
        CE::Supersede,
        true,
        Err("CERTIFICATE_SUPERSEDED"),
    ),
    (
        CS::Superseded,
        CE::Expire,
        false,
        Err("INVALID_STATE_TRANSITION"),
    ),
    (CS::Superseded, CE::Expire, true, Ok(CS::Expired)),
    (CS::Superseded, CE::Revoke, false, Ok(CS::Revoked)),
    (CS::Superseded, CE::Revoke, true, Err("CERTIFICATE_EXPIRED")),
    (
        CS::Expired,
        CE::Supersede,
        false,
        Err("CERTIFICATE_EXPIRED"),
    ),
    (CS::Expired, CE::Supersede, true, Err("CERTIFICATE_EXPIRED")),
    (
        CS::Expired,
        CE::Expire,
        false,
        Err("INVALID_STATE_TRANSITION"),
    ),
    (
        CS::Expired,
        CE::Expire,
        true,
        Err("INVALID_STATE_TRANSITION"),
    ),
    (CS::Expired, CE::Revoke, false, Err("CERTIFICATE_EXPIRED")),
    (CS::Expired, CE::Revoke, true, Err("CERTIFICATE_EXPIRED")),
    (
        CS::Revoked,
        CE::Supersede,
        false,
        Err("CERTIFICATE_REVOKED"),
    ),
    (CS::Revoked, CE::Supersede, true, Err("CERTIFICATE_REVOKED")),
    (
        CS::Revoked,
        CE::Expire,
        false,
        Err("INVALID_STATE_TRANSITION"),
    ),
    (
        CS::Revoked,
        CE::Expire,
        true,
        Err("INVALID_STATE_TRANSITION"),
    ),
    (CS::Revoked, CE::Revoke, false, Err("ALREADY_REVOKED")),
    (CS::Revoked, CE::Revoke, true, Err("ALREADY_REVOKED")),
];

fn request_edge(state: RequestState, event: RequestEvent) -> Option<RequestState> {
    REQUEST_EDGES
        .iter()
        .find(|(from, on, _)| *from == state && *on == event)
        .map(|(_, _, to)| *to)
}

#[test]
fn every_request_pair_matches_the_table() {
    for state in RS::ALL {
        for event in RE::ALL {
            let got = transition_request(state, event);
            match request_edge(state, event) {
                Some(to) => assert_eq!(got, Ok(to), "{state} + {event}"),
                None => {
                    let Err(err) = got else {
                        panic!("{state} + {event} must be refused");
                    };
                    assert_eq!(err.reason(), "INVALID_STATE_TRANSITION");
                    assert_eq!(err.entity, "request");
                    assert_eq!(err.from, state.as_str());
                    assert_eq!(err.event, event.as_str());
                }
            }
        }
    }
}

#[test]
fn happy_path_issues_once() {
    let mut state = RS::Received;
    for event in [RE::Verify, RE::Approve, RE::Sign] {
        state = transition_request(state, event).unwrap();
    }
    assert_eq!(state, RS::Issued);
    let err = transition_request(state, RE::Sign).unwrap_err();
    assert_eq!(err.to_string(), "cannot sign a request in state ISSUED");
}

#[test]
fn failed_signing_is_retried_with_the_same_request() {
    let failed = transition_request(RS::Approved, RE::Fail).unwrap();
    assert_eq!(failed, RS::Failed);
    assert!(transition_request(failed, RE::Sign).is_err());
    let again = transition_request(failed, RE::Retry).unwrap();
    assert_eq!(transition_request(again, RE::Sign), Ok(RS::Issued));
}

#[test]
fn pending_approval_resolves_three_ways() {
    let pending = transition_request(RS::Verified, RE::HoldForApproval).unwrap();
    assert_eq!(transition_request(pending, RE::Approve), Ok(RS::Approved));
    assert_eq!(transition_request(pending, RE::Deny), Ok(RS::Denied));
    assert_eq!(
        transition_request(pending, RE::ApprovalTimeout),
        Ok(RS::Expired)
    );
    assert!(transition_request(pending, RE::Sign).is_err());
}

#[test]
fn unverified_requests_cannot_be_approved_or_signed() {
    assert!(transition_request(RS::Received, RE::Approve).is_err());
    assert!(transition_request(RS::Received, RE::Sign).is_err());
    assert!(transition_request(RS::Verified, RE::Sign).is_err());
    assert_eq!(
        transition_request(RS::Received, RE::Reject),
        Ok(RS::Rejected)
    );
}

#[test]
fn every_cert_case_matches_the_table() {
    for (state, event, past, want) in CERT_CASES {
        let now = if past { NOT_AFTER } else { BEFORE };
        let got = transition_cert(state, event, NOT_AFTER, now);
        match want {
            Ok(to) => assert_eq!(got, Ok(to), "{state} + {event} (past: {past})"),
            Err(reason) => {
                let Err(err) = got else {
                    panic!("{state} + {event} must be refused");
                };
                assert_eq!(err.reason(), reason, "{state} + {event} (past: {past})");
                assert_eq!(err.entity, "certificate");
                assert_eq!(err.from, state.as_str());
            }
        }
    }
    // The table covers every pair at both sides of notAfter.
    for state in CS::ALL {
        for event in CE::ALL {
            for past in [false, true] {
                let n = CERT_CASES
                    .iter()
                    .filter(|(s, e, p, _)| *s == state && *e == event && *p == past)
                    .count();
                assert_eq!(n, 1, "{state} + {event} (past: {past})");
            }
        }
    }
}

#[test]
fn not_after_itself_counts_as_expired() {
    let err = transition_cert(CS::Active, CE::Supersede, NOT_AFTER, NOT_AFTER).unwrap_err();
    assert_eq!(err.reason(), "CERTIFICATE_EXPIRED");
    assert_eq!(
        transition_cert(CS::Active, CE::Expire, NOT_AFTER, NOT_AFTER),
        Ok(CS::Expired)
    );
    let just_before = NOT_AFTER - Duration::nanoseconds(1);
    assert_eq!(
        transition_cert(CS::Active, CE::Supersede, NOT_AFTER, just_before),
        Ok(CS::Superseded)
    );
}

#[test]
fn renewal_refusals_say_why() {
    let msg = |s| {
        transition_cert(s, CE::Supersede, NOT_AFTER, BEFORE)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        msg(CS::Revoked),
        "the certificate is revoked and cannot be renewed"
    );
    assert!(msg(CS::Superseded).contains("already renewed"));
    assert!(msg(CS::Expired).contains("expired"));
    let twice = transition_cert(CS::Revoked, CE::Revoke, NOT_AFTER, BEFORE).unwrap_err();
    assert_eq!(twice.to_string(), "the certificate is already revoked");
}

#[test]
fn states_round_trip_through_their_stored_names() {
    for state in RS::ALL {
        assert_eq!(RS::parse(state.as_str()), Some(state));
        assert_eq!(state.to_string(), state.as_str());
    }
    for state in CS::ALL {
        assert_eq!(CS::parse(state.as_str()), Some(state));
    }
    assert_eq!(RS::PendingApproval.as_str(), "PENDING_APPROVAL");
    assert_eq!(CS::Active.as_str(), "ACTIVE");
    assert_eq!(RS::parse("pending_approval"), None);
    assert_eq!(CS::parse(""), None);
    assert_eq!(CS::parse("ACTIVE "), None);
}

#[test]
fn terminal_flags_match_the_tables() {
    for state in RS::ALL {
        let has_exit = REQUEST_EDGES.iter().any(|(from, _, _)| *from == state);
        assert_eq!(state.is_terminal(), !has_exit, "{state}");
    }
    assert!(CS::Revoked.is_terminal() && CS::Expired.is_terminal());
    assert!(!CS::Active.is_terminal() && !CS::Superseded.is_terminal());
}

fn request_event() -> impl Strategy<Value = RequestEvent> {
    proptest::sample::select(RE::ALL.to_vec())
}

fn request_state() -> impl Strategy<Value = RequestState> {
    proptest::sample::select(RS::ALL.to_vec())
}

fn cert_event() -> impl Strategy<Value = CertEvent> {
    proptest::sample::select(CE::ALL.to_vec())
}

fn cert_state() -> impl Strategy<Value = CertState> {
    proptest::sample::select(CS::ALL.to_vec())
}

/// An instant within a few hours either side of [`NOT_AFTER`], often exactly on it.
fn instant() -> impl Strategy<Value = OffsetDateTime> {
    prop_oneof![
        Just(NOT_AFTER),
        (-20_000i64..20_000).prop_map(|s| NOT_AFTER + Duration::seconds(s)),
    ]
}

proptest! {
    #[test]
    fn request_transition_is_total(state in request_state(), event in request_event()) {
        match transition_request(state, event) {
            Ok(to) => prop_assert_eq!(request_edge(state, event), Some(to)),
            Err(e) => {
                prop_assert_eq!(request_edge(state, event), None);
                prop_assert_eq!(e.reason(), "INVALID_STATE_TRANSITION");
            }
        }
    }

    #[test]
    fn terminal_request_states_refuse_everything(state in request_state(), event in request_event()) {
        if state.is_terminal() {
            prop_assert!(transition_request(state, event).is_err());
        }
    }

    #[test]
    fn random_request_paths_follow_the_table(events in proptest::collection::vec(request_event(), 0..64)) {
        let mut state = RS::Received;
        let mut issued = 0;
        for event in events {
            match transition_request(state, event) {
                Ok(to) => {
                    prop_assert_eq!(request_edge(state, event), Some(to));
                    prop_assert_ne!(to, RS::Received);
                    if to == RS::Issued {
                        issued += 1;
                    }
                    state = to;
                }
                Err(_) => prop_assert_eq!(request_edge(state, event), None),
            }
            prop_assert!(issued <= 1, "ISSUED reached {} times", issued);
        }
    }

    #[test]
    fn cert_transition_is_total(
        state in cert_state(),
        event in cert_event(),
        now in instant(),
    ) {
        let past = now >= NOT_AFTER;
        let got = transition_cert(state, event, NOT_AFTER, now);
        let (_, _, _, want) = CERT_CASES
            .iter()
            .find(|(s, e, p, _)| *s == state && *e == event && *p == past)
            .copied()
            .expect("the table covers every case");
        prop_assert_eq!(got.map_err(|e| e.reason()), want);
    }

    #[test]
    fn terminal_cert_states_refuse_everything(
        state in cert_state(),
        event in cert_event(),
        now in instant(),
    ) {
        if state.is_terminal() {
            prop_assert!(transition_cert(state, event, NOT_AFTER, now).is_err());
        }
    }

    #[test]
    fn random_cert_paths_never_leave_revoked_or_expire_early(
        steps in proptest::collection::vec((cert_event(), instant()), 0..32),
    ) {
        let mut state = CS::Active;
        let mut superseded = 0;
        for (event, now) in steps {
            let before = state;
            if let Ok(to) = transition_cert(state, event, NOT_AFTER, now) {
                if to == CS::Expired {
                    prop_assert!(now >= NOT_AFTER, "expired before notAfter");
                }
                if to == CS::Superseded {
                    superseded += 1;
                    prop_assert!(now < NOT_AFTER, "renewed after notAfter");
                }
                state = to;
            }
            if before == CS::Revoked {
                prop_assert_eq!(state, CS::Revoked);
            }
            prop_assert!(superseded <= 1, "superseded twice");
            prop_assert!(state != CS::Active || before == CS::Active, "returned to ACTIVE");
        }
    }
}
