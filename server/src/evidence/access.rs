//! `mintgate evidence access-review` (issue 14, AC-2/AC-6 reviews): every role binding in force
//! or expired, when it ends, and when its holder last acted, from the database. The audit trail
//! records who acted, not which role allowed it, except for `admin`: its use is the
//! `operator.break_glass` event. So an `admin` binding's last use is the holder's last
//! break-glass event, and any other binding's is the holder's last audited action.

use std::collections::HashMap;
use std::fmt;

use mintgate_domain::governance::{ADMIN_ROLE, GovernanceStore as _, RoleBinding};
use mintgate_domain::store::{CertificateStore as _, StoreError};
use mintgate_store::SqlStore;
use time::OffsetDateTime;

/// The review: one row per binding, by operator and role.
#[derive(Debug, Clone)]
pub struct AccessReview {
    pub now: OffsetDateTime,
    pub rows: Vec<(RoleBinding, Option<LastUse>)>,
}

/// The newest audit event that counts as a use of a binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastUse {
    pub at: i64,
    pub seq: i64,
    pub action: String,
}

/// Reads the bindings and the audit trail.
pub async fn access_review(
    store: &SqlStore,
    now: OffsetDateTime,
) -> Result<AccessReview, StoreError> {
    let bindings = store.role_bindings().await?;
    let mut last_any: HashMap<String, LastUse> = HashMap::new();
    let mut last_break_glass: HashMap<String, LastUse> = HashMap::new();
    for chained in store.audit_chain().await? {
        let e = chained.event;
        let used = LastUse {
            at: e.at,
            seq: e.seq,
            action: e.action.clone(),
        };
        if e.action == "operator.break_glass" {
            last_break_glass.insert(e.actor.clone(), used.clone());
        }
        last_any.insert(e.actor, used);
    }
    let rows = bindings
        .into_iter()
        .map(|b| {
            let used = if b.role == ADMIN_ROLE {
                last_break_glass.get(&b.operator)
            } else {
                last_any.get(&b.operator)
            };
            let used = used.cloned();
            (b, used)
        })
        .collect();
    Ok(AccessReview { now, rows })
}

impl fmt::Display for AccessReview {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| t.unix_timestamp().to_string())
        };
        let at = |secs: i64| {
            OffsetDateTime::from_unix_timestamp(secs).map_or_else(|_| secs.to_string(), time)
        };
        writeln!(
            f,
            "operator\trole\tvalid until\tgranted by\tgranted at\tlast use"
        )?;
        for (b, used) in &self.rows {
            let until = match b.valid_until {
                None => "no end".to_owned(),
                Some(t) if t <= self.now => format!("{} (expired)", time(t)),
                Some(t) => time(t),
            };
            let used = match used {
                None => "never".to_owned(),
                Some(u) => format!("{} ({}, seq {})", at(u.at), u.action, u.seq),
            };
            writeln!(
                f,
                "{}\t{}\t{until}\t{}\t{}\t{used}",
                b.operator,
                b.role,
                b.granted_by,
                time(b.granted_at)
            )?;
        }
        Ok(())
    }
}
