//! The CA runbook (docs/ca-lifecycle.md) with the tools it names: openssl makes the next CA's
//! key and CSR and signs it with the (dev) offline root, grpcurl prepares and activates it with
//! two custodians, watches the bundle and revokes the old CA; openssl verifies what the new CA
//! issues against the bundle.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mintgate_tests::{Backend, Options, TestServer, tool_available};

use crate::tools::Grpcurl;

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The key id as the runbook reads it: openssl's subjectKeyIdentifier, lowercase, no colons.
fn key_id(dir: &Path, cert: &str) -> String {
    let text = openssl(
        dir,
        &[
            "x509",
            "-in",
            cert,
            "-noout",
            "-ext",
            "subjectKeyIdentifier",
        ],
    );
    text.lines()
        .last()
        .unwrap()
        .trim()
        .replace(':', "")
        .to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_runbook_works_with_openssl_and_grpcurl() {
    if !tool_available("grpcurl") || !tool_available("openssl") {
        return;
    }
    let server = TestServer::spawn_with(Options {
        ca_publish: Duration::ZERO,
        ..Options::new(Backend::Sqlite)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("root.pem"), &server.pki.root.cert_pem).unwrap();
    std::fs::write(d.join("root.key"), &server.pki.root.key_pem).unwrap();
    std::fs::write(d.join("old.pem"), &server.pki.ca.cert_pem).unwrap();
    let alice = Grpcurl::holding(
        &server,
        &server.pki.alice.cert_pem,
        &server.pki.alice.key_pem,
    );
    let bob = Grpcurl::holding(&server, &server.pki.bob.cert_pem, &server.pki.bob.key_pem);
    let approve = |id: &str| {
        let (out, answer) = bob.json(
            &[],
            &format!(r#"{{"proposal_id":"{id}"}}"#),
            "mintgate.v1.Admin/ApproveProposal",
        );
        assert!(out.status.success(), "{out:?}");
        assert_eq!(answer[0]["proposal"]["state"], "PROPOSAL_STATE_APPLIED");
    };

    // 1-2. The next CA's key and CSR; the offline root signs it.
    openssl(
        d,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca-2.key",
            "-out",
            "next.csr",
            "-subj",
            "/O=Mintgate Dev/CN=Mintgate Dev Issuing CA 2",
        ],
    );
    std::fs::set_permissions(
        d.join("ca-2.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(
        d.join("ca.ext"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "next.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "ca.ext",
            "-out",
            "next.pem",
        ],
    );
    let chain = std::fs::read_to_string(d.join("next.pem")).unwrap() + &server.pki.root.cert_pem;
    let next = key_id(d, "next.pem");
    let old = key_id(d, "old.pem");

    // 3. Prepare (alice), approve (bob); it is in the bundle the node follows.
    let body = serde_json::json!({
        "request_id": "prepare-2",
        "action": "CA_ACTION_PREPARE",
        "chain_pem": chain,
        "key": d.join("ca-2.key").display().to_string(),
    })
    .to_string();
    let (out, proposed) = alice.json(&[], &body, "mintgate.v1.Admin/ProposeCa");
    assert!(out.status.success(), "{out:?}");
    let proposal = &proposed[0]["proposal"];
    assert_eq!(proposal["kind"], "PROPOSAL_KIND_CA");
    assert_eq!(proposal["subject"], next.as_str());
    approve(proposal["id"].as_str().unwrap());
    let node = Grpcurl::holding(&server, &server.pki.node.cert_pem, &server.pki.node.key_pem);
    let (_, bundles) = node.json(
        &["-max-time", "2"],
        "{}",
        "mintgate.v1.Revocation/WatchTrustBundle",
    );
    let states: Vec<(String, String)> = bundles[0]["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["keyId"].as_str().unwrap().to_owned(),
                a["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&(next.clone(), "CA_STATE_PREPARED".to_owned())),
        "{states:?}"
    );
    assert!(
        states.contains(&(old.clone(), "CA_STATE_ACTIVE".to_owned())),
        "{states:?}"
    );

    // 5. Activate; what is issued now comes from the new CA and openssl verifies it against
    // the bundle's root through the new CA.
    let body =
        format!(r#"{{"request_id":"activate-2","action":"CA_ACTION_ACTIVATE","key_id":"{next}"}}"#);
    let (out, proposed) = alice.json(&[], &body, "mintgate.v1.Admin/ProposeCa");
    assert!(out.status.success(), "{out:?}");
    approve(proposed[0]["proposal"]["id"].as_str().unwrap());
    let web = enroll_new(&server).await;
    std::fs::write(d.join("web.pem"), &web).unwrap();
    let verified = openssl(
        d,
        &[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "next.pem",
            "web.pem",
        ],
    );
    assert!(verified.contains("web.pem: OK"), "{verified}");

    // The compromise path on the old (now retiring) CA: alice proposes, bob approves.
    let body = format!(
        r#"{{"request_id":"compromise-1","key_id":"{old}","reason":"REVOCATION_REASON_CA_COMPROMISE"}}"#
    );
    let (out, proposed) = alice.json(&[], &body, "mintgate.v1.Revocation/RevokeIssuer");
    assert!(out.status.success(), "{out:?}");
    approve(proposed[0]["proposal"]["id"].as_str().unwrap());
    let (_, feed) = node.json(
        &["-max-time", "2"],
        r#"{"cursor":0}"#,
        "mintgate.v1.Revocation/WatchRevocations",
    );
    let entry = feed
        .iter()
        .find_map(|m| m.get("event").filter(|e| e["issuer"] == true))
        .unwrap_or_else(|| panic!("an issuer entry: {feed:?}"));
    assert_eq!(entry["issuerKeyId"], old.as_str());
    assert_eq!(entry["reason"], "REVOCATION_REASON_CA_COMPROMISE");
    server.shutdown().await;
}

/// A workload certificate issued now (by whichever CA is active), its chain PEM.
async fn enroll_new(server: &TestServer) -> String {
    let (csr_pem, _key) = mintgate_tests::csr::csr(crate::issuance::WORKLOAD, &[]);
    let issued = server
        .node()
        .await
        .enroll(crate::issuance::enroll_request("web-next", &csr_pem))
        .await
        .unwrap();
    issued.certificate_chain_pem
}
