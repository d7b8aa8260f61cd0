//! Each refusal of a service-account token, with keys generated here (none is committed).

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use rsa::rand_core::OsRng;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

use super::*;
use crate::service::Attested;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const AUDIENCE: &str = "mintgate";
const NOW: i64 = 1_700_000_000;

/// A P-256 key pair (kid "ec-1") and a 2048-bit RSA one (kid "rsa-1"), made once per run.
struct Keys {
    ec: EcdsaKeyPair,
    rsa: rsa::pkcs1v15::SigningKey<sha2::Sha256>,
    jwks: Value,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = ec.public_key().as_ref();
        let rsa_key = rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
        let jwks = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec-1", "use": "sig", "alg": "ES256",
             "x": b64(&point[1..33]), "y": b64(&point[33..])},
            {"kty": "RSA", "kid": "rsa-1", "use": "sig",
             "n": b64(&rsa_key.n().to_bytes_be()), "e": b64(&rsa_key.e().to_bytes_be())},
        ]});
        Keys {
            ec,
            rsa: rsa::pkcs1v15::SigningKey::new(rsa_key),
            jwks,
        }
    })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn set() -> JwkSet {
    JwkSet::parse(keys().jwks.to_string().as_bytes()).unwrap()
}

fn rules() -> JwtRules {
    let td = TrustDomain::parse("dev.mintgate.local").unwrap();
    JwtRules {
        issuer: ISSUER.to_owned(),
        audiences: vec!["other".to_owned(), AUDIENCE.to_owned()],
        clock_skew: Duration::from_secs(60),
        max_token_age: Duration::from_secs(3600),
        spiffe_id: IdentityTemplate::parse(DEFAULT_SPIFFE_ID_TEMPLATE, &td).unwrap(),
    }
}

/// The claims of a token Kubernetes projects into pod `web-0` of service account `web/api`.
fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": [AUDIENCE],
        "iat": NOW - 60,
        "nbf": NOW - 60,
        "exp": NOW + 540,
        "sub": "system:serviceaccount:web:api",
        "kubernetes.io": {
            "namespace": "web",
            "serviceaccount": {"name": "api", "uid": "0b1e"},
            "pod": {"name": "web-0", "uid": "9f2c"},
            "node": {"name": "node-a", "uid": "77aa"},
        },
    })
}

/// Signs `claims` with `alg` under `kid` by the key of `signer` ("ec" or "rsa").
fn token(alg: &str, kid: &str, signer: &str, claims: &Value) -> String {
    let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = match signer {
        "ec" => keys()
            .ec
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec(),
        "rsa" => keys().rsa.sign(input.as_bytes()).to_vec(),
        _ => Vec::new(),
    };
    format!("{input}.{}", b64(&signature))
}

fn at(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(seconds).unwrap()
}

fn check(token: &str) -> Result<VerifiedToken, JwtError> {
    verify(token, &set(), &rules(), at(NOW))
}

fn with(change: impl FnOnce(&mut Value)) -> Value {
    let mut c = claims();
    change(&mut c);
    c
}

#[test]
fn es256_and_rs256_tokens_verify_and_map_to_their_service_account() {
    for (alg, kid, signer) in [("ES256", "ec-1", "ec"), ("RS256", "rsa-1", "rsa")] {
        let verified = check(&token(alg, kid, signer, &claims())).unwrap();
        assert_eq!(
            verified.spiffe_id.as_str(),
            "spiffe://dev.mintgate.local/ns/web/sa/api"
        );
        assert_eq!(
            verified.account,
            ServiceAccount {
                namespace: "web".to_owned(),
                name: "api".to_owned(),
                pod: Some("web-0".to_owned()),
            }
        );
    }
    // A single audience as a string, no pod, no sub: still a service account.
    let plain = with(|c| {
        c["aud"] = json!(AUDIENCE);
        c.as_object_mut().unwrap().remove("sub");
        c["kubernetes.io"].as_object_mut().unwrap().remove("pod");
    });
    assert_eq!(
        check(&token("ES256", "ec-1", "ec", &plain))
            .unwrap()
            .account
            .pod,
        None
    );
}

#[test]
fn algorithms_other_than_rs256_and_es256_are_refused() {
    let payload = b64(claims().to_string().as_bytes());
    for alg in ["none", "HS256", "PS256", "ES384", "RS512", "EdDSA"] {
        let header = b64(json!({"alg": alg, "kid": "rsa-1"}).to_string().as_bytes());
        // `none` with an empty signature, the others with something in it.
        for sig in ["", "AAAA"] {
            let t = format!("{header}.{payload}.{sig}");
            assert_eq!(check(&t), Err(JwtError::AlgRefused), "{alg}");
        }
    }
    // HS256 keyed with the RSA key's public modulus (the classic confusion) gets nowhere either.
    let err = check(&token("HS256", "rsa-1", "rsa", &claims())).unwrap_err();
    assert_eq!(err.reason(), "JWT_ALG_REFUSED");
}

