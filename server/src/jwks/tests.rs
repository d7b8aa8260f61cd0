//! The key set read from a file and over HTTPS (a local TLS server with a CA made here), and
//! how often a token naming an unknown key can make it read again.

use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::future::join_all;
use mintgate_domain::TrustDomain;
use mintgate_domain::jwt::{IdentityTemplate, JwtRules};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use rustls::pki_types::PrivateKeyDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A JWKS with `n` fresh P-256 keys, kids "k0", "k1", ...
fn jwks(n: usize) -> String {
    let rng = SystemRandom::new();
    let keys: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap();
            let point = pair.public_key().as_ref();
            serde_json::json!({"kty": "EC", "crv": "P-256", "kid": format!("k{i}"),
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])})
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

fn settings(jwks: JwksSource, min_refresh: Duration) -> JwtSettings {
    let td = TrustDomain::parse("dev.mintgate.local").unwrap();
    JwtSettings {
        rules: JwtRules {
            issuer: "https://issuer".to_owned(),
            audiences: vec!["mintgate".to_owned()],
            clock_skew: Duration::from_secs(60),
            max_token_age: Duration::from_secs(3600),
            spiffe_id: IdentityTemplate::parse(
                "spiffe://{td}/ns/{namespace}/sa/{serviceaccount}",
                &td,
            )
            .unwrap(),
        },
        jwks,
        refresh: Duration::from_secs(3600),
        min_refresh,
    }
}

#[tokio::test]
async fn a_file_is_read_at_start_and_again_only_when_min_refresh_allows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(1)).unwrap();
    let slow = JwksReader::start(&settings(
        JwksSource::File(path.clone()),
        Duration::from_secs(3600),
    ))
    .await
    .unwrap();
    let eager = JwksReader::start(&settings(JwksSource::File(path.clone()), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(slow.current().len(), 1);
    std::fs::write(&path, jwks(2)).unwrap();
    // Read a moment ago: a refresh hands back the set it has.
    assert_eq!(slow.refresh().await.unwrap().len(), 1);
    assert_eq!(eager.refresh().await.unwrap().len(), 2);
    // A bad file keeps the last good set.
    std::fs::write(&path, "{\"keys\": []}").unwrap();
    assert_eq!(eager.refresh().await.unwrap().len(), 2);
    // At start, a file that does not read is an error.
    let missing = settings(
        JwksSource::File(dir.path().join("nope.json")),
        Duration::ZERO,
    );
    assert!(matches!(
        JwksReader::start(&missing).await,
        Err(ReadError::File { .. })
    ));
}

/// An HTTPS server for `localhost` answering every request with `body`; counts requests and
/// keeps the last Authorization header. Returns its port and the CA that verifies it.
async fn https_server(
    body: String,
    hits: Arc<AtomicUsize>,
    auth: Arc<std::sync::Mutex<String>>,
) -> (u16, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            hits.fetch_add(1, Ordering::SeqCst);
            let text = String::from_utf8_lossy(&request).to_lowercase();
            if let Some(line) = text.lines().find(|l| l.starts_with("authorization:")) {
                *auth.lock().unwrap() = line.to_owned();
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(response.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    (port, ca.pem())
}

#[tokio::test]
async fn an_https_url_is_fetched_with_its_ca_and_bearer_token_at_most_once_per_min_refresh() {
    let hits = Arc::new(AtomicUsize::new(0));
    let auth = Arc::new(std::sync::Mutex::new(String::new()));
    let (port, ca_pem) = https_server(jwks(3), hits.clone(), auth.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let source = |ca_pem: &str| JwksSource::Url {
        url: format!("https://localhost:{port}/openid/v1/jwks"),
        ca_pem: ca_pem.to_owned(),
        bearer_token_file: Some(token_file.clone()),
    };
    let reader = JwksReader::start(&settings(source(&ca_pem), Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(reader.current().len(), 3);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(*auth.lock().unwrap(), "authorization: bearer s3cret");
    // A burst of unknown kids right after a read fetches nothing.
    let burst: Vec<_> = (0..20).map(|_| reader.refresh()).collect();
    for set in join_all(burst).await {
        assert_eq!(set.unwrap().len(), 3);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // Once min_refresh has passed, one fetch serves a burst: reads never overlap, and those
    // queued behind it find it fresh.
    let eager = JwksReader::start(&settings(source(&ca_pem), Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    *eager.last_read.lock().await = Instant::now().checked_sub(Duration::from_secs(3601));
    let burst: Vec<_> = (0..20).map(|_| eager.refresh()).collect();
    join_all(burst).await;
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    // A server the CA does not vouch for: nothing is read, every token will be refused.
    let other = https_server(jwks(1), hits.clone(), auth.clone()).await.1;
    let untrusted = JwksReader::start(&settings(source(&other), Duration::ZERO))
        .await
        .unwrap();
    assert!(untrusted.current().is_empty());
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}
