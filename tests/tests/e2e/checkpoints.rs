//! Signed audit checkpoints (DESIGN §17): the server signs the chain's head every N events,
//! every M seconds on its clock, and on shutdown; `mintgate audit verify` checks every one, and
//! catches what the hash chain alone cannot: a table rewritten with every hash recomputed, and
//! the newest events cut off. A forged or altered checkpoint is named.

use std::time::{Duration, Instant};

use mintgate_ca::{FileAuditSigner, audit_key_pem};
use mintgate_domain::audit::{ChainedEvent, SignedCheckpoint, verify_chain};
use mintgate_domain::ports::AuditSigner as _;
use mintgate_domain::store::CertificateStore;
use mintgate_tests::csr::{check_issued, csr};
use mintgate_tests::{Backend, Options, TestServer, both_backends};

use crate::issuance::{WORKLOAD, enroll_request};
use crate::metrics::Scrape;

/// Enrolls `WORKLOAD` with `request_id`; the events it appends.
async fn enroll(server: &TestServer, request_id: &str) -> usize {
    let before = server.store().audit_chain().await.unwrap().len();
    let (csr_pem, _) = csr(WORKLOAD, &[]);
    let issued = server
        .node()
        .await
        .enroll(enroll_request(request_id, &csr_pem))
        .await
        .unwrap();
    check_issued(
        &issued.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        WORKLOAD,
        server.clock.now_odt().unix_timestamp(),
    );
    server.store().audit_chain().await.unwrap().len() - before
}

