//! What a policy decision costs: `cargo bench -p mintgate-domain --bench decision`.
//!
//! Times `Policy::decide` (building the Cedar request and entities, then authorizing) and
//! `Policy::authorize` (an operator RPC) with the dev policy and with the dev policy plus 200
//! more permits (fewer decisions: each costs more), and `Policy::load` (parse, checks, strict
//! validation, hashing) of each. One thread; the figures are printed, never asserted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use mintgate_domain::policy::{
    Actor, DecisionInput, Operation, OperationInput, Policy, PolicyFile, PolicySource, Principal,
    Target,
};
use mintgate_domain::risk::RiskAssessment;
use mintgate_domain::{KeyType, SpiffeId, TrustDomain};

/// Decisions timed per case with the dev policy; a fiftieth of that with the large one.
const DECISIONS: u32 = 100_000;
const LOADS: u32 = 20;

fn main() {
    let td = TrustDomain::parse("dev.mintgate.local").unwrap();
    let id = |path: &str| SpiffeId::parse(&format!("spiffe://dev.mintgate.local{path}")).unwrap();
    let (node, web, joined, other) = (
        id("/node/worker-1"),
        id("/workload/ns/web"),
        id("/joined/laptop"),
        id("/payments/api"),
    );
    let dns = ["web.svc.cluster.local".to_owned()];
    let no_risk = RiskAssessment::none();
    let ask = |wanted, dns_names, join_token| DecisionInput {
        principal: Principal::Node(&node),
        spiffe_id: wanted,
        ttl: Some(Duration::from_secs(600)),
        key_type: KeyType::EcdsaP256,
        dns_names,
        attestors: &["node_cert"],
        join_token,
        kubernetes: None,
        risk: &no_risk,
    };
    let cases = [
        (
            "granted (dev-nodes, one DNS name)",
            ask(&web, &dns[..], false),
        ),
        ("granted (join-token)", ask(&joined, &[], true)),
        ("refused (no permit)", ask(&other, &[], false)),
    ];

    let (operator, issuer, auditor) = (
        id("/operator/alice"),
        ["issuer".to_owned()],
        ["auditor".to_owned()],
    );
    let join_token = |roles| OperationInput {
        actor: Actor::Operator {
            id: &operator,
            roles,
        },
        operation: Operation::CreateJoinToken,
        target: Target::Identity(&joined),
    };
    let operations = [
        (
            "CheckStatus by a workload (allowed)",
            OperationInput {
                actor: Actor::Workload(&web),
                operation: Operation::CheckStatus,
                target: Target::TrustDomain(&td),
            },
        ),
        (
            "CreateJoinToken by an issuer (allowed)",
            join_token(&issuer[..]),
        ),
        (
            "CreateJoinToken by an auditor (refused)",
            join_token(&auditor[..]),
        ),
    ];

    let mut large = PolicySource::dev();
    large.files.push(PolicyFile {
        name: "many.cedar".to_owned(),
        text: (0..200)
            .map(|i| {
                format!(
                    "@id(\"team-{i}\")\n@max_ttl_seconds(\"900\")\npermit (principal, action in \
                     [Action::\"Issue\", Action::\"Renew\"], resource)\nwhen {{ resource.path like \
                     \"/team-{i}/*\" && [\"P-256\", \"Ed25519\"].contains(context.key_type) && \
                     context.dns_names.isEmpty() }};\n"
                )
            })
            .collect(),
    });

    println!("policy decisions, one thread:");
    for (name, source, decisions) in [
        ("dev policy (15 policies)", PolicySource::dev(), DECISIONS),
        ("dev + 200 permits", large, DECISIONS / 50),
    ] {
        let started = Instant::now();
        for _ in 0..LOADS {
            black_box(Policy::load(black_box(&source), Some(&td)).unwrap());
        }
        let load = started.elapsed() / LOADS;
        let policy = Policy::load(&source, Some(&td)).unwrap();
        println!(
            "  {name}: load {:.2} ms; {decisions} decisions per case",
            load.as_secs_f64() * 1e3
        );
        for (case, input) in &cases {
            time(case, decisions, || {
                let _ = black_box(policy.decide(black_box(input)));
            });
        }
        for (case, input) in &operations {
            time(case, decisions, || {
                let _ = black_box(policy.authorize(black_box(input)));
            });
        }
    }
}

/// Runs `decide` a tenth of `decisions` times to warm up, then times `decisions` runs.
fn time(case: &str, decisions: u32, mut decide: impl FnMut()) {
    for _ in 0..decisions / 10 {
        decide();
    }
    let started = Instant::now();
    for _ in 0..decisions {
        decide();
    }
    let each = started.elapsed() / decisions;
    println!(
        "    {case}: {:.1} µs per decision ({:.0}/s)",
        each.as_secs_f64() * 1e6,
        1.0 / each.as_secs_f64()
    );
}
