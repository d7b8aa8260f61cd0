//! The store adapter against its port: one suite, run on SQLite and on PostgreSQL, each test on
//! a database of its own. It checks what a caller of `CertificateStore` relies on: idempotent
//! inserts, single-use join tokens, conditional transitions that change nothing when they lose,
//! and an append-only audit chain that survives a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod audit;
mod authorities;
mod checkpoints;
mod disk_full;
mod governance;
mod group_commit;
mod leases;
mod migrations;
mod requests;
mod risk;
mod tokens;
mod transitions;

use mintgate_domain::Serial;
use mintgate_domain::audit::{AuditEvent, ChainedEvent};
use mintgate_domain::lifecycle::RequestState;
use mintgate_domain::model::{NewRequest, RequestKind};
use mintgate_domain::store::{CertificateStore, Inserted, NewCertificate, StoreError};
use mintgate_store::{ProbeSettings, SqlStore};
use mintgate_tests::Backend;
use mintgate_tests::db::TestDatabase;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbErr, Statement, TryGetable};
use time::OffsetDateTime;

pub const NODE: &str = "spiffe://dev.mintgate.local/node/node-1";
pub const OTHER_NODE: &str = "spiffe://dev.mintgate.local/node/node-2";
pub const OPERATOR: &str = "spiffe://dev.mintgate.local/operator/admin";
pub const WORKLOAD: &str = "spiffe://dev.mintgate.local/billing/api";

/// A migrated store on a fresh database, and a plain connection to look at its rows.
pub struct Harness {
    pub store: SqlStore,
    raw: DatabaseConnection,
    db: TestDatabase,
}

impl Harness {
    pub async fn open(backend: Backend) -> Self {
        Self::on(TestDatabase::create(backend).await).await
    }

    /// A harness on a database of `backend` whose files live in `dir`.
    pub async fn open_in(backend: Backend, dir: &std::path::Path) -> Self {
        Self::on(TestDatabase::create_in(backend, dir).await).await
    }

    async fn on(db: TestDatabase) -> Self {
        Self {
            store: connect(&db.url).await,
            raw: Database::connect(&db.url).await.unwrap(),
            db,
        }
    }

    /// Another store on the same database, as a second replica would open it.
    pub async fn replica(&self) -> SqlStore {
        connect(&self.db.url).await
    }

    /// Closes every connection and opens the same database again, as a restarted server does.
    pub async fn reopen(self) -> Self {
        self.store.close().await;
        self.raw.close().await.unwrap();
        Self::on(self.db).await
    }

    pub async fn finish(self) {
        self.store.close().await;
        self.raw.close().await.unwrap();
        self.db.drop_database().await;
    }

    /// The single value `sql` selects, read past the store.
    pub async fn scalar<T: TryGetable>(&self, sql: &str) -> T {
        let backend = self.raw.get_database_backend();
        let row = self
            .raw
            .query_one_raw(Statement::from_string(backend, sql))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{sql} returned no row"));
        row.try_get_by_index(0).unwrap()
    }

    /// Runs `sql` on a connection of its own, past the store.
    pub async fn execute(&self, sql: &str) -> Result<(), DbErr> {
        self.raw.execute_unprepared(sql).await.map(|_| ())
    }

    pub async fn count(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT COUNT(*) FROM {table}")).await
    }

    pub async fn chain(&self) -> Vec<ChainedEvent> {
        self.store.audit_chain().await.unwrap()
    }

    /// Inserts an APPROVED enrollment reserving `serial` and returns its pk.
    pub async fn approved(&self, caller: &str, request_id: &str, serial: &Serial) -> i64 {
        let request = request(
            caller,
            request_id,
            RequestState::Approved,
            Some(serial.clone()),
        );
        let audit = vec![event("request.approved", &subject(caller, request_id))];
        match self
            .store
            .insert_request(request, None, audit)
            .await
            .unwrap()
        {
            Inserted::New(pk) => pk,
            Inserted::Duplicate(r) => panic!("{request_id} already exists: {r:?}"),
        }
    }

