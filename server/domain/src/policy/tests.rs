//! Decision tests: what a node or workload is granted or refused, with which limits, and which
//! policies decided.

use super::*;

const TD: &str = "prod.example";

/// Limits from annotations and context conditions, two permits that can both apply, a join
/// token requirement, and a forbid on the ttl asked for.
const POLICY: &str = r#"
@id("web")
@max_ttl_seconds("900")
@server_auth("true")
permit (
  principal,
  action in [Action::"Issue", Action::"Renew"],
  resource in TrustDomain::"prod.example"
)
when {
  (principal is Workload ||
   (principal.path like "/node/web/*" && principal.segments == 3)) &&
  resource.path like "/web/*" && resource.segments == 2 &&
  ["P-256", "Ed25519"].contains(context.key_type) &&
  ["*.web.svc.cluster.local"].containsAll(context.dns_wildcards)
};

@id("api-names")
permit (principal is Node, action == Action::"Issue", resource)
when {
  principal.path like "/node/web/*" && resource.path == "/web/api" &&
  ["api.example.com", "www.example.com"].containsAll(context.dns_names)
};

@id("joined")
@max_ttl_seconds("300")
permit (principal, action in [Action::"Issue", Action::"Renew"], resource)
when {
  (principal is Workload || (principal.path like "/node/*" && context.join_token)) &&
  resource.path like "/joined/*" &&
  context.dns_names.isEmpty()
};

@id("no-long-ttls")
forbid (principal, action, resource)
when { context has ttl_seconds && context.ttl_seconds > 86400 };
"#;

fn td() -> TrustDomain {
    TrustDomain::parse(TD).unwrap()
}

fn id(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}{path}")).unwrap()
}

fn policy(text: &str) -> Policy {
    let source = PolicySource {
        schema: PolicySource::dev().schema,
        files: vec![PolicyFile {
            name: "test.cedar".to_owned(),
            text: text.to_owned(),
        }],
    };
    Policy::load(&source, Some(&td())).unwrap()
}

/// One request of the table.
struct Ask {
    node: Option<&'static str>,
    wanted: &'static str,
    ttl: Option<u64>,
    key: KeyType,
    dns: &'static [&'static str],
    token: bool,
}

/// A node enrolling `wanted` with a P-256 key and nothing else.
fn node(node: &'static str, wanted: &'static str) -> Ask {
    Ask {
        node: Some(node),
        wanted,
        ttl: None,
        key: KeyType::EcdsaP256,
        dns: &[],
        token: false,
    }
}

/// `wanted` renewing itself.
fn workload(wanted: &'static str) -> Ask {
    Ask {
        node: None,
        ..node("", wanted)
    }
}

impl Ask {
    fn dns(self, dns: &'static [&'static str]) -> Self {
        Self { dns, ..self }
    }

    fn key(self, key: KeyType) -> Self {
        Self { key, ..self }
    }

    fn ttl(self, secs: u64) -> Self {
        Self {
            ttl: Some(secs),
            ..self
        }
    }

    fn token(self) -> Self {
        Self {
            token: true,
            ..self
        }
    }

    fn decide(&self, policy: &Policy) -> Result<Grant, Denied> {
        let node = self.node.map(id);
        let wanted = id(self.wanted);
        let dns: Vec<String> = self.dns.iter().map(|d| (*d).to_owned()).collect();
        let (principal, attestors): (_, &[&str]) = match &node {
            Some(n) if self.token => (Principal::Node(n), &["node_cert", "join_token"]),
            Some(n) => (Principal::Node(n), &["node_cert"]),
            None => (Principal::Workload(&wanted), &["workload_cert"]),
        };
        policy
            .decide(&DecisionInput {
                principal,
                spiffe_id: &wanted,
                ttl: self.ttl.map(Duration::from_secs),
                key_type: self.key,
                dns_names: &dns,
                attestors,
                join_token: self.token,
                kubernetes: None,
                risk: &RiskAssessment::none(),
            })
            .map_err(|e| match e {
                DecideError::Denied(d) => d,
                DecideError::Engine(e) => panic!("engine: {e}"),
            })
    }
}

