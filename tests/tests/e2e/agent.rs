//! The sidecar agent against a real server: it enrolls, writes files openssl accepts, rotates
//! them inside the renewal window (on the injected clock) and runs its hook, reports health,
//! and removes its key when its certificate is revoked.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mintgate_sdk::agent::{AgentConfig, AgentExit, run};
use mintgate_sdk::{Endpoint, RenewalPolicy, v1};
use mintgate_tests::csr::check_issued;
use mintgate_tests::{Backend, TestServer, both_backends, tool_available};

use crate::revocation::revoke_request;
use crate::sdk::JumpingClock;

const WEB: &str = "spiffe://dev.mintgate.local/workload/web";

/// An agent of the dev node for `WEB`, writing into `out_dir`, with nothing else configured.
pub(crate) fn web_agent(server: &TestServer, out_dir: std::path::PathBuf) -> AgentConfig {
    AgentConfig {
        endpoint: Endpoint {
            url: server.url(),
            server_name: "localhost".into(),
        },
        ca_pem: server.pki.ca.cert_pem.clone(),
        node_cert_pem: server.pki.node.cert_pem.clone(),
        node_key_pem: server.pki.node.key_pem.clone(),
        spiffe_id: WEB.into(),
        join_token: None,
        service_account_token_file: None,
        out_dir,
        policy: RenewalPolicy::default(),
        hook: None,
        signal_pid: None,
        health_addr: None,
        max_staleness: Duration::from_secs(60),
        workload_api: None,
    }
}

