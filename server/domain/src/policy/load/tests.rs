//! Loading tests: what a policy directory must be, and how each problem is reported.

use super::super::{Policy, PolicyFile, PolicySource};
use super::*;

fn td() -> TrustDomain {
    TrustDomain::parse("prod.example").unwrap()
}

fn source(files: &[(&str, &str)]) -> PolicySource {
    PolicySource {
        schema: PolicySource::dev().schema,
        files: files
            .iter()
            .map(|(name, text)| PolicyFile {
                name: (*name).to_owned(),
                text: (*text).to_owned(),
            })
            .collect(),
    }
}

/// Every problem of a directory that must not load, as displayed.
fn problems(files: &[(&str, &str)]) -> Vec<String> {
    problems_in(&source(files), Some(&td()))
}

fn problems_in(source: &PolicySource, td: Option<&TrustDomain>) -> Vec<String> {
    match Policy::load(source, td) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.problems.iter().map(ToString::to_string).collect(),
    }
}

const OK: &str = r#"@id("ok")
permit (principal, action in [Action::"Issue", Action::"Renew"], resource) when { resource.path == "/a" };
"#;

#[test]
fn the_shipped_policies_load() {
    let dev = TrustDomain::parse("dev.mintgate.local").unwrap();
    let p = Policy::load(&PolicySource::dev(), Some(&dev)).unwrap();
    // issuance.cedar 3, operators.cedar 15, holds.cedar 2.
    assert_eq!(p.policy_count(), 20);
    assert!(p.maps_risk_to_holds());
    assert_eq!(p.version().len(), 64);
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
    // The example directory shares the schema; the server crate loads it from disk.
    assert_eq!(
        include_str!("../../../../policy/example/schema.cedarschema"),
        PolicySource::dev().schema
    );
    let example = source(&[
        (
            "issuance.cedar",
            include_str!("../../../../policy/example/issuance.cedar"),
        ),
        (
            "operators.cedar",
            include_str!("../../../../policy/example/operators.cedar"),
        ),
        (
            "holds.cedar",
            include_str!("../../../../policy/example/holds.cedar"),
        ),
    ]);
    let p = Policy::load(&example, Some(&td())).unwrap();
    assert_eq!(p.policy_count(), 21);
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
    // Each serves its own trust domain only.
    assert!(Policy::load(&example, Some(&dev)).is_err());
    assert!(Policy::load(&PolicySource::dev(), Some(&td())).is_err());
}

#[test]
fn the_version_hashes_the_source_texts_not_their_names() {
    let other = "@id(\"b\")\nforbid (principal, action == Action::\"Issue\", resource) when { resource.path == \"/b\" };\n";
    let version = |files: &[(&str, &str)]| {
        Policy::load(&source(files), Some(&td()))
            .unwrap()
            .version()
            .to_owned()
    };
    let v = version(&[("a.cedar", OK), ("b.cedar", other)]);
    assert_eq!(v, version(&[("z.cedar", OK), ("0.cedar", other)]));
    assert_ne!(v, version(&[("a.cedar", OK)]));
    let spaced = format!("{OK}\n");
    assert_ne!(v, version(&[("a.cedar", &spaced), ("b.cedar", other)]));
    let mut schema_changed = source(&[("a.cedar", OK), ("b.cedar", other)]);
    schema_changed.schema.push('\n');
    assert_ne!(
        v,
        Policy::load(&schema_changed, Some(&td()))
            .unwrap()
            .version()
    );
}

#[test]
fn syntax_errors_name_file_line_and_column_in_every_file() {
    let broken = "@id(\"x\")\npermit (principal, action, resource)\nwhen { resource.path == };\n";
    let got = problems(&[("b.cedar", broken), ("a.cedar", OK), ("c.cedar", broken)]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with("b.cedar:3:"), "{got:?}");
    assert!(got[1].starts_with("c.cedar:3:"), "{got:?}");
}