#[test]
fn a_key_verifies_tokens_of_its_own_algorithm_only() {
    // An RS256 token naming the EC key, and an ES256 token naming the RSA key.
    assert_eq!(
        check(&token("RS256", "ec-1", "rsa", &claims())),
        Err(JwtError::KeyMismatch)
    );
    assert_eq!(
        check(&token("ES256", "rsa-1", "ec", &claims())),
        Err(JwtError::KeyMismatch)
    );
    // Without a kid, only keys of the token's algorithm are tried.
    let header = b64(json!({"alg": "ES256"}).to_string().as_bytes());
    let signed = token("ES256", "ec-1", "ec", &claims());
    let mut parts = signed.splitn(2, '.');
    let _ = parts.next();
    let no_kid = format!("{header}.{}", parts.next().unwrap());
    // The header changed, so the signature no longer covers it.
    assert_eq!(check(&no_kid), Err(JwtError::SignatureInvalid));
    let input = format!("{header}.{}", b64(claims().to_string().as_bytes()));
    let sig = keys()
        .ec
        .sign(&SystemRandom::new(), input.as_bytes())
        .unwrap();
    assert!(check(&format!("{input}.{}", b64(sig.as_ref()))).is_ok());
}

#[test]
fn an_unknown_kid_and_a_bad_signature_are_refused() {
    assert_eq!(
        check(&token("ES256", "ec-9", "ec", &claims())),
        Err(JwtError::KeyUnknown)
    );
    // A signed token whose claims were changed afterwards.
    let good = token("RS256", "rsa-1", "rsa", &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let forged = b64(
        with(|c| c["kubernetes.io"]["namespace"] = json!("kube-system"))
            .to_string()
            .as_bytes(),
    );
    let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
    assert_eq!(check(&tampered), Err(JwtError::SignatureInvalid));
    // Signed by another P-256 key than the one its kid names.
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let stranger =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let good = token("ES256", "ec-1", "ec", &claims());
    let input = good.rsplit_once('.').unwrap().0;
    let sig = stranger.sign(&rng, input.as_bytes()).unwrap();
    assert_eq!(
        check(&format!("{input}.{}", b64(sig.as_ref()))),
        Err(JwtError::SignatureInvalid)
    );
    assert_eq!(check(&format!("{input}.")), Err(JwtError::SignatureInvalid));
}

#[test]
fn issuer_and_audience_must_match() {
    let t = |c: &Value| check(&token("ES256", "ec-1", "ec", c));
    assert_eq!(
        t(&with(|c| c["iss"] = json!("https://evil"))),
        Err(JwtError::IssuerMismatch)
    );
    assert_eq!(
        t(&with(|c| {
            c.as_object_mut().unwrap().remove("iss");
        })),
        Err(JwtError::IssuerMismatch)
    );
    assert_eq!(
        t(&with(|c| c["aud"] = json!(["api", "vault"]))),
        Err(JwtError::AudienceMismatch)
    );
    assert_eq!(
        t(&with(|c| c["aud"] = json!("api"))),
        Err(JwtError::AudienceMismatch)
    );
    assert!(t(&with(|c| c["aud"] = json!(["api", "other"]))).is_ok());
}

#[test]
fn times_are_checked_on_the_given_clock_with_skew() {
    let t = token("ES256", "ec-1", "ec", &claims());
    let exp = NOW + 540;
    let check_at = |now| verify(&t, &set(), &rules(), at(now));
    // exp + 60 s of skew is the first instant refused.
    assert!(check_at(exp + 59).is_ok());
    assert_eq!(check_at(exp + 60), Err(JwtError::Expired));
    // Before nbf/iat by more than the skew: not yet valid.
    assert!(check_at(NOW - 120).is_ok());
    assert_eq!(check_at(NOW - 121), Err(JwtError::NotYetValid));
    let future_iat = with(|c| {
        c["iat"] = json!(NOW + 600);
        c["nbf"] = json!(NOW - 60);
        c["exp"] = json!(NOW + 6000);
    });
    assert_eq!(
        check(&token("ES256", "ec-1", "ec", &future_iat)),
        Err(JwtError::NotYetValid)
    );
    // Issued longer ago than max_token_age (+ skew), though not expired.
    let old = with(|c| {
        c["iat"] = json!(NOW - 3661);
        c["nbf"] = json!(NOW - 3661);
        c["exp"] = json!(NOW + 6000);
    });
    assert_eq!(
        check(&token("ES256", "ec-1", "ec", &old)),
        Err(JwtError::TooOld)
    );
    let no_exp = with(|c| {
        c.as_object_mut().unwrap().remove("exp");
    });
    assert_eq!(
        check(&token("ES256", "ec-1", "ec", &no_exp))
            .unwrap_err()
            .reason(),
        "JWT_MALFORMED"
    );
}

#[test]
fn malformed_tokens_are_refused() {
    let good = token("ES256", "ec-1", "ec", &claims());
    let header = b64(json!({"alg": "ES256", "kid": "ec-1", "crit": ["exp"]})
        .to_string()
        .as_bytes());
    let crit = format!("{header}.{}", good.split_once('.').unwrap().1);
    for bad in [
        String::new(),
        "a.b".to_owned(),
        format!("{good}.extra.parts"),
        format!("!!{good}"),
        "e30.e30.AAAA".to_owned(),
        crit,
        "x".repeat(MAX_TOKEN_BYTES + 1),
    ] {
        let err = check(&bad).unwrap_err();
        assert_eq!(err.reason(), "JWT_MALFORMED", "{bad:.40}: {err}");
    }
}

#[test]
fn claims_must_name_a_service_account_that_maps_to_a_spiffe_id() {
    let t = |c: &Value| check(&token("ES256", "ec-1", "ec", c)).map_err(|e| e.reason());
    let bad = [
        with(|c| {
            c.as_object_mut().unwrap().remove("kubernetes.io");
        }),
        with(|c| c["kubernetes.io"]["namespace"] = json!("../kube-system")),
        with(|c| c["kubernetes.io"]["namespace"] = json!("Web")),
        with(|c| c["kubernetes.io"]["serviceaccount"]["name"] = json!("a/b")),
        with(|c| c["kubernetes.io"]["pod"]["name"] = json!("web 0")),
        with(|c| c["sub"] = json!("system:serviceaccount:kube-system:api")),
    ];
    for c in bad {
        assert_eq!(t(&c), Err("JWT_CLAIMS_INVALID"), "{c}");
    }
}

#[test]
fn key_sets_keep_only_rs256_and_es256_signing_keys() {
    let set = |v: Value| JwkSet::parse(v.to_string().as_bytes());
    let ec = keys().jwks["keys"][0].clone();
    let mut enc = ec.clone();
    enc["use"] = json!("enc");
    let mut p384 = ec.clone();
    p384["crv"] = json!("P-384");
    let mut rs384 = keys().jwks["keys"][1].clone();
    rs384["alg"] = json!("RS384");
    let okp = json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"});
    let oct = json!({"kty": "oct", "k": "c2VjcmV0"});
    assert_eq!(
        set(json!({"keys": [enc, p384, rs384, okp, oct.clone(), ec]}))
            .unwrap()
            .len(),
        1
    );
    assert!(matches!(
        set(json!({"keys": [oct]})),
        Err(JwksError::NoUsableKey)
    ));
    let short = json!({"kty": "RSA", "kid": "short", "n": b64(&[0xc5; 128]), "e": "AQAB"});
    assert!(matches!(
        set(json!({"keys": [short]})),
        Err(JwksError::BadKey { index: 0, .. })
    ));
    let mut bad_x = keys().jwks["keys"][0].clone();
    bad_x["x"] = json!("AAAA");
    assert!(matches!(
        set(json!({"keys": [bad_x]})),
        Err(JwksError::BadKey { .. })
    ));
    assert!(matches!(JwkSet::parse(b"[]"), Err(JwksError::Malformed(_))));
    let many: Vec<Value> = (0..=MAX_KEYS)
        .map(|_| keys().jwks["keys"][0].clone())
        .collect();
    assert!(matches!(
        set(json!({"keys": many})),
        Err(JwksError::TooManyKeys)
    ));
    assert!(matches!(
        JwkSet::parse(&vec![b' '; MAX_JWKS_BYTES + 1]),
        Err(JwksError::TooLarge)
    ));
}

#[test]
fn templates_make_spiffe_ids_of_the_trust_domain_only() {
    let td = TrustDomain::parse("prod.example").unwrap();
    let t = IdentityTemplate::parse("spiffe://{td}/k8s/{namespace}/{serviceaccount}", &td).unwrap();
    assert_eq!(
        t.as_str(),
        "spiffe://prod.example/k8s/{namespace}/{serviceaccount}"
    );
    assert_eq!(
        t.fill("web", "api").unwrap().as_str(),
        "spiffe://prod.example/k8s/web/api"
    );
    assert!(matches!(
        IdentityTemplate::parse("spiffe://{td}/ns/{pod}", &td),
        Err(TemplateError::UnknownPlaceholder(p)) if p == "{pod}"
    ));
    assert!(matches!(
        IdentityTemplate::parse("spiffe://{td}/ns/{namespace", &td),
        Err(TemplateError::UnknownPlaceholder(_))
    ));
    assert!(matches!(
        IdentityTemplate::parse("spiffe://other.example/ns/{namespace}", &td),
        Err(TemplateError::NotSpiffeId(_))
    ));
}

/// A key source that starts with `current` and, asked to refresh, hands out `fresh` (if any).
struct FakeSource {
    current: Arc<JwkSet>,
    fresh: Option<Arc<JwkSet>>,
    refreshes: std::sync::atomic::AtomicUsize,
}

impl crate::ports::KeySource for FakeSource {
    fn current(&self) -> Arc<JwkSet> {
        self.current.clone()
    }

    fn refresh(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Arc<JwkSet>>> + Send + '_>> {
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(std::future::ready(self.fresh.clone()))
    }
}

/// Runs what the attestor returns (its futures here never wait).
fn attest(jwt: &crate::service::Jwt, token: &str, wanted: &str) -> Result<Attested, crate::Error> {
    use crate::service::Attestor as _;
    let caller = crate::model::Caller {
        id: SpiffeId::parse("spiffe://dev.mintgate.local/node/a").unwrap(),
        kind: crate::model::CallerKind::Node,
        serial: crate::Serial::from_random([1; 17]),
        not_before: at(NOW - 3600),
    };
    let wanted = SpiffeId::parse(wanted).unwrap();
    let evidence = crate::service::Evidence {
        wanted: &wanted,
        join_token: None,
        service_account_token: Some(token),
        now: at(NOW),
        consumed_by_this_request: None,
    };
    let mut into = Attested::default();
    let mut future = jwt.attest(&(), &caller, evidence, &mut into);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let std::task::Poll::Ready(vouched) = future.as_mut().poll(&mut cx) else {
        panic!("the attestor waited");
    };
    drop(future);
    vouched.map(|v| {
        assert!(v, "a token was given");
        into
    })
}

const WEB_API: &str = "spiffe://dev.mintgate.local/ns/web/sa/api";

#[test]
fn the_attestor_refreshes_its_keys_once_for_an_unknown_kid() {
    let rsa_only = JwkSet::parse(
        json!({"keys": [keys().jwks["keys"][1].clone()]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let es256 = token("ES256", "ec-1", "ec", &claims());
    for fresh in [None, Some(Arc::new(set()))] {
        let source = Arc::new(FakeSource {
            current: Arc::new(rsa_only.clone()),
            fresh: fresh.clone(),
            refreshes: Default::default(),
        });
        let jwt = crate::service::Jwt::new(rules(), source.clone());
        let result = attest(&jwt, &es256, WEB_API);
        assert_eq!(
            source.refreshes.load(std::sync::atomic::Ordering::SeqCst),
            1
        );
        match fresh {
            Some(_) => assert_eq!(result.unwrap().service_account.unwrap().namespace, "web"),
            None => assert_eq!(result.unwrap_err().reason(), "JWT_KEY_UNKNOWN"),
        }
        // A known key, a bad token: no refresh.
        let _ = attest(
            &jwt,
            &token("RS256", "rsa-1", "rsa", &with(|c| c["iss"] = json!("x"))),
            WEB_API,
        );
        assert_eq!(
            source.refreshes.load(std::sync::atomic::Ordering::SeqCst),
            1
        );
    }
}

#[test]
fn the_attestor_vouches_only_for_the_identity_the_token_maps_to() {
    let source = Arc::new(FakeSource {
        current: Arc::new(set()),
        fresh: None,
        refreshes: Default::default(),
    });
    let jwt = crate::service::Jwt::new(rules(), source);
    let t = token("RS256", "rsa-1", "rsa", &claims());
    let attested = attest(&jwt, &t, WEB_API).unwrap();
    assert_eq!(
        attested.service_account.unwrap().pod.as_deref(),
        Some("web-0")
    );
    let err = attest(&jwt, &t, "spiffe://dev.mintgate.local/ns/web/sa/admin").unwrap_err();
    assert_eq!(err.reason(), "JWT_WRONG_IDENTITY");
    assert_eq!(err.class(), crate::ErrorClass::PermissionDenied);
    // A server without [attestation.jwt] refuses a token rather than ignoring it.
    let off = crate::service::Jwt::default();
    assert_eq!(
        attest(&off, &t, WEB_API).unwrap_err().reason(),
        "JWT_NOT_CONFIGURED"
    );
}
