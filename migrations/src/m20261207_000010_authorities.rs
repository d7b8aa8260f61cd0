//! The CA lifecycle (DESIGN §14): every issuing CA the servers know, with its state
//! (PREPARED, ACTIVE, RETIRING, RETIRED, REVOKED) and when it entered each; which CA issued each
//! certificate; revocation-log entries that revoke a whole CA; and the payload of a proposal too
//! large for its columns (a CA's chain). Expand-only for every column a previous release reads:
//! new tables, new nullable columns, a column with a default. The log's serial no longer has to
//! name an issued certificate (a CA's own serial is not one), which only loosens it; SQLite
//! rebuilds the table for that, PostgreSQL drops the constraint.

use sea_orm_migration::prelude::async_trait;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::{DbErr, MigrationName, MigrationTrait, SchemaManager};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000010_authorities"
    }
}

const UP: &str = r#"
CREATE TABLE authorities (
    key_id TEXT PRIMARY KEY NOT NULL,
    state TEXT NOT NULL,
    subject TEXT NOT NULL,
    -- The CA certificate, then the certificates above it up to the root, PEM.
    chain_pem TEXT NOT NULL,
    -- Where the key is: a file path or a PKCS#11 key label, per [ca] backend.
    key_ref TEXT NOT NULL,
    serial TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    prepared_at BIGINT NOT NULL,
    activated_at BIGINT,
    retiring_at BIGINT,
    retired_at BIGINT,
    revoked_at BIGINT,
    proposal_id TEXT
);
ALTER TABLE certificates ADD COLUMN issuer_key_id TEXT;
CREATE INDEX certificates_issuer ON certificates (issuer_key_id, not_after);
ALTER TABLE proposals ADD COLUMN payload TEXT;
"#;

/// SQLite cannot drop a foreign key: the log is copied into a table without it.
const SQLITE_LOG: &str = r#"
CREATE TABLE revocations_new (
    seq BIGINT PRIMARY KEY NOT NULL,
    serial TEXT NOT NULL UNIQUE,
    spiffe_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    revoked_at BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    issuer_key_id TEXT NOT NULL,
    revoked_by TEXT NOT NULL,
    request_pk BIGINT REFERENCES requests (pk),
    issuer BOOLEAN NOT NULL DEFAULT FALSE
);
INSERT INTO revocations_new (seq, serial, spiffe_id, reason, revoked_at, not_after,
    issuer_key_id, revoked_by, request_pk)
SELECT seq, serial, spiffe_id, reason, revoked_at, not_after, issuer_key_id, revoked_by,
    request_pk FROM revocations;
DROP TABLE revocations;
ALTER TABLE revocations_new RENAME TO revocations;
CREATE INDEX revocations_request_pk ON revocations (request_pk);
CREATE INDEX revocations_not_after ON revocations (not_after);
CREATE INDEX revocations_issuers ON revocations (issuer_key_id) WHERE issuer;
"#;

const POSTGRES_LOG: &str = r#"
ALTER TABLE revocations DROP CONSTRAINT IF EXISTS revocations_serial_fkey;
ALTER TABLE revocations ALTER COLUMN request_pk DROP NOT NULL;
ALTER TABLE revocations ADD COLUMN issuer BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX revocations_issuers ON revocations (issuer_key_id) WHERE issuer;
"#;

const DOWN: &str = r#"
DROP INDEX revocations_issuers;
ALTER TABLE revocations DROP COLUMN issuer;
ALTER TABLE proposals DROP COLUMN payload;
DROP INDEX certificates_issuer;
ALTER TABLE certificates DROP COLUMN issuer_key_id;
DROP TABLE authorities;
"#;

#[async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)] // the trait itself elides SchemaManager's lifetime
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let log = match db.get_database_backend() {
            DbBackend::Sqlite => SQLITE_LOG,
            DbBackend::Postgres => POSTGRES_LOG,
            other => {
                return Err(DbErr::Migration(format!(
                    "unsupported database backend {other:?}"
                )));
            }
        };
        db.execute_unprepared(UP).await?;
        db.execute_unprepared(log).await?;
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(DOWN).await?;
        Ok(())
    }
}
