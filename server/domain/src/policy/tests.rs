//! Decision tests: what a node or workload is granted or refused, and why.

use super::*;
use crate::spiffe::TrustDomain;

const TD: &str = "prod.example";

fn td() -> TrustDomain {
    TrustDomain::parse(TD).unwrap()
}

fn id(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}{path}")).unwrap()
}

fn rule(name: &str, nodes: &[&str], allow: &[&str]) -> RuleDocument {
    let full = |paths: &[&str]| {
        paths
            .iter()
            .map(|p| format!("spiffe://{TD}{p}"))
            .collect::<Vec<_>>()
    };
    RuleDocument {
        name: name.to_owned(),
        nodes: full(nodes),
        allow: full(allow),
        require_join_token: false,
        max_ttl_seconds: None,
        key_types: None,
        dns_names: Vec::new(),
        server_auth: false,
    }
}

fn policy(rules: Vec<RuleDocument>) -> Policy {
    let doc = PolicyDocument {
        version: "v7".to_owned(),
        rules,
    };
    Policy::from_document(doc, &td()).unwrap()
}

fn node_asks(
    policy: &Policy,
    node: &SpiffeId,
    token: Option<&SpiffeId>,
    wanted: &SpiffeId,
    dns: &[String],
    key_type: KeyType,
) -> Result<Grant, Denied> {
    policy.decide(&DecisionInput {
        requester: Requester::Node {
            id: node,
            join_token_for: token,
        },
        spiffe_id: wanted,
        dns_names: dns,
        key_type,
    })
}

fn node_asks_simply(policy: &Policy, node: &str, wanted: &str) -> Result<Grant, Denied> {
    node_asks(
        policy,
        &id(node),
        None,
        &id(wanted),
        &[],
        KeyType::EcdsaP256,
    )
}

fn workload_renews(policy: &Policy, who: &SpiffeId, wanted: &SpiffeId) -> Result<Grant, Denied> {
    policy.decide(&DecisionInput {
        requester: Requester::Workload { id: who },
        spiffe_id: wanted,
        dns_names: &[],
        key_type: KeyType::Ed25519,
    })
}

#[test]
fn an_empty_policy_denies_everything() {
    let p = policy(Vec::new());
    assert_eq!(p.rule_count(), 0);
    let err = node_asks_simply(&p, "/node/n1", "/workload/a").unwrap_err();
    assert_eq!(err, Denied::SpiffeIdNotGranted(id("/workload/a")));
    assert_eq!(err.reason(), "SPIFFE_ID_NOT_GRANTED");
    let w = id("/workload/a");
    assert!(workload_renews(&p, &w, &w).is_err());
}

#[test]
fn a_matching_rule_grants_with_its_limits() {
    let mut r = rule("web", &["/node/*"], &["/web/**"]);
    r.max_ttl_seconds = Some(900);
    r.server_auth = true;
    let grant = node_asks_simply(&policy(vec![r]), "/node/n1", "/web/api").unwrap();
    assert_eq!(
        grant,
        Grant {
            rule: "web".to_owned(),
            policy_version: "v7".to_owned(),
            max_ttl: Duration::from_secs(900),
            server_auth: true,
        }
    );
}

#[test]
fn ids_outside_every_rule_are_not_granted() {
    let p = policy(vec![rule("web", &["/node/*"], &["/web/*"])]);
    for wanted in ["/web", "/web/api/v1", "/db/main", "/webx/api"] {
        let err = node_asks_simply(&p, "/node/n1", wanted).unwrap_err();
        assert_eq!(err.reason(), "SPIFFE_ID_NOT_GRANTED", "{wanted}");
    }
    let foreign = SpiffeId::parse("spiffe://other.example/web/api").unwrap();
    let err = node_asks(&p, &id("/node/n1"), None, &foreign, &[], KeyType::EcdsaP256);
    assert_eq!(err, Err(Denied::SpiffeIdNotGranted(foreign)));
}