    /// `move_request` with one audit event named `action`.
    pub async fn step(&self, pk: i64, from: Step, to: Step, now: i64, action: &str) -> bool {
        let audit = vec![event(action, &format!("{:?}->{:?}", from.0, to.0))];
        let moved = self.store.move_request(pk, from, to, at(now), audit);
        moved.await.unwrap()
    }

    /// `complete_issuance` of [`certificate`]`(serial)`, with one audit event per action.
    pub async fn issue(
        &self,
        pk: i64,
        serial: &Serial,
        supersedes: Option<&Serial>,
        actions: &[&str],
    ) -> Result<(), StoreError> {
        let audit = actions.iter().map(|a| event(a, &serial.to_hex())).collect();
        let supersedes = supersedes.cloned();
        let issued = self
            .store
            .complete_issuance(pk, certificate(serial), supersedes, audit);
        issued.await
    }
}

/// The store's health is probed often, so that a test sees it recover promptly.
pub const PROBE: ProbeSettings = ProbeSettings {
    interval: std::time::Duration::from_millis(50),
    timeout: std::time::Duration::from_secs(2),
};

async fn connect(url: &str) -> SqlStore {
    let metrics = mintgate_store::StoreMetrics::default();
    let store = SqlStore::connect_with_metrics(url, metrics, PROBE)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

/// A request's state and serial, as `move_request` takes them.
pub type Step = (RequestState, Option<Serial>);

/// `secs` after a fixed instant; whole seconds, the precision the store keeps.
pub fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_000_000 + secs).unwrap()
}

/// A distinct serial for each `n` in 1..=127.
pub fn serial(n: u8) -> Serial {
    Serial::from_random([n; 17])
}

pub fn subject(caller: &str, request_id: &str) -> String {
    format!("request:{caller}/{request_id}")
}

pub fn request(
    caller: &str,
    request_id: &str,
    state: RequestState,
    serial: Option<Serial>,
) -> NewRequest {
    NewRequest {
        caller: caller.to_owned(),
        request_id: request_id.to_owned(),
        kind: RequestKind::Enroll,
        payload_hash: format!("{:064x}", request_id.len()),
        state,
        reason: None,
        spiffe_id: WORKLOAD.to_owned(),
        serial,
        token_id: None,
        token_expires_at: None,
        decision: None,
        now: at(0),
        risk: None,
        hold: None,
    }
}

/// An event with every field filled, so a field the store drops shows up. The store numbers it.
pub fn event(action: &str, subject: &str) -> AuditEvent {
    AuditEvent {
        seq: 0,
        at: at(0).unix_timestamp(),
        actor: NODE.to_owned(),
        action: action.to_owned(),
        subject: subject.to_owned(),
        spiffe_id: Some(WORKLOAD.to_owned()),
        dns_names: vec!["api.billing.internal".to_owned(), "billing".to_owned()],
        key_type: Some("P-256".to_owned()),
        not_before: Some(at(-60).unix_timestamp()),
        not_after: Some(at(3600).unix_timestamp()),
        policy_version: Some("7".to_owned()),
        policy_rule: Some("dev-nodes".to_owned()),
        request_id: Some("r-1".to_owned()),
        detail: Some("VERIFIED->APPROVED".to_owned()),
    }
}

/// The key id of the CA the store tests pretend signed their certificates.
pub const ISSUER: &str = "7bfd";

pub fn certificate(serial: &Serial) -> NewCertificate {
    NewCertificate {
        serial: serial.clone(),
        spiffe_id: WORKLOAD.to_owned(),
        key_type: "P-256".to_owned(),
        not_before: at(-60),
        not_after: at(3600),
        der: vec![0x30, 0x82, 0x00, serial.as_bytes()[0]],
        chain_pem: format!("-----BEGIN CERTIFICATE-----\n{serial}\n-----END CERTIFICATE-----\n"),
        issued_at: at(1),
        issuer_key_id: ISSUER.to_owned(),
    }
}

pub fn actions(chain: &[ChainedEvent]) -> Vec<&str> {
    chain.iter().map(|e| e.event.action.as_str()).collect()
}
