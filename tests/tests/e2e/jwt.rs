//! The `jwt` attestor end to end: a node enrolls a Kubernetes workload with its projected
//! service-account token (ES256, verified against a JWKS file written here with a key made
//! here), gets exactly the identity the token maps to, and every bad token is refused with its
//! own reason; the Cedar policy sees the namespace.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mintgate_domain::TrustDomain;
use mintgate_domain::jwt::{DEFAULT_SPIFFE_ID_TEMPLATE, IdentityTemplate, JwtRules};
use mintgate_domain::policy::{PolicyFile, PolicySource};
use mintgate_domain::store::CertificateStore;
use mintgate_sdk::agent::{AgentConfig, AgentError, run};
use mintgate_sdk::v1;
use mintgate_server::config::{JwksSource, JwtSettings};
use mintgate_tests::csr::{Expected, check_issued_as, csr};
use mintgate_tests::{Backend, Options, TRUST_DOMAIN, TestServer, both_backends};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

use crate::governance::reason;
use crate::issuance::enroll_request;
use crate::sdk::JumpingClock;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const AUDIENCE: &str = "mintgate";
const WEB_API: &str = "spiffe://dev.mintgate.local/ns/web/sa/api";

/// The cluster's token signer: P-256 keys made for this test, published in a JWKS file.
struct Cluster {
    keys: Vec<(String, EcdsaKeyPair)>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Self {
        let cluster = Self {
            keys: vec![("k1".to_owned(), new_key())],
            dir: tempfile::tempdir().unwrap(),
        };
        cluster.publish();
        cluster
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("jwks.json")
    }

    /// Writes every key to the JWKS file.
    fn publish(&self) {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|(kid, key)| {
                let point = key.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                       "x": b64(&point[1..33]), "y": b64(&point[33..])})
            })
            .collect();
        std::fs::write(self.path(), json!({ "keys": keys }).to_string()).unwrap();
    }

    /// The server's `[attestation.jwt]`: this cluster's issuer, audience and key file.
    fn options(&self, backend: Backend, min_refresh: Duration) -> Options {
        let td = TrustDomain::parse(TRUST_DOMAIN).unwrap();
        Options {
            jwt: Some(JwtSettings {
                rules: JwtRules {
                    issuer: ISSUER.to_owned(),
                    audiences: vec![AUDIENCE.to_owned()],
                    clock_skew: Duration::from_secs(60),
                    max_token_age: Duration::from_secs(24 * 3600),
                    spiffe_id: IdentityTemplate::parse(DEFAULT_SPIFFE_ID_TEMPLATE, &td).unwrap(),
                },
                jwks: JwksSource::File(self.path()),
                refresh: Duration::from_secs(3600),
                min_refresh,
            }),
            ..Options::new(backend)
        }
    }

    /// A token signed by the key `kid` names (the first key when none has it), with `header`'s
    /// and `claims`' fields as given.
    fn sign(&self, header: &Value, claims: &Value) -> String {
        let kid = header["kid"].as_str().unwrap_or("k1");
        let key = self
            .keys
            .iter()
            .find(|(k, _)| k == kid)
            .map_or(&self.keys[0].1, |(_, key)| key);
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", b64(signature.as_ref()))
    }
}

fn new_key() -> EcdsaKeyPair {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn header() -> Value {
    json!({"alg": "ES256", "kid": "k1", "typ": "JWT"})
}

/// What Kubernetes puts in a token projected into pod `<sa>-0`, issued a minute before `now`.
fn claims(now: i64, namespace: &str, account: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": [AUDIENCE],
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 540,
        "sub": format!("system:serviceaccount:{namespace}:{account}"),
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": account, "uid": "5c1e"},
            "pod": {"name": format!("{account}-0"), "uid": "8a7b"},
        },
    })
}

async fn enroll(
    server: &TestServer,
    request_id: &str,
    spiffe_id: &str,
    token: &str,
) -> Result<v1::IssueResponse, tonic::Status> {
    let (csr_pem, _key) = csr(spiffe_id, &[]);
    let request = v1::EnrollRequest {
        service_account_token: token.to_owned(),
        ..enroll_request(request_id, &csr_pem)
    };
    let mut node = server.node_provisioning().await;
    node.enroll(request).await.map(tonic::Response::into_inner)
}

