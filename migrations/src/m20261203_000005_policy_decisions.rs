//! Which policy decided each request: the policy version (SHA-256 of the Cedar schema and
//! policy texts) and the `@id`s of the policies that determined the decision, comma-separated.
//! Expand-only: both columns are nullable, so a server that does not write them still runs
//! beside one that does; requests decided before this change, and those refused before policy
//! was asked, have neither.

use sea_orm_migration::prelude::async_trait;
use sea_orm_migration::sea_orm::ConnectionTrait;
use sea_orm_migration::{DbErr, MigrationName, MigrationTrait, SchemaManager};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261203_000005_policy_decisions"
    }
}

const UP: &str = r#"
ALTER TABLE requests ADD COLUMN policy_version TEXT;
ALTER TABLE requests ADD COLUMN policy_ids TEXT;
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
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE requests DROP COLUMN policy_ids;\n\
                 ALTER TABLE requests DROP COLUMN policy_version;",
            )
            .await?;
        Ok(())
    }
}
