//! One row the store's health probe updates and commits when no other write has lately, so
//! `/readyz` knows whether the database can still commit (a full disk can refuse writes while
//! it still answers reads).

use sea_orm_migration::prelude::async_trait;
use sea_orm_migration::sea_orm::ConnectionTrait;
use sea_orm_migration::{DbErr, MigrationName, MigrationTrait, SchemaManager};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261203_000003_store_probe"
    }
}

const TABLES: &str = r#"
CREATE TABLE store_probe (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    probes BIGINT NOT NULL
);
INSERT INTO store_probe (id, probes) VALUES (1, 0);
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
            .execute_unprepared("DROP TABLE store_probe;")
            .await?;
        Ok(())
    }
}
