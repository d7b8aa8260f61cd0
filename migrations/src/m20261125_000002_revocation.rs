//! The revocation registry: a log with commit-ordered sequence numbers, the floor below which the
//! log has been pruned, and identities blocked from issuance.

use sea_orm_migration::prelude::async_trait;
use sea_orm_migration::sea_orm::ConnectionTrait;
use sea_orm_migration::{DbErr, MigrationName, MigrationTrait, SchemaManager};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261125_000002_revocation"
    }
}

/// Portable SQL: `seq` is assigned by the store under the writer lock (head + 1), never by an
/// auto-increment, so sequence numbers become visible strictly in commit order.
const TABLES: &str = r#"
CREATE TABLE revocations (
    seq BIGINT PRIMARY KEY NOT NULL,
    serial TEXT NOT NULL UNIQUE REFERENCES certificates (serial),
    spiffe_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    revoked_at BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    issuer_key_id TEXT NOT NULL,
    revoked_by TEXT NOT NULL,
    request_pk BIGINT NOT NULL REFERENCES requests (pk)
);
CREATE INDEX revocations_request_pk ON revocations (request_pk);
CREATE INDEX revocations_not_after ON revocations (not_after);
CREATE TABLE revocation_floor (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    pruned_through BIGINT NOT NULL
);
INSERT INTO revocation_floor (id, pruned_through) VALUES (1, 0);
CREATE TABLE identity_blocks (
    spiffe_id TEXT PRIMARY KEY NOT NULL,
    reason TEXT NOT NULL,
    blocked_by TEXT NOT NULL,
    blocked_at BIGINT NOT NULL
);
"#;

#[async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)] // the trait itself elides SchemaManager's lifetime
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(TABLES).await?;
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TABLE identity_blocks; DROP TABLE revocation_floor; DROP TABLE revocations;",
            )
            .await?;
        Ok(())
    }
}
