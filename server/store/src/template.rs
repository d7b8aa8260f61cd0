//! Statements built once and run many times with other values.
//!
//! Building a sea-query statement allocates a tree of expressions, and dropping it frees them
//! again: for the read before deciding, a union of six sub-selects, that cost more CPU than
//! running it on PostgreSQL. A [`Template`] is the SQL text built once, with markers where the
//! values go, and a note of which bound value each marker became; a run only fills in values.

use sea_orm::sea_query::{Value, Values};
use sea_orm::{DbBackend, Statement, StatementBuilder};

/// The SQL of a statement and where each of its bound values comes from.
#[derive(Debug)]
pub(crate) struct Template {
    backend: DbBackend,
    sql: String,
    slots: Vec<Slot>,
}

#[derive(Debug)]
enum Slot {
    /// The run's n-th value.
    Param(usize),
    /// A value the statement itself binds (a constant such as a `LIMIT`).
    Fixed(Value),
}

/// The n-th marker of a text value: no SPIFFE ID, caller or request id can equal it.
pub(crate) fn text_marker(n: usize) -> String {
    format!("\u{0}mintgate-parameter-{n}")
}

/// The n-th marker of an integer value, as far from any timestamp as an `i64` goes.
pub(crate) fn int_marker(n: usize) -> i64 {
    i64::MIN + n as i64
}

/// The n-th marker of a count (a `LIMIT`).
pub(crate) fn count_marker(n: usize) -> u64 {
    u64::MAX - n as u64
}

impl Template {
    /// `statement`, built with `markers` where the values go (each made by the marker
    /// functions above, in the order [`Self::statement`] will take the values).
    pub(crate) fn new(
        backend: DbBackend,
        statement: &impl StatementBuilder,
        markers: &[Value],
    ) -> Self {
        let built = backend.build(statement);
        let slots = built
            .values
            .map(|Values(v)| v)
            .unwrap_or_default()
            .into_iter()
            .map(|value| match markers.iter().position(|m| *m == value) {
                Some(n) => Slot::Param(n),
                None => Slot::Fixed(value),
            })
            .collect();
        Self {
            backend,
            sql: built.sql,
            slots,
        }
    }

    /// The statement with `values` in place of the markers.
    pub(crate) fn statement(&self, values: &[Value]) -> Statement {
        let bound = self
            .slots
            .iter()
            .map(|slot| match slot {
                Slot::Param(n) => values[*n].clone(),
                Slot::Fixed(value) => value.clone(),
            })
            .collect();
        Statement {
            sql: self.sql.clone(),
            values: Some(Values(bound)),
            db_backend: self.backend,
        }
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};

    use super::*;

    fn select(name: &str, since: i64) -> sea_orm::sea_query::SelectStatement {
        Query::select()
            .column(Alias::new("a"))
            .from(Alias::new("t"))
            .and_where(Expr::col(Alias::new("name")).eq(name))
            .and_where(Expr::col(Alias::new("at")).gte(since))
            .and_where(Expr::col(Alias::new("other")).eq(name))
            .limit(64)
            .to_owned()
    }

    #[test]
    fn a_run_binds_what_building_would_have_bound() {
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            let markers = [text_marker(0).into(), int_marker(1).into()];
            let template =
                Template::new(backend, &select(&text_marker(0), int_marker(1)), &markers);
            let run = template.statement(&["spiffe://x/y".into(), 1_700_000_000i64.into()]);
            assert_eq!(run, backend.build(&select("spiffe://x/y", 1_700_000_000)));
        }
    }
}