both_backends!(
    a_service_account_token_enrolls_exactly_its_mapped_identity,
    enrolls_mapped_identity
);
async fn enrolls_mapped_identity(backend: Backend) {
    let cluster = Cluster::new();
    let server = TestServer::spawn_with(cluster.options(backend, Duration::from_secs(30))).await;
    let now = server.clock.now_odt().unix_timestamp();
    let token = cluster.sign(&header(), &claims(now, "web", "api"));

    let issued = enroll(&server, "jwt-1", WEB_API, &token).await.unwrap();
    assert_eq!(issued.spiffe_id, WEB_API);
    check_issued_as(
        &issued.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        &Expected::with_dns(WEB_API, &[]),
        now,
    );
    // The audit trail says which service account vouched, never the token.
    let chain = server.store().audit_chain().await.unwrap();
    let approved = chain
        .iter()
        .find(|e| e.event.action == "request.approved")
        .unwrap();
    assert_eq!(approved.event.policy_rule.as_deref(), Some("jwt-workload"));
    let detail = approved.event.detail.as_deref().unwrap();
    assert!(
        detail.contains("via node_cert+jwt (service account web/api, pod api-0)"),
        "{detail}"
    );
    assert!(!serde_json::to_string(&chain).unwrap().contains(&token));

    // The same token for another identity, and that identity without a token.
    let other = "spiffe://dev.mintgate.local/ns/web/sa/admin";
    let status = enroll(&server, "jwt-2", other, &token).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "JWT_WRONG_IDENTITY");
    let status = enroll(&server, "jwt-3", other, "").await.unwrap_err();
    assert_eq!(reason(&status), "POLICY_DENIED");
}

both_backends!(
    each_bad_service_account_token_is_refused_with_its_reason,
    bad_tokens
);
async fn bad_tokens(backend: Backend) {
    let cluster = Cluster::new();
    let server = TestServer::spawn_with(cluster.options(backend, Duration::from_secs(30))).await;
    let now = server.clock.now_odt().unix_timestamp();
    let good = claims(now, "web", "api");
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        change(&mut c);
        cluster.sign(&header(), &c)
    };
    let unsigned = |alg: &str| {
        let h = b64(json!({"alg": alg, "kid": "k1"}).to_string().as_bytes());
        format!("{h}.{}.", b64(good.to_string().as_bytes()))
    };
    let signed = cluster.sign(&header(), &good);
    let (head, rest) = signed.split_once('.').unwrap();
    let forged_claims = b64(claims(now, "kube-system", "api").to_string().as_bytes());
    let forged = format!(
        "{head}.{forged_claims}.{}",
        rest.rsplit_once('.').unwrap().1
    );
    let (none, hs256) = (unsigned("none"), unsigned("HS256"));
    let cases = [
        ("not.a-token", "JWT_MALFORMED"),
        (none.as_str(), "JWT_ALG_REFUSED"),
        (hs256.as_str(), "JWT_ALG_REFUSED"),
        (
            &cluster.sign(&json!({"alg": "ES256", "kid": "k9"}), &good),
            "JWT_KEY_UNKNOWN",
        ),
        (
            &cluster.sign(&json!({"alg": "RS256", "kid": "k1"}), &good),
            "JWT_KEY_MISMATCH",
        ),
        (forged.as_str(), "JWT_SIGNATURE_INVALID"),
        (
            &with(&|c| c["iss"] = json!("https://evil")),
            "JWT_ISSUER_MISMATCH",
        ),
        (
            &with(&|c| c["aud"] = json!(["vault"])),
            "JWT_AUDIENCE_MISMATCH",
        ),
        (&with(&|c| c["exp"] = json!(now - 120)), "JWT_EXPIRED"),
        (&with(&|c| c["nbf"] = json!(now + 600)), "JWT_NOT_YET_VALID"),
        (
            &with(&|c| {
                c["iat"] = json!(now - 2 * 24 * 3600);
                c["nbf"] = json!(now - 2 * 24 * 3600);
            }),
            "JWT_TOO_OLD",
        ),
        (
            &with(&|c| c["kubernetes.io"]["namespace"] = json!("../etc")),
            "JWT_CLAIMS_INVALID",
        ),
    ];
    for (i, (token, expected)) in cases.iter().enumerate() {
        let status = enroll(&server, &format!("bad-{i}"), WEB_API, token)
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{expected}: {status:?}"
        );
        assert_eq!(reason(&status), *expected, "{status:?}");
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.metadata.get("fault").map(String::as_str), Some("user"));
        assert!(!status.message().contains(token), "{status:?}");
    }
    // Recorded as DENIED with its reason, like every refusal of attestation.
    let mut node = server.node_provisioning().await;
    let record = node
        .get_request(v1::GetRequestRequest {
            request_id: "bad-8".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.state(), v1::RequestState::Denied);
    assert_eq!(record.reason, "JWT_EXPIRED");

    // The good token expires on the server's clock too.
    server.clock.advance(Duration::from_secs(600 + 60));
    let status = enroll(&server, "late-1", WEB_API, &signed)
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "JWT_EXPIRED");
}

