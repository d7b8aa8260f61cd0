//! Operator RPC tests: what each role of the shipped policies may do, what nodes and workloads
//! may do, and that the rules of `decide` (deny by default, forbids win) hold here too.

use super::super::{POLICY_DENIED, PolicyFile, PolicySource};
use super::*;
use Operation::*;

const TD: &str = "dev.mintgate.local";
const AUTHOR: &str = "spiffe://dev.mintgate.local/operator/bob";

fn td() -> TrustDomain {
    TrustDomain::parse(TD).unwrap()
}

fn id(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}{path}")).unwrap()
}

fn dev() -> Policy {
    Policy::load(&PolicySource::dev(), Some(&td())).unwrap()
}

/// The dev policy with one more file.
fn dev_with(name: &str, text: &str) -> Policy {
    let mut source = PolicySource::dev();
    source.files.push(PolicyFile {
        name: name.to_owned(),
        text: text.to_owned(),
    });
    Policy::load(&source, Some(&td())).unwrap()
}

/// What an operation is asked about.
#[derive(Debug, Clone, Copy)]
enum On {
    /// A SPIFFE ID of the dev trust domain, by path.
    Identity(&'static str),
    /// The dev trust domain.
    TrustDomain,
    /// A dev proposal of this kind, by bob.
    Proposal(&'static str),
}

/// Who asks.
#[derive(Debug, Clone, Copy)]
enum Who<'a> {
    Operator(&'a SpiffeId, &'a [&'a str]),
    Node(&'a SpiffeId),
    Workload(&'a SpiffeId),
}

fn ask(p: &Policy, who: Who<'_>, operation: Operation, on: On) -> Result<PolicyDecision, Denied> {
    let td = td();
    let roles: Vec<String> = match who {
        Who::Operator(_, roles) => roles.iter().map(|r| (*r).to_owned()).collect(),
        Who::Node(_) | Who::Workload(_) => Vec::new(),
    };
    let actor = match who {
        Who::Operator(id, _) => Actor::Operator { id, roles: &roles },
        Who::Node(id) => Actor::Node(id),
        Who::Workload(id) => Actor::Workload(id),
    };
    let identity = match on {
        On::Identity(path) => id(path),
        On::TrustDomain | On::Proposal(_) => id("/unused"),
    };
    let target = match on {
        On::Identity(_) => Target::Identity(&identity),
        On::TrustDomain => Target::TrustDomain(&td),
        On::Proposal(kind) => Target::Proposal {
            id: "proposal-1",
            kind,
            author: AUTHOR,
            trust_domain: &td,
        },
    };
    p.authorize(&OperationInput {
        actor,
        operation,
        target,
    })
    .map_err(|e| match e {
        DecideError::Denied(d) => d,
        DecideError::Engine(e) => panic!("engine: {e}"),
    })
}

/// The columns of [`ROLE_TABLE`]: each operation on what it acts on, ApproveProposal once per
/// proposal kind.
const COLUMNS: [(&str, Operation, On); 25] = [
    ("Join", CreateJoinToken, On::Identity("/joined/laptop")),
    ("Revoke", Revoke, On::Identity("/workload/ns/web")),
    ("RevId", RevokeIdentity, On::Identity("/workload/ns/web")),
    ("Unblock", UnblockIdentity, On::Identity("/workload/ns/web")),
    ("Check", CheckStatus, On::TrustDomain),
    ("Watch", WatchRevocations, On::TrustDomain),
    ("PropPol", ProposePolicy, On::TrustDomain),
    (
        "PropRole",
        ProposeRoleBinding,
        On::Identity("/operator/carol"),
    ),
    ("List", ListProposals, On::TrustDomain),
    ("Get", GetProposal, On::Proposal("policy")),
    ("Shadow", ShadowPolicy, On::Proposal("policy")),
    ("Appr:policy", ApproveProposal, On::Proposal("policy")),
    ("Appr:role", ApproveProposal, On::Proposal("role_binding")),
    ("Appr:unblock", ApproveProposal, On::Proposal("unblock")),
    ("Gov", GetGovernance, On::TrustDomain),
    ("Pend", ListPending, On::TrustDomain),
    ("WatchP", WatchPending, On::TrustDomain),
    ("Appr:hold", Approve, On::Identity("/workload/web")),
    ("Deny", Deny, On::Identity("/workload/web")),
    ("Evid", ExportEvidence, On::TrustDomain),
    ("PropCa", ProposeCa, On::TrustDomain),
    ("Cas", ListAuthorities, On::TrustDomain),
    ("RevIss", RevokeIssuer, On::TrustDomain),
    ("Appr:ca", ApproveProposal, On::Proposal("ca")),
    (
        "Appr:reviss",
        ApproveProposal,
        On::Proposal("revoke_issuer"),
    ),
];

/// What an operator holding one role (or none) may do under the dev policy: `Y` allowed, `.`
/// denied with no permit. The columns are [`COLUMNS`].
#[rustfmt::skip]
const ROLE_TABLE: &str = "
role             Join Revoke RevId Unblock Check Watch PropPol PropRole List Get Shadow Appr:policy Appr:role Appr:unblock Gov Pend WatchP Appr:hold Deny Evid PropCa Cas RevIss Appr:ca Appr:reviss
issuer           Y    .      .     .       Y     Y     .       .        .    .   .      .           .         .            .   .    .      .         .    .    .      .   .      .       .
revoker          .    Y      Y     Y       Y     Y     .       .        Y    Y   .      .           .         .            Y   .    .      .         .    .    .      .   .      .       .
approver         .    .      .     .       Y     Y     .       .        Y    Y   .      .           .         Y            Y   Y    Y      Y         Y    .    .      .   .      .       .
policy-author    .    .      .     .       Y     Y     Y       Y        Y    Y   Y      .           .         .            Y   .    .      .         .    .    .      .   .      .       .
policy-approver  .    .      .     .       Y     Y     .       .        Y    Y   .      Y           Y         .            Y   .    .      .         .    .    .      .   .      .       .
ca-custodian     .    .      .     .       Y     Y     .       .        Y    Y   .      .           .         .            Y   .    .      .         .    .    Y      Y   Y      Y       Y
auditor          .    .      .     .       Y     Y     .       .        Y    Y   .      .           .         .            Y   Y    Y      .         .    Y    .      .   .      .       .
admin            Y    Y      Y     Y       Y     Y     Y       Y        Y    Y   Y      Y           Y         Y            Y   Y    Y      Y         Y    Y    Y      Y   Y      Y       Y
(none)           .    .      .     .       Y     Y     .       .        .    .   .      .           .         .            .   .    .      .         .    .    .      .   .      .       .
";

#[test]
fn each_role_of_the_dev_policy_may_do_what_the_table_says() {
    let p = dev();
    let alice = id("/operator/alice");
    let mut lines = ROLE_TABLE.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().skip(1).collect();
    let labels: Vec<&str> = COLUMNS.iter().map(|(label, _, _)| *label).collect();
    assert_eq!(header, labels);
    let mut seen = Vec::new();
    for line in lines {
        let mut cells = line.split_whitespace();
        let role = cells.next().unwrap();
        seen.push(role);
        let roles: &[&str] = if role == "(none)" { &[] } else { &[role] };
        let cells: Vec<&str> = cells.collect();
        assert_eq!(cells.len(), COLUMNS.len(), "{role}");
        for ((_, operation, on), cell) in COLUMNS.into_iter().zip(cells) {
            let got = ask(&p, Who::Operator(&alice, roles), operation, on);
            let what = format!("{role} {operation} on {on:?}: {got:?}");
            match cell {
                "Y" => {
                    let decision = got.expect(&what);
                    assert_eq!(decision.policy_version, p.version(), "{what}");
                    assert!(!decision.policies.is_empty(), "{what}");
                }
                "." => {
                    let denied = got.expect_err(&what);
                    assert!(!denied.forbidden, "{what}");
                    assert!(denied.decision.policies.is_empty(), "{what}");
                    assert_eq!(denied.decision.policy_version, p.version(), "{what}");
                }
                other => panic!("bad cell {other:?}"),
            }
        }
    }
    // Every role has its row, and every operation a column.
    for role in ROLES {
        assert!(seen.contains(&role), "{role}");
    }
    for operation in Operation::ALL {
        assert!(
            COLUMNS.iter().any(|(_, o, _)| *o == operation),
            "{operation}"
        );
    }
}

#[test]
fn the_determining_policies_name_the_grant() {
    let p = dev();
    let alice = id("/operator/alice");
    let web = id("/workload/ns/web");
    let cases: [(Who<'_>, Operation, On, &[&str]); 6] = [
        (
            Who::Operator(&alice, &["admin"]),
            CreateJoinToken,
            On::Identity("/joined/laptop"),
            &["admin"],
        ),
        // Two permits apply: both are named.
        (
            Who::Operator(&alice, &["auditor"]),
            CheckStatus,
            On::TrustDomain,
            &["auditor", "status-and-revocations"],
        ),
        (
            Who::Operator(&alice, &["approver"]),
            ApproveProposal,
            On::Proposal("unblock"),
            &["approver"],
        ),
        (
            Who::Operator(&alice, &["approver"]),
            GetProposal,
            On::Proposal("unblock"),
            &["approver-reads"],
        ),
        // Roles add up.
        (
            Who::Operator(&alice, &["issuer", "revoker", "revoker"]),
            Revoke,
            On::Identity("/workload/ns/web"),
            &["revoker"],
        ),
        (
            Who::Workload(&web),
            Revoke,
            On::Identity("/workload/ns/web"),
            &["workload-revokes-itself"],
        ),
    ];
    for (who, operation, on, ids) in cases {
        let decision = ask(&p, who, operation, on).unwrap();
        assert_eq!(decision.policies, ids, "{who:?} {operation}");
    }
}

#[test]
fn nodes_and_workloads_check_status_and_workloads_revoke_only_themselves() {
    let p = dev();
    let node = id("/node/worker-1");
    let web = id("/workload/ns/web");
    #[rustfmt::skip]
    let rows: [(&str, Who<'_>, Operation, On, bool); 12] = [
        ("a node checks status", Who::Node(&node), CheckStatus, On::TrustDomain, true),
        ("a node watches revocations", Who::Node(&node), WatchRevocations, On::TrustDomain, true),
        ("a node revokes a workload", Who::Node(&node), Revoke, On::Identity("/workload/ns/web"), false),
        ("a node revokes its own ID", Who::Node(&node), Revoke, On::Identity("/node/worker-1"), false),
        ("a node creates a join token", Who::Node(&node), CreateJoinToken, On::Identity("/joined/x"), false),
        ("a node lists proposals", Who::Node(&node), ListProposals, On::TrustDomain, false),
        ("a workload checks status", Who::Workload(&web), CheckStatus, On::TrustDomain, true),
        ("a workload watches revocations", Who::Workload(&web), WatchRevocations, On::TrustDomain, true),
        ("a workload revokes its own certificate", Who::Workload(&web), Revoke, On::Identity("/workload/ns/web"), true),
        ("a workload revokes another's", Who::Workload(&web), Revoke, On::Identity("/workload/ns/db"), false),
        ("a workload revokes a deeper ID", Who::Workload(&web), Revoke, On::Identity("/workload/ns/web/x"), false),
        ("a workload revokes its identity", Who::Workload(&web), RevokeIdentity, On::Identity("/workload/ns/web"), false),
    ];
    for (what, who, operation, on, allowed) in rows {
        let got = ask(&p, who, operation, on);
        assert_eq!(got.is_ok(), allowed, "{what}: {got:?}");
        if let Err(denied) = got {
            assert!(
                !denied.forbidden && denied.decision.policies.is_empty(),
                "{what}"
            );
        }
    }
}

#[test]
fn another_trust_domains_callers_are_denied() {
    let p = dev();
    let other = |path: &str| SpiffeId::parse(&format!("spiffe://other.example{path}")).unwrap();
    let (node, web, admin) = (
        other("/node/n"),
        other("/workload/ns/web"),
        other("/operator/eve"),
    );
    let no_permit = [
        ask(&p, Who::Node(&node), CheckStatus, On::TrustDomain),
        ask(&p, Who::Workload(&web), WatchRevocations, On::TrustDomain),
        // Same path, other trust domain.
        ask(
            &p,
            Who::Workload(&web),
            Revoke,
            On::Identity("/workload/ns/web"),
        ),
    ];
    for got in no_permit {
        let denied = got.unwrap_err();
        assert!(!denied.forbidden && denied.decision.policies.is_empty());
    }
    // Its own trust domain is not this server's.
    let own = TrustDomain::parse("other.example").unwrap();
    let got = p.authorize(&OperationInput {
        actor: Actor::Workload(&web),
        operation: Revoke,
        target: Target::Identity(&web),
    });
    assert!(matches!(got, Err(DecideError::Denied(_))), "{got:?}");
    let got = p.authorize(&OperationInput {
        actor: Actor::Node(&node),
        operation: CheckStatus,
        target: Target::TrustDomain(&own),
    });
    assert!(matches!(got, Err(DecideError::Denied(_))), "{got:?}");
    // Roles bound to another trust domain's operator grant nothing here.
    for (_, operation, on) in COLUMNS {
        let denied = ask(&p, Who::Operator(&admin, &["admin"]), operation, on).unwrap_err();
        assert!(denied.forbidden, "{operation}");
        assert_eq!(
            denied.decision.policies,
            ["foreign-operators"],
            "{operation}"
        );
    }
}

#[test]
fn a_forbid_beats_admin() {
    let p = dev_with(
        "freeze.cedar",
        r#"
@id("no-join-tokens")
forbid (principal, action == Action::"CreateJoinToken", resource);
"#,
    );
    let alice = id("/operator/alice");
    let denied = ask(
        &p,
        Who::Operator(&alice, &["admin"]),
        CreateJoinToken,
        On::Identity("/joined/laptop"),
    )
    .unwrap_err();
    assert!(denied.forbidden);
    assert_eq!(denied.decision.policies, ["no-join-tokens"]);
    assert_eq!(denied.reason(), POLICY_DENIED);
    assert_eq!(
        denied.to_string(),
        "the policy forbids this request (no-join-tokens)"
    );
    let revoke = ask(
        &p,
        Who::Operator(&alice, &["admin"]),
        Revoke,
        On::Identity("/workload/ns/web"),
    );
    assert_eq!(revoke.unwrap().policies, ["admin"]);
}

#[test]
fn a_forbid_that_fails_to_evaluate_refuses() {
    // Overflows for every SPIFFE ID with a path: Cedar skips an erroring policy; Mintgate does not.
    let p = dev_with(
        "overflow.cedar",
        r#"
@id("overflows")
forbid (principal, action == Action::"Revoke", resource)
when { resource.segments * 4611686018427387904 > 0 };
"#,
    );
    let alice = id("/operator/alice");
    let denied = ask(
        &p,
        Who::Operator(&alice, &["admin"]),
        Revoke,
        On::Identity("/workload/ns/web"),
    )
    .unwrap_err();
    assert!(denied.forbidden);
    assert_eq!(denied.decision.policies, ["overflows"]);
}

#[test]
fn the_environment_is_in_the_context() {
    let text = r#"
@id("no-identity-revocations-in-production")
forbid (principal, action == Action::"RevokeIdentity", resource)
when { context.environment == "production" };
"#;
    let alice = id("/operator/alice");
    let revoke = |p: &Policy| {
        ask(
            p,
            Who::Operator(&alice, &["revoker"]),
            RevokeIdentity,
            On::Identity("/workload/ns/web"),
        )
    };
    assert!(
        revoke(&dev_with("env.cedar", text)).is_err(),
        "default: production"
    );
    let in_dev = dev_with("env.cedar", text).with_environment("dev");
    assert_eq!(revoke(&in_dev).unwrap().policies, ["revoker"]);
}

#[test]
fn unknown_roles_grant_nothing_and_break_nothing() {
    let p = dev();
    let alice = id("/operator/alice");
    let wizard = ask(
        &p,
        Who::Operator(&alice, &["wizard"]),
        CreateJoinToken,
        On::Identity("/joined/laptop"),
    );
    assert!(wizard.unwrap_err().decision.policies.is_empty());
    // A policy may name a role Mintgate does not know; it is granted when passed.
    let p = dev_with(
        "wizard.cedar",
        r#"
@id("wizard")
permit (principal in Role::"wizard", action == Action::"CreateJoinToken", resource);
"#,
    );
    let wizard = ask(
        &p,
        Who::Operator(&alice, &["wizard", "auditor"]),
        CreateJoinToken,
        On::Identity("/joined/laptop"),
    );
    assert_eq!(wizard.unwrap().policies, ["wizard"]);
}

#[test]
fn a_caller_the_operation_is_not_for_is_denied_whatever_the_policy() {
    let p = dev_with(
        "open.cedar",
        "@id(\"everything\")\npermit (principal, action, resource);\n",
    );
    let node = id("/node/worker-1");
    let web = id("/workload/ns/web");
    let alice = id("/operator/alice");
    let on = On::Identity("/joined/laptop");
    for who in [Who::Node(&node), Who::Workload(&web)] {
        let denied = ask(&p, who, CreateJoinToken, on).unwrap_err();
        assert!(!denied.forbidden && denied.decision.policies.is_empty());
    }
    assert!(ask(&p, Who::Node(&node), Revoke, On::Identity("/node/worker-1")).is_err());
    let got = ask(&p, Who::Operator(&alice, &[]), CreateJoinToken, on);
    assert_eq!(got.unwrap().policies, ["everything"]);
}

#[test]
fn a_target_of_the_wrong_kind_is_a_bug() {
    let td = td();
    let alice = id("/operator/alice");
    let got = dev().authorize(&OperationInput {
        actor: Actor::Operator {
            id: &alice,
            roles: &["admin".to_owned()],
        },
        operation: Revoke,
        target: Target::TrustDomain(&td),
    });
    match got {
        Err(DecideError::Engine(e)) => {
            assert_eq!(
                e.to_string(),
                "Revoke acts on a SPIFFE ID, not the trust domain"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_example_policy_serves_prod_example_and_admin_does_everything_there() {
    let source = PolicySource {
        schema: include_str!("../../../../policy/example/schema.cedarschema").to_owned(),
        files: ["issuance.cedar", "operators.cedar"]
            .into_iter()
            .zip([
                include_str!("../../../../policy/example/issuance.cedar"),
                include_str!("../../../../policy/example/operators.cedar"),
            ])
            .map(|(name, text)| PolicyFile {
                name: name.to_owned(),
                text: text.to_owned(),
            })
            .collect(),
    };
    let prod = TrustDomain::parse("prod.example").unwrap();
    let p = Policy::load(&source, Some(&prod)).unwrap();
    let id = |path: &str| SpiffeId::parse(&format!("spiffe://prod.example{path}")).unwrap();
    let (admin, auditor, wanted) = (
        id("/operator/alice"),
        id("/operator/audrey"),
        id("/ns/web/sa/api"),
    );
    let roles = ["admin".to_owned()];
    let auditor_roles = ["auditor".to_owned()];
    for (_, operation, on) in COLUMNS {
        let target = match on {
            On::Identity(_) => Target::Identity(&wanted),
            On::TrustDomain => Target::TrustDomain(&prod),
            On::Proposal(kind) => Target::Proposal {
                id: "p1",
                kind,
                author: "spiffe://prod.example/operator/bob",
                trust_domain: &prod,
            },
        };
        let allowed = p.authorize(&OperationInput {
            actor: Actor::Operator {
                id: &admin,
                roles: &roles,
            },
            operation,
            target,
        });
        let policies = allowed.unwrap().policies;
        assert!(
            policies.iter().any(|id| id == "admin"),
            "{operation}: {policies:?}"
        );
        // An auditor only reads there too.
        let audited = p.authorize(&OperationInput {
            actor: Actor::Operator {
                id: &auditor,
                roles: &auditor_roles,
            },
            operation,
            target,
        });
        let reads = matches!(
            operation,
            CheckStatus
                | WatchRevocations
                | ListProposals
                | GetProposal
                | GetGovernance
                | ListPending
                | WatchPending
                | ExportEvidence
        );
        assert_eq!(audited.is_ok(), reads, "{operation}: {audited:?}");
    }
}

#[test]
fn operations_are_named_like_their_rpcs_in_declaration_order() {
    for (i, operation) in Operation::ALL.into_iter().enumerate() {
        assert_eq!(operation as usize, i);
        assert_eq!(operation.to_string(), operation.as_str());
    }
    assert_eq!(CreateJoinToken.as_str(), "CreateJoinToken");
    assert_eq!(ApproveProposal.as_str(), "ApproveProposal");
    let mut names: Vec<&str> = Operation::ALL.iter().map(|o| o.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), Operation::ALL.len());
}