/// What a row expects: granted by these ids with (max ttl, serverAuth), or denied.
enum Expect {
    Granted(&'static [&'static str], u64, bool),
    NoPermit,
    Forbidden(&'static [&'static str]),
}

#[test]
fn the_decision_table() {
    use Expect::*;
    let p = policy(POLICY);
    let rows: Vec<(&str, Ask, Expect)> = vec![
        // Per-node paths: `*` is one segment where `segments` pins it.
        (
            "a web node enrolls a web ID with the permit's limits",
            node("/node/web/n1", "/web/shop"),
            Granted(&["web"], 900, true),
        ),
        (
            "another pool's node",
            node("/node/db/n1", "/web/shop"),
            NoPermit,
        ),
        (
            "a node one level too deep",
            node("/node/web/rack/n1", "/web/shop"),
            NoPermit,
        ),
        (
            "an ID one level too deep",
            node("/node/web/n1", "/web/shop/v1"),
            NoPermit,
        ),
        (
            "an ID nobody grants",
            node("/node/web/n1", "/db/main"),
            NoPermit,
        ),
        // Key types.
        (
            "Ed25519 is in the permit's list",
            node("/node/web/n1", "/web/shop").key(KeyType::Ed25519),
            Granted(&["web"], 900, true),
        ),
        (
            "RSA-2048 is not",
            node("/node/web/n1", "/web/shop").key(KeyType::Rsa2048),
            NoPermit,
        ),
        // DNS names: one label under a wildcard, or exactly listed.
        (
            "one label under the wildcard",
            node("/node/web/n1", "/web/shop")
                .dns(&["shop.web.svc.cluster.local", "cart.web.svc.cluster.local"]),
            Granted(&["web"], 900, true),
        ),
        (
            "two labels under the wildcard",
            node("/node/web/n1", "/web/shop").dns(&["a.shop.web.svc.cluster.local"]),
            NoPermit,
        ),
        (
            "one name outside the wildcard",
            node("/node/web/n1", "/web/shop")
                .dns(&["shop.web.svc.cluster.local", "evil.example.com"]),
            NoPermit,
        ),
        (
            "a one-label name",
            node("/node/web/n1", "/web/shop").dns(&["localhost"]),
            NoPermit,
        ),
        (
            "exactly listed names, under another permit with default limits",
            node("/node/web/n1", "/web/api").dns(&["api.example.com"]),
            Granted(&["api-names"], 3600, false),
        ),
        (
            "a name the list lacks",
            node("/node/web/n1", "/web/api").dns(&["api.example.com", "x.example.com"]),
            NoPermit,
        ),
        // Two permits apply: the most generous limits of either.
        (
            "both permits",
            node("/node/web/n1", "/web/api"),
            Granted(&["api-names", "web"], 3600, true),
        ),
        // The join token requirement.
        ("no token", node("/node/batch/n1", "/joined/job"), NoPermit),
        (
            "a token bound to the ID",
            node("/node/batch/n1", "/joined/job").token(),
            Granted(&["joined"], 300, false),
        ),
        (
            "a token does not widen what a node may ask for",
            node("/node/batch/n1", "/web/shop").token(),
            NoPermit,
        ),
        // Renewal: the workload's own ID, no node and no token.
        (
            "a web workload renews",
            workload("/web/shop"),
            Granted(&["web"], 900, true),
        ),
        (
            "a joined workload renews without a token",
            workload("/joined/job"),
            Granted(&["joined"], 300, false),
        ),
        (
            "api-names permits Issue only",
            workload("/web/api").dns(&["api.example.com"]),
            NoPermit,
        ),
        // TTL: a permit's maximum is a limit (the service cuts to it); a forbid can refuse.
        (
            "a ttl above the maximum is still granted the maximum",
            node("/node/web/n1", "/web/shop").ttl(7200),
            Granted(&["web"], 900, true),
        ),
        (
            "a forbid on the ttl asked for wins over the permit",
            node("/node/web/n1", "/web/shop").ttl(2 * 86400),
            Forbidden(&["no-long-ttls"]),
        ),
    ];
    for (what, ask, expect) in rows {
        let got = ask.decide(&p);
        match (expect, got) {
            (Granted(ids, max_ttl, server_auth), Ok(grant)) => {
                assert_eq!(grant.decision.policies, ids, "{what}");
                assert_eq!(grant.decision.policy_version, p.version(), "{what}");
                assert_eq!(grant.max_ttl, Duration::from_secs(max_ttl), "{what}");
                assert_eq!(grant.server_auth, server_auth, "{what}");
            }
            (NoPermit, Err(denied)) => {
                assert!(!denied.forbidden, "{what}");
                assert!(denied.decision.policies.is_empty(), "{what}");
                assert_eq!(denied.decision.policy_version, p.version(), "{what}");
                assert_eq!(denied.reason(), "POLICY_DENIED");
                assert_eq!(denied.to_string(), "no policy permits this request");
            }
            (Forbidden(ids), Err(denied)) => {
                assert!(denied.forbidden, "{what}");
                assert_eq!(denied.decision.policies, ids, "{what}");
                assert_eq!(denied.reason(), "POLICY_DENIED");
            }
            (_, got) => panic!("{what}: got {got:?}"),
        }
    }
}