/// Waits (bounded, in real time: the job runs in the background) for a checkpoint at `seq`.
async fn checkpoint_at(server: &TestServer, seq: i64) -> SignedCheckpoint {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stored = server.store().audit_checkpoints().await.unwrap();
        if let Some(c) = stored.iter().find(|c| c.checkpoint.seq == seq) {
            return c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint at seq {seq}: {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn head(server: &TestServer) -> i64 {
    server.store().audit_chain().await.unwrap().len() as i64
}

both_backends!(checkpoints_every_n_events, by_count);
async fn by_count(backend: Backend) {
    let server = TestServer::spawn_with(Options {
        checkpoint_every_events: 5,
        checkpoint_every: Duration::from_secs(3600),
        ..Options::new(backend)
    })
    .await;
    // What the first start recorded (policy bootstrap) was appended before the job started.
    let start = head(&server).await;
    let mut n = 0;
    while head(&server).await < start + 5 {
        n += 1;
        enroll(&server, &format!("n-{n}")).await;
    }
    // The clock has not moved: only the count can have made it.
    let signed = newest_after(&server, start).await;
    let chain = server.store().audit_chain().await.unwrap();
    let at_seq = &chain[usize::try_from(signed.checkpoint.seq - 1).unwrap()];
    // The job counts from the newest checkpoint (none: from 0), not from `start`, so the first
    // one may fall anywhere after the bootstrap's events.
    assert!(signed.checkpoint.seq > start, "{signed:?}");
    assert_eq!(signed.checkpoint.hash, at_seq.hash);
    assert_eq!(
        signed.checkpoint.at,
        server.clock.now_odt().unix_timestamp()
    );
    let key = FileAuditSigner::from_pem(&FileAuditSigner::dev_pem(&secret(&server))).unwrap();
    assert_eq!(signed.checkpoint.key_id, key.public_key().key_id);
    assert!(mintgate_ca::verify_signature(
        key.public_key(),
        &signed.checkpoint.message(),
        &signed.signature
    ));
    let (ok, text) = verify(&server.database_url, &[]);
    assert!(ok, "{text}");
    assert!(text.contains("signed checkpoint"), "{text}");
    server.shutdown().await;
}

both_backends!(checkpoints_every_m_seconds_and_on_shutdown, by_time);
async fn by_time(backend: Backend) {
    let server = TestServer::spawn_with(Options {
        checkpoint_every_events: 1_000_000,
        checkpoint_every: Duration::from_secs(60),
        ..Options::new(backend)
    })
    .await;
    enroll(&server, "m-1").await;
    let pending = head(&server).await;
    // Real time passes, the server's clock does not: no checkpoint.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(server.store().audit_checkpoints().await.unwrap().is_empty());
    server.clock.advance(Duration::from_secs(61));
    let by_time = checkpoint_at(&server, pending).await;
    assert_eq!(
        by_time.checkpoint.at,
        server.clock.now_odt().unix_timestamp()
    );
    let scrape = Scrape::take(&server).await;
    assert_eq!(scrape.value("mintgate_audit_checkpoints_total", &[]), 1.0);
    assert_eq!(
        scrape.value("mintgate_audit_checkpoint_seq", &[]),
        pending as f64
    );

    // On shutdown: the final head, though neither N events nor M seconds came.
    enroll(&server, "s-1").await;
    let last = head(&server).await;
    let server = server.restart().await;
    let stored = server.store().audit_checkpoints().await.unwrap();
    let seqs: Vec<i64> = stored.iter().map(|c| c.checkpoint.seq).collect();
    assert_eq!(seqs, [pending, last]);

    let (ok, text) = verify(&server.database_url, &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "2 signed checkpoints hold, the newest at seq {last}"
        )),
        "{text}"
    );
    server.shutdown().await;
}

/// Waits (bounded) for a checkpoint after `seq`; the newest.
async fn newest_after(server: &TestServer, seq: i64) -> SignedCheckpoint {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(c) = server.store().newest_checkpoint().await.unwrap()
            && c.checkpoint.seq > seq
        {
            return c;
        }
        assert!(Instant::now() < deadline, "no checkpoint after seq {seq}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

both_backends!(audit_verify_catches_what_checkpoints_pin, tampered);
async fn tampered(backend: Backend) {
    let server = TestServer::spawn_with(Options {
        checkpoint_every_events: 1,
        ..Options::new(backend)
    })
    .await;
    for n in 0..3 {
        enroll(&server, &format!("t-{n}")).await;
    }
    let newest = head(&server).await;
    checkpoint_at(&server, newest).await;
    let url = server.database_url.clone();
    let dir = tempfile::tempdir().unwrap();
    let trusted = dir.path().join("audit.pub.pem");
    let key = FileAuditSigner::from_pem(&FileAuditSigner::dev_pem(&secret(&server))).unwrap();
    std::fs::write(&trusted, audit_key_pem(key.public_key())).unwrap();
    let trusted = trusted.to_str().unwrap();
    let (ok, text) = verify(&url, &["--public-key", trusted]);
    assert!(ok, "{text}");
    assert!(text.contains("signed checkpoint"), "{text}");
    assert!(text.contains(&key.public_key().key_id), "{text}");
    // `audit keys` publishes the same key.
    let keys = mintgate(&["audit", "keys", "--database-url", &url]);
    let keys = String::from_utf8(keys.stdout).unwrap();
    assert!(keys.contains(&audit_key_pem(key.public_key())), "{keys}");

    // An attacker with database access drops the guards.
    let drop_guards: &[&str] = match backend {
        Backend::Sqlite => &[
            "DROP TRIGGER audit_events_no_update",
            "DROP TRIGGER audit_events_no_delete",
            "DROP TRIGGER audit_checkpoints_no_update",
        ],
        Backend::Postgres => &[
            "DROP TRIGGER audit_events_no_update ON audit_events",
            "DROP TRIGGER audit_checkpoints_no_update ON audit_checkpoints",
        ],
    };
    for sql in drop_guards {
        server.store().execute_raw(sql).await.unwrap();
    }
    let original = server.store().audit_chain().await.unwrap();
    let stored = server.store().audit_checkpoints().await.unwrap();
    // The first checkpoint the rewrite below changes the hash of.
    let pinned = stored
        .iter()
        .map(|c| c.checkpoint.seq)
        .find(|&s| s >= 2)
        .unwrap();

    // 1. The table rewritten from seq 2 on, every hash recomputed: the chain links up and
    //    covers every record, only the checkpoints give it away, at the first one after 2.
    let mut rewritten = original.clone();
    rewritten[1].event.actor = "spiffe://dev.mintgate.local/nobody".into();
    let mut prev = rewritten[0].hash;
    for e in &mut rewritten[1..] {
        *e = ChainedEvent::seal(e.event.clone(), prev);
        prev = e.hash;
    }
    assert_eq!(verify_chain(&rewritten), Ok(original.len() as u64));
    store_rows(&server, &rewritten).await;
    let (ok, text) = verify(&url, &[]);
    assert!(!ok, "verify passed a rewritten chain: {text}");
    assert!(
        text.contains("audit chain intact"),
        "links and coverage hold: {text}"
    );
    assert!(
        text.contains(&format!(
            "audit checkpoint at seq {pinned} does not hold: event {pinned} has hash {}, the \
             checkpoint signed {}",
            hex::encode(rewritten[pinned as usize - 1].hash),
            hex::encode(original[pinned as usize - 1].hash)
        )),
        "{text}"
    );
    store_rows(&server, &original).await;
    assert!(verify(&url, &[]).0);

    // 2. An edited checkpoint: its signature no longer verifies.
    server
        .store()
        .execute_raw(&format!(
            "UPDATE audit_checkpoints SET at = at + 1 WHERE seq = {newest}"
        ))
        .await
        .unwrap();
    let (ok, text) = verify(&url, &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "audit checkpoint at seq {newest} does not hold: its signature does not verify"
        )),
        "{text}"
    );
    server
        .store()
        .execute_raw(&format!(
            "UPDATE audit_checkpoints SET at = at - 1 WHERE seq = {newest}"
        ))
        .await
        .unwrap();
    assert!(verify(&url, &[]).0);

    // 3. A checkpoint forged with the attacker's own key (published in the database too): a
    //    verifier holding the real public key names it.
    let forger = FileAuditSigner::from_pem(&FileAuditSigner::dev_pem(&[0xee; 32])).unwrap();
    let mut forged = checkpoint_at(&server, newest).await;
    forged.checkpoint.seq = newest + 100;
    forged.checkpoint.key_id = forger.public_key().key_id.clone();
    forged.signature = forger.sign(&forged.checkpoint.message()).unwrap();
    let now = server.clock.now_odt();
    let inserted = server
        .store()
        .insert_checkpoint(forger.public_key(), &forged, now)
        .await
        .unwrap();
    assert!(inserted);
    let (ok, text) = verify(&url, &["--public-key", trusted]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "audit checkpoint at seq {} does not hold: it is signed by key {}, which is not a \
             trusted audit key",
            newest + 100,
            forger.public_key().key_id
        )),
        "{text}"
    );
    // Trusting the database's keys, the forged one is at least seen to be ahead of the chain.
    let (ok, text) = verify(&url, &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "the chain ends at seq {newest}, before the checkpoint"
        )),
        "{text}"
    );
    server.shutdown().await;
}

