//! Signed audit checkpoints: one per head, written through the writer, a second of the same head
//! (another replica's) counted as done, and refused to edits by the database itself.

use mintgate_ca::{FileAuditSigner, verify_signature};
use mintgate_domain::audit::verify_checkpoints;
use mintgate_domain::ports::AuditSigner as _;
use mintgate_domain::store::CertificateStore as _;
use mintgate_store::CheckpointWrite;
use mintgate_tests::{Backend, both_backends};

use crate::{Harness, at, event};

fn signer(n: u8) -> FileAuditSigner {
    FileAuditSigner::from_pem(&FileAuditSigner::dev_pem(&[n; 32])).unwrap()
}

both_backends!(a_checkpoint_signs_the_head_once, signs_the_head);
async fn signs_the_head(backend: Backend) {
    let h = Harness::open(backend).await;
    let key = signer(1);
    let written = h.store.write_checkpoint(&key, at(0)).await.unwrap();
    assert_eq!(
        written,
        CheckpointWrite::UpToDate,
        "an empty chain has no head"
    );

    let events = vec![event("request.denied", "a"), event("policy.reloaded", "b")];
    h.store.append_audit(events).await.unwrap();
    let commits = h.store.write_commits();
    let CheckpointWrite::Written(first) = h.store.write_checkpoint(&key, at(5)).await.unwrap()
    else {
        panic!("the head was not signed");
    };
    let chain = h.chain().await;
    assert_eq!(first.checkpoint.seq, 2);
    assert_eq!(first.checkpoint.hash, chain[1].hash);
    assert_eq!(first.checkpoint.at, at(5).unix_timestamp());
    assert_eq!(first.checkpoint.key_id, key.public_key().key_id);
    assert!(verify_signature(
        key.public_key(),
        &first.checkpoint.message(),
        &first.signature
    ));
    assert_eq!(h.store.write_commits(), commits, "no client request in it");

    // Nothing new: nothing to sign.
    let again = h.store.write_checkpoint(&key, at(6)).await.unwrap();
    assert_eq!(again, CheckpointWrite::UpToDate);

    // A second replica signing the same head (racing this one) changes nothing.
    let replica = h.replica().await;
    assert!(
        !replica
            .insert_checkpoint(key.public_key(), &first, at(7))
            .await
            .unwrap()
    );
    h.store.append_audit(vec![event("x", "c")]).await.unwrap();
    let CheckpointWrite::Written(second) = replica.write_checkpoint(&key, at(8)).await.unwrap()
    else {
        panic!("the replica did not sign the new head");
    };
    assert_eq!(second.checkpoint.seq, 3);
    let CheckpointWrite::UpToDate = h.store.write_checkpoint(&key, at(9)).await.unwrap() else {
        panic!("the head was signed twice");
    };
    replica.close().await;

    let stored = h.store.audit_checkpoints().await.unwrap();
    assert_eq!(stored, vec![first, second]);
    let keys = h.store.audit_keys().await.unwrap();
    assert_eq!(keys, vec![key.public_key().clone()], "published once");
    let trusted = keys.into_iter().map(|k| (k.key_id.clone(), k)).collect();
    let summary = verify_checkpoints(&h.chain().await, &stored, &trusted, verify_signature);
    assert_eq!(summary.unwrap().newest, Some(3));
    h.finish().await;
}

both_backends!(checkpoints_and_keys_refuse_edits, append_only);
async fn append_only(backend: Backend) {
    let h = Harness::open(backend).await;
    h.store.append_audit(vec![event("a", "b")]).await.unwrap();
    let written = h.store.write_checkpoint(&signer(1), at(0)).await.unwrap();
    assert!(matches!(written, CheckpointWrite::Written(_)));
    for sql in [
        "UPDATE audit_checkpoints SET at = 0",
        "DELETE FROM audit_checkpoints",
        "UPDATE audit_keys SET algorithm = 'x'",
        "DELETE FROM audit_keys",
    ] {
        let err = h.execute(sql).await.unwrap_err().to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    if backend == Backend::Postgres {
        for sql in ["TRUNCATE audit_checkpoints", "TRUNCATE audit_keys CASCADE"] {
            assert!(h.execute(sql).await.is_err(), "{sql}");
        }
    }
    assert_eq!(h.count("audit_checkpoints").await, 1);
    assert_eq!(h.count("audit_keys").await, 1);
    // Kept across a restart.
    let h = h.reopen().await;
    assert_eq!(h.store.audit_checkpoints().await.unwrap().len(), 1);
    h.finish().await;
}
