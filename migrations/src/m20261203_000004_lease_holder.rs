//! Approval leases name their holder: the server instance that took a request to APPROVED and is
//! signing it. A server that restarts is a new instance, so the leases of the one that died can be
//! taken over at once instead of after the lease runs out. Expand-only: the column is nullable and
//! a server that does not know it keeps working (its rows fall back to the time-based lease).

use sea_orm_migration::prelude::async_trait;
use sea_orm_migration::sea_orm::ConnectionTrait;
use sea_orm_migration::{DbErr, MigrationName, MigrationTrait, SchemaManager};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261203_000004_lease_holder"
    }
}

#[async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)] // the trait itself elides SchemaManager's lifetime
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE requests ADD COLUMN lease_holder BIGINT")
            .await?;
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    /// Expand-only: a replica of the previous version may still be running beside this one, and
    /// the column costs it nothing.
    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "lease_holder is expand-only and is never dropped".into(),
        ))
    }
}