/// Waits (bounded) until `ready` holds; the agent works in the background.
pub(crate) async fn eventually(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

fn serial_of(cert_pem: &str) -> String {
    let der = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .unwrap()
        .1
        .contents;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    mintgate_sdk::normalize_serial(&hex::encode(cert.raw_serial()))
}

async fn http_status(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}

both_backends!(
    the_agent_rotates_its_files_and_removes_them_when_revoked,
    agent
);
async fn agent(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let out = tempfile::tempdir().unwrap();
    let hook_log = out.path().join("hook.log");
    let health_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    // The first address of the list answers nothing (a replica that is down): the agent goes
    // on to the next.
    let down = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let config = AgentConfig {
        endpoint: Endpoint {
            url: format!("https://{down},{}", server.url()),
            server_name: "localhost".into(),
        },
        policy: RenewalPolicy {
            ttl: Some(Duration::from_secs(600)),
            ..RenewalPolicy::default()
        },
        hook: Some(vec![
            "sh".into(),
            "-c".into(),
            format!("echo rotated >> {}", hook_log.display()),
        ]),
        health_addr: Some(health_addr),
        ..web_agent(&server, out.path().join("certs"))
    };
    // One jump of the clock: the first renewal happens at once, then time stands still.
    let clock = Arc::new(JumpingClock {
        clock: server.clock.clone(),
        jumps: 1.into(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(config, clock, async {
        let _ = stopped.await;
    }));

    // Enrolled, then rotated once: the hook ran for each install.
    eventually("the first rotation", || lines(&hook_log) >= 2).await;
    let dir = out.path().join("certs");
    let cert_pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    let key_pem = std::fs::read_to_string(dir.join("key.pem")).unwrap();
    check_issued(
        &cert_pem,
        &server.pki.ca.cert_pem,
        WEB,
        server.clock.now_odt().unix_timestamp(),
    );
    // The key on disk is the key of the certificate on disk.
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let der = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .unwrap()
        .1
        .contents;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        cert.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    if tool_available("openssl") {
        let status = std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(dir.join("bundle.pem"))
            .args(["-purpose", "sslclient", "-attime"])
            // The renewed certificate is valid on the server's (jumped) clock.
            .arg(server.clock.now_odt().unix_timestamp().to_string())
            .arg(dir.join("cert.pem"))
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
    }
    assert_eq!(http_status(health_addr).await, "HTTP/1.1 200 OK");

    // Revoked: the agent removes its key material and stops, without re-enrolling.
    let serial = serial_of(&cert_pem);
    let started = Instant::now();
    server
        .admin()
        .await
        .revoke(revoke_request(
            "r",
            &serial,
            v1::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the agent stops")
        .unwrap()
        .unwrap();
    eprintln!(
        "agent: key removed {:?} after the Revoke call started",
        started.elapsed()
    );
    assert_eq!(exit, AgentExit::Revoked { serial });
    assert!(!dir.join("key.pem").exists());
    assert!(!dir.join("cert.pem").exists());
    drop(stop);
    server.shutdown().await;
}

both_backends!(
    the_agent_trusts_a_prepared_ca_and_enrolls_again_when_its_issuer_is_revoked,
    agent_and_rotation
);
async fn agent_and_rotation(backend: Backend) {
    use crate::rotation::{custodians, key_id_of, prepare, revoke_issuer, successor};
    let server = TestServer::spawn_with(custodians(backend)).await;
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("certs");
    let config = web_agent(&server, dir.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // No renewal comes due: time stands still.
    let clock = Arc::new(JumpingClock {
        clock: server.clock.clone(),
        jumps: 0.into(),
    });
    let task = tokio::spawn(run(config, clock, async {
        let _ = stopped.await;
    }));
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    eventually("the first certificate", || !read("cert.pem").is_empty()).await;
    let old_id = key_id_of(&server.pki.ca.cert_pem);
    assert_eq!(issuer_of(&read("cert.pem")), old_id);

    // Prepared: the agent's bundle.pem holds the new CA before it signs anything.
    let keys = tempfile::tempdir().unwrap();
    let (next, key) = successor(&server, keys.path());
    let next_id = key_id_of(&next.cert_pem);
    let next_ca = next
        .cert_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap();
    prepare(&server, &next, &key).await;
    eventually("the prepared CA in bundle.pem", || {
        read("bundle.pem").contains(next_ca)
    })
    .await;

    // The old CA is revoked: the agent enrolls again, under the successor, and the old CA
    // leaves its bundle.
    revoke_issuer(&server, &old_id).await;
    eventually("a certificate from the successor", || {
        let cert = read("cert.pem");
        !cert.is_empty() && issuer_of(&cert) == next_id
    })
    .await;
    check_issued(
        &read("cert.pem"),
        &next.cert_pem,
        WEB,
        server.clock.now_odt().unix_timestamp(),
    );
    let old_ca = server
        .pki
        .ca
        .cert_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap()
        .to_owned();
    eventually("the revoked CA out of bundle.pem", || {
        !read("bundle.pem").contains(&old_ca)
    })
    .await;
    assert!(!task.is_finished(), "the agent goes on");
    drop(stop);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    server.shutdown().await;
}

/// The hex authority key identifier of a PEM certificate: its issuer's key id.
pub(crate) fn issuer_of(cert_pem: &str) -> String {
    let der = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .unwrap()
        .1
        .contents;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| hex::encode(id.0))
            }
            _ => None,
        })
        .unwrap()
}

both_backends!(
    the_agent_serves_its_svid_over_the_spiffe_workload_api,
    workload_api
);
async fn workload_api(backend: Backend) {
    use mintgate_proto::spiffe::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    use mintgate_proto::spiffe::{X509BundlesRequest, X509svidRequest};
    use mintgate_sdk::workload_api::{AgentWorkloadApi, SECURITY_HEADER, Selector, connect};

    let server = TestServer::spawn(backend).await;
    let out = tempfile::tempdir().unwrap();
    let socket = out.path().join("agent.sock");
    // This test's own uid gets the identity over the socket.
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    let config = AgentConfig {
        policy: RenewalPolicy {
            ttl: Some(Duration::from_secs(600)),
            ..RenewalPolicy::default()
        },
        workload_api: Some(AgentWorkloadApi {
            socket: socket.clone(),
            selectors: vec![Selector::Uid(uid)],
            entries: Vec::new(),
        }),
        ..web_agent(&server, out.path().join("certs"))
    };
    // No renewal until the test moves the clock.
    let clock = Arc::new(JumpingClock {
        clock: server.clock.clone(),
        jumps: 0.into(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(config, clock, async {
        let _ = stopped.await;
    }));
    eventually("the socket", || socket.exists()).await;
    let mut api = SpiffeWorkloadApiClient::new(connect(&socket).await.unwrap());
    fn request<T>(body: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(body);
        request
            .metadata_mut()
            .insert(SECURITY_HEADER, "true".parse().unwrap());
        request
    }
    let mut svids = api
        .fetch_x509svid(request(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    // The stream answers once the agent has enrolled.
    let first = tokio::time::timeout(Duration::from_secs(10), svids.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let svid = &first.svids[0];
    assert_eq!(svid.spiffe_id, WEB);
    // DER chain, leaf first: the certificate chains to the bundle's root and has the profile;
    // the key is the certificate's.
    let chain_pem = der_chain_to_pem(&svid.x509_svid);
    check_issued(
        &chain_pem,
        &server.pki.ca.cert_pem,
        WEB,
        server.clock.now_odt().unix_timestamp(),
    );
    let key = rcgen::KeyPair::try_from(svid.x509_svid_key.as_slice()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&svid.x509_svid).unwrap();
    assert_eq!(
        cert.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );
    let mut bundles = api
        .fetch_x509_bundles(request(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let bundle = tokio::time::timeout(Duration::from_secs(10), bundles.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        bundle.bundles["spiffe://dev.mintgate.local"],
        pem_to_der(&server.pki.ca.cert_pem)
    );

    // A grpc-core client (Python's grpcio) works unchanged: it sends the percent-encoded socket
    // path as :authority, which the agent's relay mends before h2 parses it.
    if mintgate_tests::python_module_available("grpc") {
        let out = grpc_core_client(&socket);
        assert!(out.contains(&format!("svid {WEB}")), "{out}");
        assert!(
            out.contains("without header: StatusCode.INVALID_ARGUMENT"),
            "{out}"
        );
    }

    // Revoked: the agent withdraws the identity and stops; the stream ends.
    let serial = mintgate_sdk::normalize_serial(&hex::encode(cert.raw_serial()));
    server
        .admin()
        .await
        .revoke(revoke_request(
            "r",
            &serial,
            v1::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match svids.message().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream ends when the identity is revoked"
    );
    let exit = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(exit, AgentExit::Revoked { serial });
    drop(stop);
    server.shutdown().await;
}

/// Fetches an X.509 SVID from the Workload API at `socket` with Python's grpcio (grpc-core),
/// with and without the security header; what it printed.
fn grpc_core_client(socket: &Path) -> String {
    const SCRIPT: &str = r#"
import sys, grpc
def field(buf):
    """The first length-delimited field's bytes (after its tag and varint length)."""
    i, n, shift = 1, 0, 0
    while True:
        b = buf[i]; i += 1
        n |= (b & 0x7F) << shift; shift += 7
        if b < 0x80:
            return buf[i:i + n]
channel = grpc.insecure_channel("unix:" + sys.argv[1])
fetch = channel.unary_stream("/SpiffeWorkloadAPI/FetchX509SVID",
    request_serializer=lambda m: m, response_deserializer=lambda b: b)
for message in fetch(b"", metadata=[("workload.spiffe.io", "true")], timeout=10):
    # X509SVIDResponse.svids[0].spiffe_id: field 1 of field 1, both length-delimited.
    print("svid", field(field(message)).decode())
    break
try:
    next(iter(fetch(b"", timeout=10)))
except grpc.RpcError as e:
    print("without header:", e.code())
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(socket)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn der_chain_to_pem(mut der: &[u8]) -> String {
    use base64::Engine as _;
    let mut pem = String::new();
    while !der.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(der).unwrap();
        let one = &der[..der.len() - rest.len()];
        let b64 = base64::engine::general_purpose::STANDARD.encode(one);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        der = rest;
    }
    pem
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap().to_vec())
        .collect::<Vec<_>>()
        .concat()
}
