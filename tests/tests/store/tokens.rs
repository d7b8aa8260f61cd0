//! Join tokens: created with the request that makes them, and consumed by exactly one request —
//! the loser of a race, or a request presenting an expired or unknown token, writes nothing.

use mintgate_domain::lifecycle::RequestState;
use mintgate_domain::model::{JoinTokenRecord, NewRequest, RequestKind};
use mintgate_domain::store::{CertificateStore, Inserted, NewJoinToken, StoreError, TokenUse};
use mintgate_tests::{Backend, both_backends};
use tokio::task::JoinSet;

use crate::{Harness, NODE, OPERATOR, OTHER_NODE, at, event, request, serial, subject};

const TOKEN: &str = "tok-1";

fn new_token(token_id: &str) -> NewJoinToken {
    NewJoinToken {
        token_id: token_id.to_owned(),
        token_hash: "ab".repeat(32),
        spiffe_id: NODE.to_owned(),
        created_by: OPERATOR.to_owned(),
        expires_at: at(600),
    }
}

fn token_request() -> NewRequest {
    NewRequest {
        kind: RequestKind::JoinToken,
        token_id: Some(TOKEN.to_owned()),
        token_expires_at: Some(at(600)),
        spiffe_id: NODE.to_owned(),
        ..request(OPERATOR, "jt-1", RequestState::Approved, None)
    }
}

/// Creates [`TOKEN`], expiring at `at(600)`.
async fn create_token(h: &Harness) {
    let audit = vec![event("join_token.created", "token:tok-1")];
    let created = h
        .store
        .insert_join_token(token_request(), new_token(TOKEN), audit)
        .await
        .unwrap();
    assert!(matches!(created, Inserted::New(_)), "{created:?}");
}

/// A node's enrollment presenting [`TOKEN`].
async fn enroll(
    store: &impl CertificateStore,
    caller: &str,
    n: u8,
    now: i64,
) -> Result<Inserted, StoreError> {
    let request = request(caller, "e-1", RequestState::Approved, Some(serial(n)));
    let token = TokenUse {
        token_id: TOKEN.to_owned(),
        used_by: caller.to_owned(),
        now: at(now),
    };
    let audit = vec![event("request.approved", &subject(caller, "e-1"))];
    store.insert_request(request, Some(token), audit).await
}

both_backends!(a_join_token_is_stored_with_its_request_once, created);
async fn created(backend: Backend) {
    let h = Harness::open(backend).await;
    create_token(&h).await;
    let stored = JoinTokenRecord {
        token_id: TOKEN.to_owned(),
        token_hash: "ab".repeat(32),
        spiffe_id: NODE.to_owned(),
        created_by: OPERATOR.to_owned(),
        expires_at: at(600),
        used_at: None,
    };
    assert_eq!(h.store.join_token(TOKEN).await.unwrap(), Some(stored));
    let request = h
        .store
        .find_request(OPERATOR, "jt-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(request.token_id.as_deref(), Some(TOKEN));
    assert_eq!(request.token_expires_at, Some(at(600)));

    // Retrying the creation answers with the first token and makes no second one.
    let retry = h
        .store
        .insert_join_token(token_request(), new_token("tok-2"), vec![event("x", "y")])
        .await
        .unwrap();
    assert_eq!(retry, Inserted::Duplicate(Box::new(request)));
    assert_eq!(h.store.join_token("tok-2").await.unwrap(), None);
    assert_eq!(h.count("join_tokens").await, 1);
    assert_eq!(h.count("requests").await, 1);
    assert_eq!(h.chain().await.len(), 1);
    h.finish().await;
}

both_backends!(a_join_token_admits_exactly_one_request, single_use);
async fn single_use(backend: Backend) {
    let h = Harness::open(backend).await;
    create_token(&h).await;

    let mut tasks = JoinSet::new();
    for (n, caller) in [(1, NODE), (2, OTHER_NODE)] {
        let store = h.store.clone();
        tasks.spawn(async move { (caller, n, enroll(&store, caller, n, 60).await) });
    }
    let results = tasks.join_all().await;
    let [&(winner, n, _)] = results
        .iter()
        .filter(|(_, _, r)| matches!(r, Ok(Inserted::New(_))))
        .collect::<Vec<_>>()[..]
    else {
        panic!("exactly one enrollment must win: {results:?}");
    };
    let (loser, _, lost) = results.iter().find(|(c, _, _)| *c != winner).unwrap();
    assert!(
        matches!(lost, Err(StoreError::Conflict("join token"))),
        "{lost:?}"
    );

    // The loser left nothing behind; the winner's request, token use and event are all there.
    assert_eq!(h.store.find_request(loser, "e-1").await.unwrap(), None);
    assert!(h.store.find_request(winner, "e-1").await.unwrap().is_some());
    assert_eq!(h.count("requests").await, 2);
    let chain = h.chain().await;
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1].event.subject, subject(winner, "e-1"));
    let token = h.store.join_token(TOKEN).await.unwrap().unwrap();
    assert_eq!(token.used_at, Some(at(60)));
    let used_by: String = h.scalar("SELECT used_by FROM join_tokens").await;
    assert_eq!(used_by, winner);

    // The winner's retry is recognised as its own request, not refused for a used token.
    let retry = enroll(&h.store, winner, 3, 120).await.unwrap();
    assert!(
        matches!(&retry, Inserted::Duplicate(r) if r.serial == Some(serial(n))),
        "{retry:?}"
    );
    assert_eq!(h.chain().await.len(), 2);
    h.finish().await;
}

both_backends!(an_expired_or_unknown_join_token_admits_nothing, refused);
async fn refused(backend: Backend) {
    let h = Harness::open(backend).await;
    create_token(&h).await;
    let chain = h.chain().await;

    // A token is expired from its expiry instant on.
    let expired = enroll(&h.store, NODE, 1, 600).await;
    assert!(
        matches!(expired, Err(StoreError::Conflict("join token"))),
        "{expired:?}"
    );
    let unknown = TokenUse {
        token_id: "no-such-token".to_owned(),
        used_by: NODE.to_owned(),
        now: at(60),
    };
    let request = request(NODE, "e-2", RequestState::Approved, Some(serial(2)));
    let unknown = h
        .store
        .insert_request(
            request,
            Some(unknown),
            vec![event("request.approved", "e-2")],
        )
        .await;
    assert!(
        matches!(unknown, Err(StoreError::Conflict("join token"))),
        "{unknown:?}"
    );

    assert_eq!(h.count("requests").await, 1);
    assert_eq!(h.chain().await, chain);
    assert_eq!(
        h.store.join_token(TOKEN).await.unwrap().unwrap().used_at,
        None
    );

    // Still usable before it expires.
    assert!(matches!(
        enroll(&h.store, NODE, 3, 599).await,
        Ok(Inserted::New(_))
    ));
    h.finish().await;
}
