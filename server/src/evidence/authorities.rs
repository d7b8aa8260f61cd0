//! `authorities.json`: every CA the registry knows, with its certificates and each state it
//! entered: when, by which applied proposal, approved by whom, and where that approval is in
//! the audit chain. Built from the registry's timestamps and the applied CA proposals (a step
//! takes effect in its approving transaction, so its proposal's `approved_at` is the step's
//! time).

use std::collections::HashMap;

use mintgate_domain::authority::{CaAction, CaRecord};
use mintgate_domain::governance::{Change, ProposalRecord, ProposalState};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::export::ExportError;
use super::{AuthorityLine, Transition};

/// The lines of `authorities.json`, in the registry's order (newest first).
pub(super) fn lines(
    cas: &[CaRecord],
    proposals: &[ProposalRecord],
    approvals: &HashMap<String, i64>,
) -> Result<Vec<AuthorityLine>, ExportError> {
    let applied: Vec<&ProposalRecord> = proposals
        .iter()
        .filter(|p| p.state == ProposalState::Applied)
        .collect();
    // The applied proposal approved at `at` that `fits`.
    let find = |at: OffsetDateTime, fits: &dyn Fn(&Change) -> bool| {
        applied
            .iter()
            .find(|p| p.approved_at == Some(at) && fits(&p.change))
            .copied()
    };
    let ca_step = |action: CaAction, key: &str| {
        let key = key.to_owned();
        move |c: &Change| matches!(c, Change::Ca { action: a, key_id, .. } if *a == action && *key_id == key)
    };
    cas.iter()
        .map(|ca| {
            let key = ca.key_id.as_str();
            let mut history = Vec::new();
            let mut entered =
                |state: &str, at: Option<OffsetDateTime>, by: Option<&ProposalRecord>| {
                    let Some(at) = at else {
                        return Ok::<_, ExportError>(());
                    };
                    history.push(Transition {
                        state: state.to_owned(),
                        at: at.format(&Rfc3339)?,
                        proposal: by.map(|p| p.id.clone()),
                        approved_by: by.and_then(|p| p.approved_by.clone()),
                        approval_seq: by.and_then(|p| approvals.get(&p.id).copied()),
                    });
                    Ok(())
                };
            let prepared = ca
                .proposal_id
                .as_deref()
                .and_then(|id| applied.iter().find(|p| p.id == id).copied());
            entered("PREPARED", Some(ca.prepared_at), prepared)?;
            // The CA a server first started with was active from its start, by no proposal;
            // any other by its own step, or as the successor of a revoked CA.
            let first = ca.proposal_id.is_none() && ca.activated_at == Some(ca.prepared_at);
            let activated = ca.activated_at.filter(|_| !first).and_then(|at| {
                find(at, &ca_step(CaAction::Activate, key)).or_else(|| {
                    find(
                        at,
                        &|c| matches!(c, Change::RevokeIssuer { key_id, .. } if key_id != key),
                    )
                })
            });
            entered("ACTIVE", ca.activated_at, activated)?;
            let retiring = ca.retiring_at.and_then(|at| {
                find(at, &|c| {
                    matches!(
                        c,
                        Change::Ca {
                            action: CaAction::Activate,
                            ..
                        }
                    )
                })
            });
            entered("RETIRING", ca.retiring_at, retiring)?;
            let retired = ca
                .retired_at
                .and_then(|at| find(at, &ca_step(CaAction::Retire, key)));
            entered("RETIRED", ca.retired_at, retired)?;
            let revoked = ca.revoked_at.and_then(|at| {
                find(
                    at,
                    &|c| matches!(c, Change::RevokeIssuer { key_id, .. } if key_id == key),
                )
            });
            entered("REVOKED", ca.revoked_at, revoked)?;
            Ok(AuthorityLine {
                key_id: ca.key_id.clone(),
                subject: ca.subject.clone(),
                state: ca.state.as_str().to_owned(),
                serial: ca.serial.clone(),
                not_after: ca.not_after.format(&Rfc3339)?,
                chain_pem: ca.chain_pem.clone(),
                history,
            })
        })
        .collect()
}