#[test]
fn the_node_must_match_the_rule() {
    let p = policy(vec![rule("web", &["/node/web-pool/*"], &["/web/**"])]);
    assert!(node_asks_simply(&p, "/node/web-pool/n1", "/web/api").is_ok());
    let err = node_asks_simply(&p, "/node/db-pool/n1", "/web/api").unwrap_err();
    assert_eq!(err.reason(), "SPIFFE_ID_NOT_GRANTED");
    let foreign_node = SpiffeId::parse("spiffe://other.example/node/web-pool/n1").unwrap();
    let err = node_asks(
        &p,
        &foreign_node,
        None,
        &id("/web/api"),
        &[],
        KeyType::EcdsaP256,
    );
    assert_eq!(err.unwrap_err().reason(), "SPIFFE_ID_NOT_GRANTED");
}

#[test]
fn the_first_matching_rule_decides() {
    let mut narrow = rule("narrow", &["/node/*"], &["/web/admin"]);
    narrow.max_ttl_seconds = Some(300);
    narrow.key_types = Some(vec!["P-384".to_owned()]);
    let broad = rule("broad", &["/node/*"], &["/web/**"]);
    let p = policy(vec![narrow.clone(), broad.clone()]);

    let grant = node_asks(
        &p,
        &id("/node/n"),
        None,
        &id("/web/admin"),
        &[],
        KeyType::EcdsaP384,
    );
    assert_eq!(grant.unwrap().rule, "narrow");
    assert_eq!(
        node_asks_simply(&p, "/node/n", "/web/api").unwrap().rule,
        "broad"
    );
    // The deciding rule refuses P-256 even though the later rule would allow it.
    assert_eq!(
        node_asks_simply(&p, "/node/n", "/web/admin"),
        Err(Denied::KeyTypeNotAllowed(KeyType::EcdsaP256))
    );

    let reversed = policy(vec![broad, narrow]);
    let grant = node_asks_simply(&reversed, "/node/n", "/web/admin").unwrap();
    assert_eq!(
        (grant.rule.as_str(), grant.max_ttl.as_secs()),
        ("broad", 3600)
    );
}

#[test]
fn rules_for_other_nodes_are_skipped() {
    let other = rule("other-nodes", &["/node/other/*"], &["/web/**"]);
    let mine = rule("mine", &["/node/mine/*"], &["/web/**"]);
    let grant = node_asks_simply(&policy(vec![other, mine]), "/node/mine/n", "/web/a").unwrap();
    assert_eq!(grant.rule, "mine");
}

#[test]
fn key_types_outside_the_rule_are_refused() {
    let mut r = rule("ec-only", &["/node/*"], &["/web/**"]);
    r.key_types = Some(vec!["P-256".to_owned(), "Ed25519".to_owned()]);
    let p = policy(vec![r]);
    let (node, wanted) = (id("/node/n"), id("/web/a"));
    assert!(node_asks(&p, &node, None, &wanted, &[], KeyType::Ed25519).is_ok());
    let err = node_asks(&p, &node, None, &wanted, &[], KeyType::Rsa2048).unwrap_err();
    assert_eq!(err, Denied::KeyTypeNotAllowed(KeyType::Rsa2048));
    assert_eq!(err.reason(), "KEY_TYPE_NOT_ALLOWED_BY_POLICY");
    assert_eq!(
        err.to_string(),
        "the policy rule that grants this SPIFFE ID does not allow RSA-2048 keys"
    );
}

#[test]
fn dns_names_must_each_be_granted() {
    let mut r = rule("web", &["/node/*"], &["/web/**"]);
    r.dns_names = vec![
        "*.svc.cluster.local".to_owned(),
        "api.example.com".to_owned(),
    ];
    let p = policy(vec![r]);
    let (node, wanted) = (id("/node/n"), id("/web/a"));
    let ask = |names: &[&str]| {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        node_asks(&p, &node, None, &wanted, &names, KeyType::EcdsaP256)
    };
    assert!(ask(&[]).is_ok());
    assert!(ask(&["web.svc.cluster.local", "api.example.com"]).is_ok());
    let err = ask(&["web.svc.cluster.local", "evil.example.com"]).unwrap_err();
    assert_eq!(
        err,
        Denied::DnsNameNotGranted("evil.example.com".to_owned())
    );
    assert_eq!(err.reason(), "DNS_NAME_NOT_GRANTED");
    assert!(ask(&["a.b.svc.cluster.local"]).is_err());
    assert!(ask(&["*.svc.cluster.local"]).is_err());
}

