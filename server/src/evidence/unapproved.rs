//! Which CA state changes in `authorities.json` name no proposal without a reason to.
//!
//! Every rotation step, and every RevokeIssuer, takes effect in the transaction that approves
//! its proposal, so the export names that proposal. Two changes are made by no proposal, and
//! each leaves its own record:
//!
//! - the CA a server first started with is PREPARED and ACTIVE at once, before any other CA;
//! - a CA adopted from `[ca]` after the ACTIVE one ran out is PREPARED and ACTIVE at once, with
//!   a `ca.adopted` event in the audit chain, and the CA it replaced enters RETIRING then.
//!
//! Anything else without a proposal is a state change no operator approved.

use std::collections::HashSet;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::AuthorityLine;

/// What the audit chain says about adoptions.
pub(super) struct Adoptions {
    /// The key ids of the CAs that `ca.adopted` events name.
    pub(super) adopted: HashSet<String>,
    /// When the chain's last event happened (unix seconds): a later adoption is not in it.
    pub(super) chain_ends: Option<i64>,
}

/// The first CA with a state change that names no proposal and is neither of the two above,
/// or whose time does not parse, with what is wrong.
pub(super) fn unapproved(
    authorities: &[AuthorityLine],
    chain: &Adoptions,
) -> Option<(String, String)> {
    let mut times = Vec::with_capacity(authorities.len());
    for ca in authorities {
        let parsed: Result<Vec<_>, _> = ca
            .history
            .iter()
            .map(|t| OffsetDateTime::parse(&t.at, &Rfc3339).map_err(|_| t))
            .collect();
        match parsed {
            Ok(parsed) => times.push(parsed),
            Err(t) => {
                let problem = format!("{} at {} is not an RFC 3339 time", t.state, t.at);
                return Some((ca.key_id.clone(), problem));
            }
        }
    }
    // The CAs PREPARED and ACTIVE at once by no proposal, and that instant.
    let at_once: Vec<(&str, OffsetDateTime)> = authorities
        .iter()
        .zip(&times)
        .filter(|(ca, _)| active_at_once(ca))
        .map(|(ca, times)| (ca.key_id.as_str(), times[0]))
        .collect();
    // The one a server first started with: PREPARED before any other CA.
    let first = times.iter().filter_map(|t| t.first()).min();
    let started = at_once
        .iter()
        .find(|(_, when)| Some(when) == first)
        .map(|(key, _)| *key);
    for (ca, times) in authorities.iter().zip(&times) {
        let problem = |p: String| Some((ca.key_id.clone(), p));
        let own = at_once.iter().find(|(key, _)| *key == ca.key_id);
        if let Some((key, when)) = own
            && started != Some(*key)
            && chain
                .chain_ends
                .is_some_and(|end| when.unix_timestamp() <= end)
            && !chain.adopted.contains(*key)
        {
            let why = "it is PREPARED and ACTIVE at once by no proposal, and no ca.adopted \
                       event names it";
            return problem(why.to_owned());
        }
        let skip = if own.is_some() { 2 } else { 0 };
        for (step, when) in ca.history.iter().zip(times).skip(skip) {
            let replaced = || {
                step.state == "RETIRING"
                    && at_once
                        .iter()
                        .any(|(key, w)| *key != ca.key_id && w == when)
            };
            if step.proposal.is_none() && !replaced() {
                return problem(format!("{} at {} names no proposal", step.state, step.at));
            }
        }
    }
    None
}

/// PREPARED and ACTIVE at the same instant, by no proposal.
fn active_at_once(ca: &AuthorityLine) -> bool {
    match ca.history.as_slice() {
        [prepared, active, ..] => {
            prepared.state == "PREPARED"
                && active.state == "ACTIVE"
                && prepared.at == active.at
                && prepared.proposal.is_none()
                && active.proposal.is_none()
        }
        _ => false,
    }
}
