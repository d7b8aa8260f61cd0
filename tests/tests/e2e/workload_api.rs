//! The agent's Workload API across processes (DESIGN §16): two processes under different uids
//! get each their own SVID over the same socket, the agent holding a key for each.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mintgate_proto::spiffe::X509svidRequest;
use mintgate_proto::spiffe::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use mintgate_sdk::agent::{AgentConfig, run};
use mintgate_sdk::workload_api::{
    AgentWorkloadApi, RegistrationEntry, SECURITY_HEADER, Selector, connect,
};
use mintgate_tests::{Backend, TestServer, both_backends};

use crate::agent::{eventually, web_agent};
use crate::sdk::JumpingClock;

const WEB: &str = "spiffe://dev.mintgate.local/workload/web";
const BATCH: &str = "spiffe://dev.mintgate.local/workload/batch";
/// `nobody` on Debian.
const OTHER_UID: u32 = 65534;
/// Where the child process finds the socket.
const SOCKET_VAR: &str = "MINTGATE_TEST_WORKLOAD_SOCKET";

/// The SPIFFE IDs the Workload API at `socket` gives this process.
async fn my_svids(socket: &Path) -> Vec<String> {
    let mut api = SpiffeWorkloadApiClient::new(connect(socket).await.unwrap());
    let mut request = tonic::Request::new(X509svidRequest {});
    request
        .metadata_mut()
        .insert(SECURITY_HEADER, "true".parse().unwrap());
    let mut stream = api.fetch_x509svid(request).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    first.svids.into_iter().map(|s| s.spiffe_id).collect()
}

/// Run by the parent test as another uid: prints what the Workload API gives it.
#[tokio::test]
async fn child_prints_its_svids() {
    let Ok(socket) = std::env::var(SOCKET_VAR) else {
        return;
    };
    println!("svids {}", my_svids(Path::new(&socket)).await.join(","));
}

both_backends!(
    two_processes_under_different_uids_get_their_own_svids,
    two_uids
);
async fn two_uids(backend: Backend) {
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if uid.ok() != Some(0) {
        eprintln!("note: not root, cannot run a process as another uid; skipping");
        return;
    }
    let server = TestServer::spawn(backend).await;
    // Directories another uid can traverse: the socket's, and the copy of this test binary the
    // child runs.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let socket = shared.path().join("agent.sock");
    let child_exe = shared.path().join("e2e");
    std::fs::copy(std::env::current_exe().unwrap(), &child_exe).unwrap();
    std::fs::set_permissions(&child_exe, PermissionsExt::from_mode(0o755)).unwrap();

    let out = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        workload_api: Some(AgentWorkloadApi {
            socket: socket.clone(),
            selectors: vec![Selector::Uid(0)],
            entries: vec![RegistrationEntry {
                spiffe_id: BATCH.into(),
                selectors: vec![Selector::Uid(OTHER_UID)],
            }],
        }),
        ..web_agent(&server, out.path().join("certs"))
    };
    let clock = Arc::new(JumpingClock {
        clock: server.clock.clone(),
        jumps: 0.into(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(config, clock, async {
        let _ = stopped.await;
    }));
    eventually("the socket", || socket.exists()).await;

    // This process (uid 0) gets the agent's own identity, and only that.
    assert_eq!(my_svids(&socket).await, [WEB]);
    // A process of uid 65534 gets the other entry's identity, and only that.
    let socket_for_child = socket.clone();
    let child = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&child_exe)
            .args([
                "--exact",
                "workload_api::child_prints_its_svids",
                "--nocapture",
            ])
            .env(SOCKET_VAR, &socket_for_child)
            .uid(OTHER_UID)
            .gid(OTHER_UID)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&child.stdout).into_owned()
        + &String::from_utf8_lossy(&child.stderr);
    assert!(printed.contains(&format!("svids {BATCH}\n")), "{printed}");
    drop(stop);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    server.shutdown().await;
}

