//! Change control (DESIGN §11, §13): every policy version the server ever had, which one was
//! active when, the two-person proposals that change policy, role bindings and identity blocks,
//! and the role bindings in force. Policy versions and activations are immutable: the database
//! refuses to update or delete them, as it does for the audit trail. Expand-only: new tables,
//! nothing a previous release reads is changed.

use sea_orm_migration::prelude::async_trait;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::{DbErr, MigrationName, MigrationTrait, SchemaManager};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261203_000006_governance"
    }
}

const TABLES: &str = r#"
-- A policy directory's text, keyed by its version (SHA-256 of the schema and sorted policy
-- texts). `files` is a JSON array of {"name", "text"} sorted by name.
CREATE TABLE policy_versions (
    version TEXT PRIMARY KEY,
    schema_text TEXT NOT NULL,
    files TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

-- Which version became active when, and on whose approval: the newest row is the active policy.
-- The first row is the bootstrap (the policy directory the first server started with).
CREATE TABLE policy_activations (
    seq BIGINT PRIMARY KEY,
    version TEXT NOT NULL REFERENCES policy_versions (version),
    proposal_id TEXT,
    label TEXT,
    activated_at BIGINT NOT NULL,
    activated_by TEXT NOT NULL
);

-- Two-person changes. kind: POLICY (policy_version, base_version = the version active when
-- proposed, label), ROLE_BINDING (subject = the operator, role, valid_until, remove) or UNBLOCK
-- (subject = the identity). state: OPEN, APPLIED or SUPERSEDED (an OPEN proposal past
-- expires_at reads as expired).
CREATE TABLE proposals (
    id TEXT PRIMARY KEY,
    author TEXT NOT NULL,
    request_id TEXT NOT NULL,
    payload_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    policy_version TEXT REFERENCES policy_versions (version),
    base_version TEXT,
    label TEXT,
    subject TEXT,
    role TEXT,
    valid_until BIGINT,
    remove_role BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    approved_by TEXT,
    approved_at BIGINT,
    superseded_by TEXT,
    UNIQUE (author, request_id)
);
CREATE INDEX proposals_state ON proposals (state, created_at);

-- The operator roles in force. History is in the audit trail (role.granted, role.removed).
CREATE TABLE role_bindings (
    operator TEXT NOT NULL,
    role TEXT NOT NULL,
    valid_until BIGINT,
    granted_by TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    proposal_id TEXT,
    PRIMARY KEY (operator, role)
);
"#;

const SQLITE_GUARDS: &str = r#"
CREATE TRIGGER policy_versions_no_update BEFORE UPDATE ON policy_versions
BEGIN SELECT RAISE(ABORT, 'policy_versions is immutable'); END;
CREATE TRIGGER policy_versions_no_delete BEFORE DELETE ON policy_versions
BEGIN SELECT RAISE(ABORT, 'policy_versions is immutable'); END;
CREATE TRIGGER policy_activations_no_update BEFORE UPDATE ON policy_activations
BEGIN SELECT RAISE(ABORT, 'policy_activations is append-only'); END;
CREATE TRIGGER policy_activations_no_delete BEFORE DELETE ON policy_activations
BEGIN SELECT RAISE(ABORT, 'policy_activations is append-only'); END;
"#;

const POSTGRES_GUARDS: &str = r#"
CREATE FUNCTION policy_history_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION '% is immutable', TG_TABLE_NAME; END; $$;
CREATE TRIGGER policy_versions_immutable BEFORE UPDATE OR DELETE ON policy_versions
FOR EACH ROW EXECUTE FUNCTION policy_history_immutable();
CREATE TRIGGER policy_versions_no_truncate BEFORE TRUNCATE ON policy_versions
FOR EACH STATEMENT EXECUTE FUNCTION policy_history_immutable();
CREATE TRIGGER policy_activations_immutable BEFORE UPDATE OR DELETE ON policy_activations
FOR EACH ROW EXECUTE FUNCTION policy_history_immutable();
CREATE TRIGGER policy_activations_no_truncate BEFORE TRUNCATE ON policy_activations
FOR EACH STATEMENT EXECUTE FUNCTION policy_history_immutable();
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

    /// The policy history is evidence (DESIGN §17): never rolled back.
    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the policy history is evidence and is never rolled back".into(),
        ))
    }
}
