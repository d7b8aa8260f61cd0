//! Mintgate's schema, one migration per change, append-only: never edit a migration that has
//! shipped; add a new one. Written as SQL per backend so that types, constraints and the audit
//! triggers say exactly what the database enforces.

use sea_orm_migration::MigrationTrait;
pub use sea_orm_migration::MigratorTrait;

mod m20261125_000001_initial;
mod m20261125_000002_revocation;
mod m20261203_000003_store_probe;
mod m20261203_000004_lease_holder;
mod m20261203_000005_policy_decisions;
mod m20261203_000006_governance;
mod m20261203_000007_audit_checkpoints;
mod m20261203_000008_holds;
mod m20261207_000009_risk_counts;
mod m20261207_000010_authorities;

/// Runs Mintgate's migrations (`Migrator::up(&db, None)`).
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_initial::Migration),
            Box::new(m20261125_000002_revocation::Migration),
            Box::new(m20261203_000003_store_probe::Migration),
            Box::new(m20261203_000004_lease_holder::Migration),
            Box::new(m20261203_000005_policy_decisions::Migration),
            Box::new(m20261203_000006_governance::Migration),
            Box::new(m20261203_000007_audit_checkpoints::Migration),
            Box::new(m20261203_000008_holds::Migration),
            Box::new(m20261207_000009_risk_counts::Migration),
            Box::new(m20261207_000010_authorities::Migration),
        ]
    }
}