/// The SDK's clock over the server's manual clock: a sleep waits until the test releases it,
/// then moves the server's time forward by its length (so a renewal comes due on command).
struct ReleasedClock {
    clock: Arc<mintgate_tests::ManualClock>,
    release: Arc<tokio::sync::Notify>,
}

impl mintgate_sdk::Clock for ReleasedClock {
    fn now(&self) -> time::OffsetDateTime {
        self.clock.now_odt()
    }

    fn sleep(
        &self,
        d: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let (clock, release) = (self.clock.clone(), self.release.clone());
        Box::pin(async move {
            release.notified().await;
            clock.advance(d);
        })
    }
}

both_backends!(
    rotations_are_pushed_on_the_open_stream_and_a_revoked_entry_ends_it,
    rotation_and_revocation
);
async fn rotation_and_revocation(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let out = tempfile::tempdir().unwrap();
    let socket = out.path().join("agent.sock");
    let uid =
        std::fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m));
    // This process matches both: the agent's own identity by uid, the other entry by uid too.
    let config = AgentConfig {
        workload_api: Some(AgentWorkloadApi {
            socket: socket.clone(),
            selectors: vec![Selector::Uid(uid)],
            entries: vec![RegistrationEntry {
                spiffe_id: BATCH.into(),
                selectors: vec![Selector::Uid(uid)],
            }],
        }),
        ..web_agent(&server, out.path().join("certs"))
    };
    let release = Arc::new(tokio::sync::Notify::new());
    let clock = Arc::new(ReleasedClock {
        clock: server.clock.clone(),
        release: release.clone(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(config, clock, async {
        let _ = stopped.await;
    }));
    eventually("the socket", || socket.exists()).await;
    let mut api = SpiffeWorkloadApiClient::new(connect(&socket).await.unwrap());
    let mut request = tonic::Request::new(X509svidRequest {});
    request
        .metadata_mut()
        .insert(SECURITY_HEADER, "true".parse().unwrap());
    let mut stream = api.fetch_x509svid(request).await.unwrap().into_inner();
    let leaves = |m: &mintgate_proto::spiffe::X509svidResponse| -> Vec<(String, Vec<u8>)> {
        m.svids
            .iter()
            .map(|s| {
                let (rest, _) = x509_parser::parse_x509_certificate(&s.x509_svid).unwrap();
                (
                    s.spiffe_id.clone(),
                    s.x509_svid[..s.x509_svid.len() - rest.len()].to_vec(),
                )
            })
            .collect()
    };
    // Both identities, each with a certificate of its own.
    let first = leaves(&next(&mut stream).await.unwrap().unwrap());
    let ids: Vec<&str> = first.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, [WEB, BATCH]);
    assert_ne!(first[0].1, first[1].1);

    // One renewal comes due (one sleeper released, the time moved once): its rotated
    // certificate is pushed on the open stream.
    release.notify_one();
    let rotated = loop {
        let now = leaves(&next(&mut stream).await.unwrap().unwrap());
        if now.iter().zip(&first).any(|(a, b)| a.1 != b.1) {
            break now;
        }
    };

    // The other entry's certificate is revoked: its identity is withdrawn and the stream ends.
    let (_, cert) = x509_parser::parse_x509_certificate(&rotated[1].1).unwrap();
    let serial = mintgate_sdk::normalize_serial(&hex::encode(cert.raw_serial()));
    server
        .admin()
        .await
        .revoke(crate::revocation::revoke_request(
            "revoke-batch",
            &serial,
            mintgate_sdk::v1::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap();
    let ended = loop {
        match next(&mut stream).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::PermissionDenied);
    drop(stop);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    server.shutdown().await;
}

async fn next(
    stream: &mut tonic::Streaming<mintgate_proto::spiffe::X509svidResponse>,
) -> Result<Option<mintgate_proto::spiffe::X509svidResponse>, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10 s")
}
