#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use mintgate_proto::spiffe::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::transport::Channel;

use super::*;

const WEB: &str = "spiffe://dev.mintgate.local/workload/web";
const DB: &str = "spiffe://dev.mintgate.local/workload/db";

fn uid() -> u32 {
    // The test's own process: what the kernel reports for it on the socket.
    std::fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m))
}

fn svid(id: &str, n: u8) -> Svid {
    Svid {
        spiffe_id: id.to_owned(),
        chain_der: vec![vec![0x30, n], vec![0x30, 0xca]],
        key_der: vec![0x30, 0x6b, n],
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    web: watch::Sender<Option<Svid>>,
    bundle: watch::Sender<Option<Bundle>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A Workload API where this process (its uid) is `web`, and `db` belongs to another uid.
async fn serve() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let (web, web_rx) = watch::channel(Some(svid(WEB, 1)));
    let (_db, db_rx) = watch::channel(Some(svid(DB, 1)));
    let (bundle, bundle_rx) = watch::channel(Some(Bundle {
        trust_domain: "spiffe://dev.mintgate.local".into(),
        certs_der: vec![vec![0x30, 0x01]],
    }));
    let entries = vec![
        (
            RegistrationEntry {
                spiffe_id: WEB.into(),
                selectors: vec![Selector::Uid(uid())],
            },
            web_rx,
        ),
        (
            RegistrationEntry {
                spiffe_id: DB.into(),
                selectors: vec![Selector::Uid(uid() + 1)],
            },
            db_rx,
        ),
    ];
    let api = WorkloadApi::new(entries, bundle_rx);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = WorkloadApi::bind(&path).unwrap();
    tokio::spawn(api.serve(listener, async {
        let _ = stopped.await;
    }));
    Fixture {
        _dir: dir,
        path,
        web,
        bundle,
        _stop: stop,
    }
}

async fn client(path: &Path) -> SpiffeWorkloadApiClient<Channel> {
    SpiffeWorkloadApiClient::new(connect(path).await.unwrap())
}

fn with_header<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(SECURITY_HEADER, "true".parse().unwrap());
    request
}

async fn next<T>(stream: &mut tonic::Streaming<T>) -> Result<Option<T>, Status> {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10 s")
}

#[tokio::test]
async fn the_caller_gets_its_own_svid_then_each_rotation_and_the_stream_ends_when_revoked() {
    let fixture = serve().await;
    let mut api = client(&fixture.path).await;
    let mut stream = api
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(first.svids.len(), 1, "only the entry of this uid");
    let got = &first.svids[0];
    assert_eq!(got.spiffe_id, WEB);
    assert_eq!(got.x509_svid, [0x30, 1, 0x30, 0xca]);
    assert_eq!(got.x509_svid_key, [0x30, 0x6b, 1]);
    assert_eq!(got.bundle, [0x30, 0x01]);

    fixture.web.send_replace(Some(svid(WEB, 2)));
    let rotated = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(rotated.svids[0].x509_svid, [0x30, 2, 0x30, 0xca]);

    fixture.web.send_replace(None);
    let ended = next(&mut stream).await.unwrap_err();
    assert_eq!(ended.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn bundles_are_streamed_by_trust_domain() {
    let fixture = serve().await;
    let mut api = client(&fixture.path).await;
    let mut stream = api
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(first.bundles["spiffe://dev.mintgate.local"], [0x30, 0x01]);
    fixture.bundle.send_replace(Some(Bundle {
        trust_domain: "spiffe://dev.mintgate.local".into(),
        certs_der: vec![vec![0x30, 0x01], vec![0x30, 0x02]],
    }));
    let changed = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(
        changed.bundles["spiffe://dev.mintgate.local"],
        [0x30, 0x01, 0x30, 0x02]
    );
}

#[tokio::test]
async fn calls_without_the_header_or_from_no_entry_are_refused_and_jwt_is_unimplemented() {
    let fixture = serve().await;
    let mut api = client(&fixture.path).await;
    let refused = api.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let refused = api
        .fetch_jwtsvid(with_header(JwtsvidRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented);

    // Only the entry of another uid: nobody here is entitled.
    let (_tx, rx) = watch::channel(Some(svid(DB, 1)));
    let (_b, bundle) = watch::channel(None);
    let other = WorkloadApi::new(
        vec![(
            RegistrationEntry {
                spiffe_id: DB.into(),
                selectors: vec![Selector::Uid(uid() + 1)],
            },
            rx,
        )],
        bundle,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.sock");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = WorkloadApi::bind(&path).unwrap();
    tokio::spawn(other.serve(listener, async {
        let _ = stopped.await;
    }));
    let refused = client(&path)
        .await
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    drop(stop);
}

#[test]
fn selectors_parse_and_match_the_process() {
    assert_eq!("unix:uid:1000".parse(), Ok(Selector::Uid(1000)));
    assert_eq!("unix:gid:0".parse(), Ok(Selector::Gid(0)));
    assert_eq!(
        "unix:path:/usr/bin/curl".parse(),
        Ok(Selector::Path("/usr/bin/curl".into()))
    );
    for bad in ["uid:1", "unix:uid:x", "unix:path:relative", "unix:pid:1"] {
        assert!(bad.parse::<Selector>().is_err(), "{bad}");
    }
    let me = Peer {
        uid: uid(),
        gid: 0,
        pid: Some(i32::try_from(std::process::id()).unwrap()),
    };
    let exe = std::env::current_exe().unwrap();
    assert!(Selector::Path(exe).matches(&me));
    assert!(!Selector::Path("/bin/false".into()).matches(&me));
    assert!(
        !RegistrationEntry {
            spiffe_id: WEB.into(),
            selectors: Vec::new(),
        }
        .matches(&me)
    );
}