#[test]
fn without_dns_patterns_no_dns_name_is_granted() {
    let p = policy(vec![rule("web", &["/node/*"], &["/web/**"])]);
    let err = node_asks(
        &p,
        &id("/node/n"),
        None,
        &id("/web/a"),
        &["web.example.com".to_owned()],
        KeyType::EcdsaP256,
    );
    assert_eq!(err.unwrap_err().reason(), "DNS_NAME_NOT_GRANTED");
}

#[test]
fn join_token_rules_need_a_token_bound_to_the_requested_id() {
    let mut r = rule("joined", &["/node/*"], &["/joined/**"]);
    r.require_join_token = true;
    let p = policy(vec![r]);
    let (node, wanted, other) = (id("/node/n"), id("/joined/a"), id("/joined/b"));

    let no_token = node_asks(&p, &node, None, &wanted, &[], KeyType::EcdsaP256).unwrap_err();
    assert_eq!(no_token, Denied::JoinTokenRequired);
    assert_eq!(no_token.reason(), "JOIN_TOKEN_REQUIRED");
    let wrong = node_asks(&p, &node, Some(&other), &wanted, &[], KeyType::EcdsaP256);
    assert_eq!(wrong, Err(Denied::JoinTokenRequired));
    let granted = node_asks(&p, &node, Some(&wanted), &wanted, &[], KeyType::EcdsaP256);
    assert_eq!(granted.unwrap().rule, "joined");
}

#[test]
fn a_token_does_not_widen_what_a_node_may_ask_for() {
    let mut r = rule("joined", &["/node/*"], &["/joined/**"]);
    r.require_join_token = true;
    let p = policy(vec![r]);
    let wanted = id("/admin/root");
    let err = node_asks(
        &p,
        &id("/node/n"),
        Some(&wanted),
        &wanted,
        &[],
        KeyType::EcdsaP256,
    );
    assert_eq!(err.unwrap_err().reason(), "SPIFFE_ID_NOT_GRANTED");
}

#[test]
fn workloads_renew_their_own_id_without_nodes_or_tokens() {
    let mut r = rule("joined", &["/node/*"], &["/joined/**"]);
    r.require_join_token = true;
    let p = policy(vec![r, rule("web", &["/node/*"], &["/web/**"])]);
    let joined = id("/joined/a");
    assert_eq!(
        workload_renews(&p, &joined, &joined).unwrap().rule,
        "joined"
    );
    let web = id("/web/a");
    assert_eq!(workload_renews(&p, &web, &web).unwrap().rule, "web");

    let err = workload_renews(&p, &web, &id("/web/b")).unwrap_err();
    assert_eq!(err, Denied::SpiffeIdNotGranted(id("/web/b")));
    let stray = id("/db/a");
    assert_eq!(
        workload_renews(&p, &stray, &stray).unwrap_err().reason(),
        "SPIFFE_ID_NOT_GRANTED"
    );
}

#[test]
fn dev_policy_grants_workloads_and_joined_ids() {
    let p = Policy::from_document(dev_policy(&td()), &td()).unwrap();
    let node = id("/node/worker-1");
    let dns = ["web.svc.cluster.local".to_owned()];
    let grant = node_asks(
        &p,
        &node,
        None,
        &id("/workload/ns/web"),
        &dns,
        KeyType::EcdsaP256,
    );
    assert_eq!(grant.unwrap().rule, "dev-nodes");

    let joined = id("/joined/laptop");
    let err = node_asks(&p, &node, None, &joined, &[], KeyType::EcdsaP256);
    assert_eq!(err, Err(Denied::JoinTokenRequired));
    let grant = node_asks(&p, &node, Some(&joined), &joined, &[], KeyType::EcdsaP256);
    assert_eq!(grant.unwrap().rule, "join-token");

    let err = node_asks_simply(&p, "/workload/x", "/workload/y").unwrap_err();
    assert_eq!(err.reason(), "SPIFFE_ID_NOT_GRANTED");
}
