//! Signed audit checkpoints (DESIGN §17): now and then the server signs the audit chain's head
//! (seq, hash, time) with an audit key of its own, so that a rewrite of the whole chain, or a cut
//! of its newest events, no longer verifies. `audit_keys` publishes the public keys that sign
//! them, so that a verifier needs nothing else. Both tables are append-only like `audit_events`:
//! the database refuses to update or delete their rows. Expand-only: new tables, nothing a
//! previous release reads is changed.

use sea_orm_migration::prelude::async_trait;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::{DbErr, MigrationName, MigrationTrait, SchemaManager};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261203_000007_audit_checkpoints"
    }
}

const TABLES: &str = r#"
-- The public keys that sign checkpoints. key_id: lower-case hex SHA-256 of the SPKI (DER);
-- spki: the SubjectPublicKeyInfo, DER in lower-case hex; algorithm: ED25519 or
-- ECDSA_P256_SHA256 (fixed-length r || s signatures).
CREATE TABLE audit_keys (
    key_id TEXT PRIMARY KEY NOT NULL,
    algorithm TEXT NOT NULL,
    spki TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- One signed checkpoint per audit chain head: the event at seq has hash (lower-case hex); at is
-- unix seconds; signature (lower-case hex) is over the canonical message
-- "mintgate-audit-checkpoint-v1\n{seq}\n{hash}\n{at}\n{key_id}". seq is the key: a second
-- checkpoint of the same head (another replica's) is not written.
CREATE TABLE audit_checkpoints (
    seq BIGINT PRIMARY KEY NOT NULL,
    hash TEXT NOT NULL,
    at BIGINT NOT NULL,
    key_id TEXT NOT NULL REFERENCES audit_keys (key_id),
    signature TEXT NOT NULL
);
"#;

const SQLITE_GUARDS: &str = r#"
CREATE TRIGGER audit_keys_no_update BEFORE UPDATE ON audit_keys
BEGIN SELECT RAISE(ABORT, 'audit_keys is append-only'); END;
CREATE TRIGGER audit_keys_no_delete BEFORE DELETE ON audit_keys
BEGIN SELECT RAISE(ABORT, 'audit_keys is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
"#;

const POSTGRES_GUARDS: &str = r#"
CREATE FUNCTION audit_checkpoints_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END; $$;
CREATE TRIGGER audit_keys_no_update BEFORE UPDATE OR DELETE ON audit_keys
FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_append_only();
CREATE TRIGGER audit_keys_no_truncate BEFORE TRUNCATE ON audit_keys
FOR EACH STATEMENT EXECUTE FUNCTION audit_checkpoints_append_only();
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE OR DELETE ON audit_checkpoints
FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
FOR EACH STATEMENT EXECUTE FUNCTION audit_checkpoints_append_only();
"#;

#[async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)] // the trait itself elides SchemaManager's lifetime
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let guards = match db.get_database_backend() {
            DbBackend::Sqlite => SQLITE_GUARDS,
            DbBackend::Postgres => POSTGRES_GUARDS,
            other => {
                return Err(DbErr::Migration(format!(
                    "unsupported database backend {other:?}"
                )));
            }
        };
        db.execute_unprepared(TABLES).await?;
        db.execute_unprepared(guards).await?;
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    /// Checkpoints are evidence (DESIGN §17): never rolled back.
    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "audit checkpoints are evidence and are never rolled back".into(),
        ))
    }
}