both_backends!(
    the_policy_sees_the_namespace_and_a_rotated_key_is_read_on_first_use,
    namespace_policy_and_rotation
);
async fn namespace_policy_and_rotation(backend: Backend) {
    let mut cluster = Cluster::new();
    let mut policy = PolicySource::dev();
    policy.files.push(PolicyFile {
        name: "no-batch.cedar".to_owned(),
        text: r#"@id("no-batch")
forbid (principal, action == Action::"Issue", resource)
when { context has kubernetes && context.kubernetes.namespace == "batch" };
"#
        .to_owned(),
    });
    let options = Options {
        policy: Some(policy),
        ..cluster.options(backend, Duration::ZERO)
    };
    let server = TestServer::spawn_with(options).await;
    let now = server.clock.now_odt().unix_timestamp();

    let batch = "spiffe://dev.mintgate.local/ns/batch/sa/job";
    let token = cluster.sign(&header(), &claims(now, "batch", "job"));
    let status = enroll(&server, "ns-1", batch, &token).await.unwrap_err();
    assert_eq!(reason(&status), "POLICY_DENIED");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(
        info.metadata
            .get("determining_policies")
            .map(String::as_str),
        Some("no-batch")
    );
    let token = cluster.sign(&header(), &claims(now, "web", "api"));
    enroll(&server, "ns-2", WEB_API, &token).await.unwrap();

    // The cluster rotates to a key the server has not read: the first token naming it makes
    // the server read the key set again.
    cluster.keys.push(("k2".to_owned(), new_key()));
    let k2 = json!({"alg": "ES256", "kid": "k2"});
    let token = cluster.sign(&k2, &claims(now, "web", "worker"));
    let worker = "spiffe://dev.mintgate.local/ns/web/sa/worker";
    let status = enroll(&server, "rot-1", worker, &token).await.unwrap_err();
    assert_eq!(reason(&status), "JWT_KEY_UNKNOWN");
    cluster.publish();
    let issued = enroll(&server, "rot-2", worker, &token).await.unwrap();
    assert_eq!(issued.spiffe_id, worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_jwt_attestor_refuses_tokens() {
    let cluster = Cluster::new();
    let server = TestServer::spawn(Backend::Sqlite).await;
    let now = server.clock.now_odt().unix_timestamp();
    let token = cluster.sign(&header(), &claims(now, "web", "api"));
    let status = enroll(&server, "off-1", WEB_API, &token).await.unwrap_err();
    assert_eq!(reason(&status), "JWT_NOT_CONFIGURED");
}

both_backends!(
    the_agent_reads_its_service_account_token_from_its_file_for_each_enrollment,
    agent_token_file
);
async fn agent_token_file(backend: Backend) {
    use crate::agent::{eventually, issuer_of, web_agent};
    use crate::rotation::{custodians, key_id_of, prepare, revoke_issuer, successor};
    let cluster = Cluster::new();
    let server = TestServer::spawn_with(Options {
        jwt: cluster.options(backend, Duration::from_secs(30)).jwt,
        ..custodians(backend)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (token_file, out) = (dir.path().join("token"), dir.path().join("certs"));
    let config = AgentConfig {
        spiffe_id: WEB_API.into(),
        service_account_token_file: Some(token_file.clone()),
        ..web_agent(&server, out.clone())
    };
    // No renewal comes due: the agent's time stands still.
    let clock = Arc::new(JumpingClock {
        clock: server.clock.clone(),
        jumps: 0.into(),
    });

    // Without the file, the agent names it and enrolls nothing.
    let err = run(config.clone(), clock.clone(), std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::Io { path, .. } if *path == token_file),
        "{err}"
    );

    // The kubelet's token; its trailing newline is no part of it.
    let now = server.clock.now_odt().unix_timestamp();
    let token = cluster.sign(&header(), &claims(now, "web", "api"));
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(config, clock, async {
        let _ = stopped.await;
    }));
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    eventually("the first certificate", || !read("cert.pem").is_empty()).await;
    let expected = Expected::with_dns(WEB_API, &[]);
    check_issued_as(&read("cert.pem"), &server.pki.ca.cert_pem, &expected, now);

    // A quarter of an hour on, that token has expired and the kubelet has put a new one in the
    // file. The CA is revoked: the agent enrolls again, with the new token.
    server.clock.advance(Duration::from_secs(900));
    let now = server.clock.now_odt().unix_timestamp();
    let status = enroll(&server, "stale", WEB_API, &token).await.unwrap_err();
    assert_eq!(reason(&status), "JWT_EXPIRED");
    std::fs::write(
        &token_file,
        cluster.sign(&header(), &claims(now, "web", "api")),
    )
    .unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (next, key) = successor(&server, keys.path());
    prepare(&server, &next, &key).await;
    revoke_issuer(&server, &key_id_of(&server.pki.ca.cert_pem)).await;
    let next_id = key_id_of(&next.cert_pem);
    eventually("a certificate from the successor", || {
        let cert = read("cert.pem");
        !cert.is_empty() && issuer_of(&cert) == next_id
    })
    .await;
    check_issued_as(&read("cert.pem"), &next.cert_pem, &expected, now);
    assert!(!task.is_finished(), "the agent goes on");
    drop(stop);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    server.shutdown().await;
}