#[test]
fn an_empty_policy_denies_everything() {
    let p = policy("");
    assert_eq!(p.policy_count(), 0);
    let err = node("/node/web/n1", "/web/shop").decide(&p).unwrap_err();
    assert!(!err.forbidden && err.decision.policies.is_empty());
    assert!(workload("/web/shop").decide(&p).is_err());
}

#[test]
fn a_forbid_that_fails_to_evaluate_refuses() {
    // Overflows for any ttl of 2 s or more: Cedar skips an erroring policy; Mintgate does not.
    let p = policy(&format!(
        r#"{POLICY}
@id("overflows")
forbid (principal, action, resource)
when {{ context has ttl_seconds && context.ttl_seconds * 4611686018427387904 > 0 }};
"#
    ));
    let denied = node("/node/web/n1", "/web/shop")
        .ttl(600)
        .decide(&p)
        .unwrap_err();
    assert!(denied.forbidden);
    assert_eq!(denied.decision.policies, ["overflows"]);
    assert_eq!(
        denied.to_string(),
        "the policy forbids this request (overflows)"
    );
    assert!(node("/node/web/n1", "/web/shop").decide(&p).is_ok());
}

#[test]
fn the_environment_is_in_the_context() {
    let text = r#"
@id("dev-only")
permit (principal, action, resource) when { context.environment == "dev" };
"#;
    let ask = node("/node/web/n1", "/web/shop");
    assert!(ask.decide(&policy(text)).is_err(), "default: production");
    let dev = policy(text).with_environment("dev");
    assert_eq!(ask.decide(&dev).unwrap().decision.policies, ["dev-only"]);
}

#[test]
fn attestors_are_in_the_context() {
    let text = r#"
@id("tokens-only")
permit (principal, action == Action::"Issue", resource)
when { context.attestors.contains("join_token") };
"#;
    let p = policy(text);
    assert!(node("/node/a", "/x").decide(&p).is_err());
    assert!(node("/node/a", "/x").token().decide(&p).is_ok());
}

#[test]
fn the_dev_policy_grants_workloads_and_joined_ids() {
    let dev = TrustDomain::parse("dev.mintgate.local").unwrap();
    let p = Policy::load(&PolicySource::dev(), Some(&dev)).unwrap();
    let id = |path: &str| SpiffeId::parse(&format!("spiffe://dev.mintgate.local{path}")).unwrap();
    let (worker, web, joined) = (
        id("/node/worker-1"),
        id("/workload/ns/web"),
        id("/joined/laptop"),
    );
    let ask = |principal, wanted: &SpiffeId, dns: &[String], token| {
        p.decide(&DecisionInput {
            principal,
            spiffe_id: wanted,
            ttl: None,
            key_type: KeyType::Rsa4096,
            dns_names: dns,
            attestors: &["node_cert"],
            join_token: token,
            kubernetes: None,
            risk: &RiskAssessment::none(),
        })
    };
    let dns = ["web.svc.cluster.local".to_owned()];
    let grant = ask(Principal::Node(&worker), &web, &dns, false).unwrap();
    assert_eq!(grant.decision.policies, ["dev-nodes"]);
    assert_eq!(grant.max_ttl, Duration::from_secs(3600));
    assert!(!grant.server_auth);
    let evil = ["evil.example.com".to_owned()];
    assert!(ask(Principal::Node(&worker), &web, &evil, false).is_err());
    assert!(ask(Principal::Workload(&web), &web, &dns, false).is_ok());

    assert!(ask(Principal::Node(&worker), &joined, &[], false).is_err());
    let grant = ask(Principal::Node(&worker), &joined, &[], true).unwrap();
    assert_eq!(grant.decision.policies, ["join-token"]);
    assert!(ask(Principal::Workload(&joined), &joined, &[], false).is_ok());

    let not_a_node = id("/workload/x");
    assert!(ask(Principal::Node(&not_a_node), &web, &[], false).is_err());
    assert!(ask(Principal::Node(&worker), &id("/payments/api"), &[], false).is_err());
}

