//! Requests, certificates, join tokens and the append-only audit trail.

use sea_orm_migration::prelude::async_trait;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::{DbErr, MigrationName, MigrationTrait, SchemaManager};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261125_000001_initial"
    }
}

/// Tables in a dialect-neutral form; `{PK}`, `{BYTES}` are filled in per backend.
const TABLES: &str = r#"
CREATE TABLE requests (
    pk {PK},
    caller TEXT NOT NULL,
    request_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    spiffe_id TEXT NOT NULL,
    serial TEXT,
    token_id TEXT,
    token_expires_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT requests_caller_request_id UNIQUE (caller, request_id)
);
CREATE TABLE certificates (
    serial TEXT PRIMARY KEY NOT NULL,
    spiffe_id TEXT NOT NULL,
    state TEXT NOT NULL,
    key_type TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    der {BYTES} NOT NULL,
    chain_pem TEXT NOT NULL,
    request_pk BIGINT NOT NULL REFERENCES requests (pk),
    issued_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX certificates_spiffe_id ON certificates (spiffe_id, state);
CREATE TABLE join_tokens (
    token_id TEXT PRIMARY KEY NOT NULL,
    token_hash TEXT NOT NULL,
    spiffe_id TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    used_by TEXT
);
CREATE TABLE audit_events (
    seq BIGINT PRIMARY KEY NOT NULL,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    spiffe_id TEXT,
    dns_names TEXT NOT NULL,
    key_type TEXT,
    not_before BIGINT,
    not_after BIGINT,
    policy_version TEXT,
    policy_rule TEXT,
    request_id TEXT,
    detail TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
"#;

const SQLITE_AUDIT_GUARDS: &str = r#"
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
"#;

const POSTGRES_AUDIT_GUARDS: &str = r#"
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit_events is append-only'; END; $$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
"#;

#[async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)] // the trait itself elides SchemaManager's lifetime
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let (tables, guards) = match db.get_database_backend() {
            DbBackend::Sqlite => (
                TABLES
                    .replace("{PK}", "INTEGER PRIMARY KEY AUTOINCREMENT")
                    .replace("{BYTES}", "BLOB"),
                SQLITE_AUDIT_GUARDS,
            ),
            DbBackend::Postgres => (
                TABLES
                    .replace("{PK}", "BIGSERIAL PRIMARY KEY")
                    .replace("{BYTES}", "BYTEA"),
                POSTGRES_AUDIT_GUARDS,
            ),
            other => {
                return Err(DbErr::Migration(format!(
                    "unsupported database backend {other:?}"
                )));
            }
        };
        db.execute_unprepared(&tables).await?;
        db.execute_unprepared(guards).await?;
        Ok(())
    }

    /// All or nothing on every backend: a crash mid-migration leaves no half-made schema.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the initial schema holds the audit trail and is never rolled back".into(),
        ))
    }
}
