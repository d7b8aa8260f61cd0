//! Part of benchmark 6's floor: one issuance's policy decision alone (`Policy::decide`: Cedar
//! asked about its own action, and about `Action::"Hold"` only when a policy can match it,
//! which none of this one does), on one thread, with the policy benchmark 6's server runs and
//! an Enroll like its clients': a node asking for `/workload/bench-<i>`, vouched for by its
//! certificate, no DNS names, no risk signal.

use std::time::Instant;

use anyhow::ensure;
use mintgate_domain::policy::{DecisionInput, Policy, Principal};
use mintgate_domain::risk::RiskAssessment;
use mintgate_domain::{KeyType, SpiffeId, TrustDomain};
use mintgate_tests::TRUST_DOMAIN;

/// Wall µs per decision over `decisions` decisions on this thread (as benchmark 1 measures the
/// crypto: the thread has a core to itself).
pub fn run(decisions: usize) -> anyhow::Result<f64> {
    let td = TrustDomain::parse(TRUST_DOMAIN)?;
    let policy = Policy::load(&crate::child::source_without_holds(), Some(&td))?;
    let node = SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}/node/cpu-0"))?;
    let ids = (0..decisions.clamp(1, 1000))
        .map(|i| SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}/workload/bench-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let risk = RiskAssessment::none();
    let start = Instant::now();
    for i in 0..decisions {
        let grant = policy.decide(&DecisionInput {
            principal: Principal::Node(&node),
            spiffe_id: &ids[i % ids.len()],
            ttl: None,
            key_type: KeyType::EcdsaP256,
            dns_names: &[],
            attestors: &["node_cert"],
            join_token: false,
            kubernetes: None,
            risk: &risk,
        })?;
        ensure!(grant.hold.is_none(), "the bench's policy held an issuance");
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / decisions.max(1) as f64)
}