#[test]
fn jwt_attested_service_accounts_are_in_the_context() {
    let dev = TrustDomain::parse("dev.mintgate.local").unwrap();
    let node = SpiffeId::parse("spiffe://dev.mintgate.local/node/worker-1").unwrap();
    let wanted = SpiffeId::parse("spiffe://dev.mintgate.local/ns/web/sa/api").unwrap();
    let account = crate::jwt::ServiceAccount {
        namespace: "web".to_owned(),
        name: "api".to_owned(),
        pod: Some("web-0".to_owned()),
    };
    let ask = |p: &Policy, attestors: &[&str], kubernetes| {
        p.decide(&DecisionInput {
            principal: Principal::Node(&node),
            spiffe_id: &wanted,
            ttl: None,
            key_type: KeyType::EcdsaP256,
            dns_names: &[],
            attestors,
            join_token: false,
            kubernetes,
            risk: &RiskAssessment::none(),
        })
    };
    let jwt: &[&str] = &["node_cert", "jwt"];
    let p = Policy::load(&PolicySource::dev(), Some(&dev)).unwrap();
    let grant = ask(&p, jwt, Some(&account)).unwrap();
    assert_eq!(grant.decision.policies, ["jwt-workload"]);
    assert!(ask(&p, &["node_cert"], None).is_err());

    // A forbid sees the namespace and the pod.
    let mut source = PolicySource::dev();
    source.files.push(PolicyFile {
        name: "no-web.cedar".to_owned(),
        text: r#"@id("no-web")
forbid (principal, action == Action::"Issue", resource)
when { context has kubernetes && context.kubernetes.namespace == "web" &&
       context.kubernetes has pod && context.kubernetes.pod like "web-*" };
"#
        .to_owned(),
    });
    let p = Policy::load(&source, Some(&dev)).unwrap();
    match ask(&p, jwt, Some(&account)) {
        Err(DecideError::Denied(denied)) => assert_eq!(denied.decision.policies, ["no-web"]),
        other => panic!("{other:?}"),
    }

    // A schema written before the jwt attestor still loads and decides, without it: the dev
    // permit's `context has kubernetes` is false there.
    let mut old = PolicySource::dev();
    old.schema = old.schema.replace("  kubernetes?: Kubernetes,\n", "");
    let p = Policy::load(&old, Some(&dev)).unwrap();
    assert!(matches!(
        ask(&p, jwt, Some(&account)),
        Err(DecideError::Denied(d)) if d.decision.policies.is_empty()
    ));
}

#[test]
fn a_permit_on_an_action_group_applies_to_its_members() {
    // Each action asks only the policies whose scope can match it; a group counts.
    let mut source = PolicySource::dev();
    source.schema = source.schema.replace(
        "action Issue appliesTo",
        "action Enrollment;\naction Issue in [Enrollment] appliesTo",
    );
    source.files = vec![PolicyFile {
        name: "group.cedar".to_owned(),
        text: r#"@id("enrollment")
permit (principal, action in [Action::"Enrollment"], resource) when { resource.path == "/web/shop" };
"#
        .to_owned(),
    }];
    let p = Policy::load(&source, Some(&td())).unwrap();
    let grant = node("/node/web/n1", "/web/shop").decide(&p).unwrap();
    assert_eq!(grant.decision.policies, ["enrollment"]);
    assert!(workload("/web/shop").decide(&p).is_err());
}
