//! Risk counters (DESIGN §12): what the risk signals count, kept as it happens so that assessing
//! a request reads a few dozen rows whatever the caller's history. Requests per caller and per
//! identity by minute (the last hour) and by hour (the last day); each pair of node and identity
//! with when the node last asked for it and whether it was ever allowed; the identity's recent
//! certificates by issuance time. The indexes the counts replace go. Expand-only: new tables and
//! indexes, so a server that does not know them runs beside one that does (its requests are
//! simply not counted).

use sea_orm_migration::prelude::async_trait;
use sea_orm_migration::sea_orm::ConnectionTrait;
use sea_orm_migration::{DbErr, MigrationName, MigrationTrait, SchemaManager};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000009_risk_counts"
    }
}

const UP: &str = r#"
-- Enroll and Renew requests of one caller (scope 'caller') or for one SPIFFE ID (scope
-- 'identity') in the bucket [bucket * span, (bucket + 1) * span) seconds, span 60 or 3600.
CREATE TABLE risk_counts (
    scope TEXT NOT NULL,
    subject TEXT NOT NULL,
    span INTEGER NOT NULL,
    bucket BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    PRIMARY KEY (scope, subject, span, bucket)
);
CREATE INDEX risk_counts_age ON risk_counts (span, bucket);

-- Each identity a node enrolled for: when it last asked, and whether policy ever allowed it.
CREATE TABLE node_identities (
    caller TEXT NOT NULL,
    spiffe_id TEXT NOT NULL,
    last_asked_at BIGINT NOT NULL,
    allowed BOOLEAN NOT NULL,
    PRIMARY KEY (caller, spiffe_id)
);
CREATE INDEX node_identities_recent ON node_identities (caller, last_asked_at);

CREATE INDEX certificates_spiffe_id_issued ON certificates (spiffe_id, issued_at);
DROP INDEX requests_caller_created;
DROP INDEX requests_spiffe_id_created;
"#;

const DOWN: &str = r#"
CREATE INDEX requests_spiffe_id_created ON requests (spiffe_id, created_at);
CREATE INDEX requests_caller_created ON requests (caller, created_at);
DROP INDEX certificates_spiffe_id_issued;
DROP TABLE node_identities;
DROP TABLE risk_counts;
"#;

#[async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)] // the trait itself elides SchemaManager's lifetime
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(UP).await?;
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