#[test]
fn validation_errors_name_the_policy_line_in_its_file() {
    let typo = "// first line\n\n@id(\"typo\")\npermit (principal, action in [Action::\"Issue\", Action::\"Renew\"], resource)\nwhen {\n  principal.pth == \"/a\"\n};\n";
    let bad_type = "@id(\"ttl\")\npermit (principal, action == Action::\"Issue\", resource)\nwhen { context.key_type > 3 };\n";
    let got = problems(&[
        ("typo.cedar", typo),
        ("ok.cedar", OK),
        ("ttl.cedar", bad_type),
    ]);
    assert_eq!(
        got,
        [
            "ttl.cedar:3:8: for policy `ttl`, unexpected type: expected Long but saw String",
            // Once for each principal type the policy applies to.
            "typo.cedar:6:3: for policy `typo`, attribute `pth` on entity type `Node` not \
             found (help: did you mean `path`?)",
            "typo.cedar:6:3: for policy `typo`, attribute `pth` on entity type `Workload` not \
             found (help: did you mean `path`?)",
        ]
    );
    // Strict mode: an optional attribute needs `has`.
    let unguarded =
        "@id(\"u\")\npermit (principal, action, resource) when { context.ttl_seconds < 600 };\n";
    let got = problems(&[("u.cedar", unguarded)]);
    assert!(got[0].starts_with("u.cedar:2:"), "{got:?}");
}

#[test]
fn every_policy_needs_a_unique_valid_id() {
    let text = "permit (principal, action, resource);\n\n@id(\"a\")\npermit (principal, action, resource);\n@id(\"a\")\nforbid (principal, action, resource);\n@id(\"no spaces\")\npermit (principal, action, resource);\n";
    assert_eq!(
        problems(&[("ids.cedar", text)]),
        [
            "ids.cedar:1:1: the policy has no @id(\"…\")",
            "ids.cedar:5:1: @id(\"a\") is already used at ids.cedar:3",
            "ids.cedar:7:1: @id(\"no spaces\") must be 1 to 128 of A-Z a-z 0-9 . _ : - (no \
             spaces or commas)",
        ]
    );
    let got = problems(&[("a.cedar", OK), ("b.cedar", OK)]);
    assert_eq!(
        got,
        ["b.cedar:1:1: @id(\"ok\") is already used at a.cedar:1"]
    );
}

#[test]
fn annotations_are_known_and_well_formed() {
    let text = r#"@id("a")
@max_ttl("600")
permit (principal, action, resource);
@id("b")
@max_ttl_seconds("10")
@server_auth("yes")
permit (principal, action, resource);
@id("c")
@max_ttl_seconds("600")
forbid (principal, action, resource);
@id("d")
@quorum("9")
@hold(" ")
permit (principal, action, resource);
@id("e")
@hold("why")
forbid (principal, action, resource);
"#;
    assert_eq!(
        problems(&[("n.cedar", text)]),
        [
            "n.cedar:1:1: unknown annotation @max_ttl (known: @id, @description, \
             @max_ttl_seconds, @server_auth, @hold, @quorum)",
            "n.cedar:4:1: @max_ttl_seconds(\"10\") must be whole seconds from 60 to 2592000",
            "n.cedar:4:1: @server_auth(\"yes\") must be \"true\" or \"false\"",
            "n.cedar:8:1: @max_ttl_seconds shapes what a permit grants; a forbid cannot carry it",
            "n.cedar:11:1: @hold names why the request waits for approvers: 1 to 200 characters",
            "n.cedar:11:1: @quorum(\"9\") must be a number of approvers from 1 to 5",
            "n.cedar:15:1: @hold shapes what a permit grants; a forbid cannot carry it",
        ]
    );
}

#[test]
fn a_policy_in_another_trust_domain_is_refused_naming_both() {
    let foreign = r#"@id("staging")
permit (principal, action, resource in TrustDomain::"staging.example");
"#;
    assert_eq!(
        problems(&[("f.cedar", foreign)]),
        [
            "f.cedar:1:1: names trust domain staging.example, but this server's trust domain is \
          prod.example"
        ]
    );
    let by_id = r#"@id("one")
permit (principal == Node::"spiffe://staging.example/node/a", action, resource);
@id("bad")
permit (principal, action, resource == SpiffeId::"not a spiffe id");
"#;
    let got = problems(&[("g.cedar", by_id)]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].contains("names trust domain staging.example"),
        "{got:?}"
    );
    assert!(got[1].starts_with("g.cedar:3:1: SpiffeId::\"not a spiffe id\" is not a SPIFFE ID"));

    // Without the server's trust domain (`mintgate policy check`), policies must agree.
    let home = r#"@id("home")