both_backends!(audit_verify_catches_a_cut_past_the_newest_checkpoint, cut);
async fn cut(backend: Backend) {
    let server = TestServer::spawn_with(Options {
        checkpoint_every_events: 1,
        ..Options::new(backend)
    })
    .await;
    enroll(&server, "c-1").await;
    let newest = head(&server).await;
    checkpoint_at(&server, newest).await;
    let url = server.database_url.clone();
    let drop_guard = match backend {
        Backend::Sqlite => "DROP TRIGGER audit_events_no_delete",
        Backend::Postgres => "DROP TRIGGER audit_events_no_update ON audit_events",
    };
    server.store().execute_raw(drop_guard).await.unwrap();
    let cut = format!("DELETE FROM audit_events WHERE seq >= {newest}");
    server.store().execute_raw(&cut).await.unwrap();
    let (ok, text) = verify(&url, &[]);
    assert!(!ok, "verify passed a cut chain: {text}");
    assert!(
        text.contains(&format!(
            "audit checkpoint at seq {newest} does not hold: the chain ends at seq {}, before \
             the checkpoint (the newest events were cut off)",
            newest - 1
        )),
        "{text}"
    );
    server.shutdown().await;
}

/// Overwrites the stored events with `chain` (the guards must be gone).
async fn store_rows(server: &TestServer, chain: &[ChainedEvent]) {
    for e in chain {
        let sql = format!(
            "UPDATE audit_events SET actor = '{}', prev_hash = '{}', hash = '{}' WHERE seq = {}",
            e.event.actor,
            hex::encode(e.prev_hash),
            hex::encode(e.hash),
            e.event.seq
        );
        server.store().execute_raw(&sql).await.unwrap();
    }
}

fn secret(server: &TestServer) -> [u8; 32] {
    hex::decode(server.pki.join_token_key_hex.trim())
        .unwrap()
        .try_into()
        .unwrap()
}

/// `mintgate audit verify` on `url` with `args`: whether it passed, and what it said.
fn verify(url: &str, args: &[&str]) -> (bool, String) {
    let mut all = vec!["audit", "verify", "--database-url", url];
    all.extend_from_slice(args);
    let out = mintgate(&all);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success(), text)
}

fn mintgate(args: &[&str]) -> std::process::Output {
    std::process::Command::new(mintgate_tests::mintgate_bin())
        .args(args)
        .output()
        .unwrap()
}
