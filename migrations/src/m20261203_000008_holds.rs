//! Risk and holds (DESIGN §12): each Enroll or Renew records its risk assessment, a held request
//! its terms (why, how many approvers, until when), and every approver's vote is kept. Indexes
//! serve the risk signals (a caller's and an identity's recent requests) and the approvers'
//! list of pending holds. Expand-only: nullable columns and a new table, so a server that does
//! not know them runs beside one that does.

use sea_orm_migration::prelude::async_trait;
use sea_orm_migration::sea_orm::ConnectionTrait;
use sea_orm_migration::{DbErr, MigrationName, MigrationTrait, SchemaManager};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261203_000008_holds"
    }
}

const UP: &str = r#"
ALTER TABLE requests ADD COLUMN risk_score INTEGER;
ALTER TABLE requests ADD COLUMN risk_tier TEXT;
ALTER TABLE requests ADD COLUMN risk_signals TEXT;
ALTER TABLE requests ADD COLUMN hold_reason TEXT;
ALTER TABLE requests ADD COLUMN hold_quorum INTEGER;
ALTER TABLE requests ADD COLUMN hold_expires_at BIGINT;
CREATE INDEX requests_caller_created ON requests (caller, created_at);
CREATE INDEX requests_spiffe_id_created ON requests (spiffe_id, created_at);
CREATE INDEX requests_state_expiry ON requests (state, hold_expires_at);

-- One vote per approver per held request: approve (TRUE) or deny (FALSE), with its reason.
CREATE TABLE hold_votes (
    request_pk BIGINT NOT NULL REFERENCES requests (pk),
    operator TEXT NOT NULL,
    approve BOOLEAN NOT NULL,
    reason TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (request_pk, operator)
);
"#;

const DOWN: &str = r#"
DROP TABLE hold_votes;
DROP INDEX requests_state_expiry;
DROP INDEX requests_spiffe_id_created;
DROP INDEX requests_caller_created;
ALTER TABLE requests DROP COLUMN hold_expires_at;
ALTER TABLE requests DROP COLUMN hold_quorum;
ALTER TABLE requests DROP COLUMN hold_reason;
ALTER TABLE requests DROP COLUMN risk_signals;
ALTER TABLE requests DROP COLUMN risk_tier;
ALTER TABLE requests DROP COLUMN risk_score;
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