permit (principal, action, resource in TrustDomain::"prod.example");
"#;
    let mixed = source(&[("a.cedar", home), ("b.cedar", foreign)]);
    assert_eq!(
        problems_in(&mixed, None),
        [
            "b.cedar:1:1: names trust domain staging.example, but other policies name \
          prod.example: a policy serves one trust domain"
        ]
    );
    assert!(Policy::load(&source(&[("a.cedar", home)]), None).is_ok());
}

#[test]
fn templates_are_refused() {
    let text = "@id(\"t\")\npermit (principal == ?principal, action, resource);\n";
    assert_eq!(
        problems(&[("t.cedar", text)]),
        ["t.cedar:1:1: templates (policies with ?principal or ?resource) are not supported"]
    );
}

#[test]
fn schema_problems_name_the_schema() {
    let mut broken = source(&[("a.cedar", OK)]);
    broken.schema = "entity Node {\n  path: String,\n;\n".to_owned();
    let got = problems_in(&broken, Some(&td()));
    assert!(got[0].starts_with("schema.cedarschema:3:"), "{got:?}");

    // A schema that does not describe what Mintgate sends is refused, not met at run time.
    let mut narrow = source(&[("a.cedar", OK)]);
    narrow.schema = narrow.schema.replace("  join_token: Bool,\n", "");
    let got = problems_in(&narrow, Some(&td()));
    // Issue, Renew, and Hold for a node and for a workload.
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(
        got[0].starts_with(
            "schema.cedarschema: does not describe the requests Mintgate makes: a Node's \
             Action::\"Issue\": "
        ),
        "{got:?}"
    );
}

#[test]
fn a_schema_without_an_operation_is_refused_naming_it() {
    // Without the action, or with a caller Mintgate sends missing from it.
    let mut missing = source(&[("a.cedar", OK)]);
    let start = missing.schema.find("action ApproveProposal").unwrap();
    let end = start + missing.schema[start..].find("};").unwrap() + 2;
    missing.schema.replace_range(start..end, "");
    missing.schema = missing.schema.replace(
        "  principal: [Operator, Workload, Node],\n  resource: [TrustDomain],\n  context: \
         Operation,\n};\n\n// Admin/ProposePolicy",
        "  principal: [Operator, Workload],\n  resource: [TrustDomain],\n  context: \
         Operation,\n};\n\n// Admin/ProposePolicy",
    );
    assert_eq!(
        problems_in(&missing, Some(&td())),
        [
            "schema.cedarschema: does not describe the requests Mintgate makes: an Operator's \
             Action::\"ApproveProposal\": request's action `Action::\"ApproveProposal\"` is not \
             declared in the schema",
            "schema.cedarschema: does not describe the requests Mintgate makes: a Node's \
             Action::\"WatchRevocations\": principal type `Node` is not valid for \
             `Action::\"WatchRevocations\"`",
        ]
    );

    // Operators must be able to hold roles.
    let mut no_roles = source(&[("a.cedar", OK)]);
    no_roles.schema = no_roles.schema.replace(
        "entity Operator in [Role, TrustDomain]",
        "entity Operator in [TrustDomain]",
    );
    let got = problems_in(&no_roles, Some(&td()));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(
            "schema.cedarschema: does not describe the requests Mintgate makes: every request \
             of an Operator: entity does not conform to the schema: "
        ) && got[0].contains("Role"),
        "{got:?}"
    );
}

#[test]
fn a_policy_that_leaves_the_action_open_is_checked_against_every_action() {
    // Operator actions act on trust domains and proposals too, which have no `path`.
    let open =
        "@id(\"open\")\npermit (principal, action, resource) when { resource.path == \"/a\" };\n";
    assert_eq!(
        problems(&[("o.cedar", open)]),
        [
            "o.cedar:2:45: for policy `open`, attribute `path` on entity type `Proposal` not \
             found (help: did you mean `author`?)",
            "o.cedar:2:45: for policy `open`, attribute `path` on entity type `TrustDomain` not \
             found",
        ]
    );
}

#[test]
fn positions_count_lines_and_characters() {
    assert_eq!(position("ab\ncé\nx", 0), (1, 1));
    assert_eq!(position("ab\ncé\nx", 3), (2, 1));
    assert_eq!(position("ab\ncé\nx", 7), (3, 1));
    assert_eq!(position("ab\ncé\nx", 6), (2, 3));
    assert_eq!(position("ab", 99), (1, 3));
}
