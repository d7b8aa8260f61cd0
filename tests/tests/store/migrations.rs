//! Expand, then contract (`migrations/README.md`): the schema after every migration still
//! serves the previous release, which runs beside the new one during a rolling upgrade.

use std::collections::BTreeMap;

use mintgate_migrations::{Migrator, MigratorTrait};
use mintgate_tests::db::TestDatabase;
use mintgate_tests::{Backend, both_backends};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

/// How many migrations the previous release shipped (the last release that landed before this
/// one: `m20261203_000007_audit_checkpoints`). Bump it when a release ships.
const PREVIOUS_RELEASE: u32 = 7;

/// A column as the old code sees it: may it be NULL, has it a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Column {
    nullable: bool,
    default: bool,
}

type Schema = BTreeMap<(String, String), Column>;

async fn schema(db: &DatabaseConnection) -> Schema {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Sqlite => {
            "SELECT m.name, p.name, p.\"notnull\" = 0 AND p.pk = 0, p.dflt_value IS NOT NULL \
             FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'"
        }
        _ => {
            "SELECT table_name::text, column_name::text, is_nullable = 'YES', \
             column_default IS NOT NULL \
             FROM information_schema.columns WHERE table_schema = current_schema()"
        }
    };
    let rows = db
        .query_all_raw(Statement::from_string(backend, sql.to_owned()))
        .await
        .unwrap();
    rows.into_iter()
        .map(|row| {
            let key = (
                row.try_get_by_index(0).unwrap(),
                row.try_get_by_index(1).unwrap(),
            );
            let column = Column {
                nullable: row.try_get_by_index(2).unwrap(),
                default: row.try_get_by_index(3).unwrap(),
            };
            (key, column)
        })
        .filter(|((table, _), _)| table != "seaql_migrations")
        .collect()
}

both_backends!(
    every_migration_since_the_previous_release_only_expands,
    expand_only
);
async fn expand_only(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let conn = Database::connect(&db.url).await.unwrap();
    Migrator::up(&conn, Some(PREVIOUS_RELEASE)).await.unwrap();
    let before = schema(&conn).await;
    assert!(!before.is_empty());
    Migrator::up(&conn, None).await.unwrap();
    let after = schema(&conn).await;

    for (key, old) in &before {
        let new = after
            .get(key)
            .unwrap_or_else(|| panic!("{key:?} is gone: drop it one release after its last use"));
        assert!(
            new.nullable || !old.nullable,
            "{key:?} became NOT NULL: the previous release may still write NULL there"
        );
    }
    let old_tables: Vec<&String> = before.keys().map(|(table, _)| table).collect();
    for (key, new) in &after {
        if !before.contains_key(key) && old_tables.contains(&&key.0) {
            assert!(
                new.nullable || new.default,
                "{key:?} was added NOT NULL without a default: the previous release's INSERTs \
                 do not name it"
            );
        }
    }
    conn.close().await.unwrap();
    db.drop_database().await;
}
