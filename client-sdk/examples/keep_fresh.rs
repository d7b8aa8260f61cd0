//! A service that keeps its own certificate fresh.
//!
//! With `mintgate serve --dev` running in the repository root, from that directory:
//!
//! ```sh
//! cargo run -p mintgate-sdk --example keep_fresh -- spiffe://dev.mintgate.local/workload/web
//! ```
//!
//! It enrolls with the dev node certificate, then prints every renewal (use a short TTL to see
//! one: `MINTGATE_TTL_SECONDS=60`). Stop it with Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use mintgate_sdk::{
    Attestation, Client, CredentialManager, Endpoint, RenewalPolicy, SystemClock, TlsMaterial,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spiffe_id = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "spiffe://dev.mintgate.local/workload/web".to_owned());
    let ttl = std::env::var("MINTGATE_TTL_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);
    let endpoint = Endpoint {
        url: "https://127.0.0.1:8443".into(),
        server_name: "localhost".into(),
    };
    // The node (bootstrap) identity attests the workload.
    let node = Client::connect(
        &endpoint.url,
        &endpoint.server_name,
        &TlsMaterial {
            ca_pem: std::fs::read_to_string("certs-dev/ca.pem")?,
            cert_pem: std::fs::read_to_string("certs-dev/node.pem")?,
            key_pem: std::fs::read_to_string("certs-dev/node.key")?,
        },
    )
    .await?;
    let manager = CredentialManager::enroll(
        &node,
        endpoint,
        &spiffe_id,
        Attestation::default(),
        RenewalPolicy {
            ttl,
            ..RenewalPolicy::default()
        },
        Arc::new(SystemClock),
    )
    .await?;
    let mut updates = manager.subscribe();
    let first = manager.current();
    println!(
        "enrolled {} serial {} until {}",
        first.spiffe_id, first.serial, first.not_after
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            changed = updates.changed() => {
                if changed.is_err() {
                    return Err("the certificate expired without renewal".into());
                }
                // Hand the new certificate and key to your TLS stack here.
                let current = updates.borrow_and_update().clone();
                println!("renewed: serial {} until {}", current.serial, current.not_after);
            }
        }
    }
}
