//! `mintgate serve --dev` as a child process of the benchmark, so that its memory and CPU time
//! are its own and each side holds only its own file descriptors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use mintgate_domain::policy::PolicySource;
use mintgate_sdk::{Client, TlsMaterial, v1};
use mintgate_tests::TRUST_DOMAIN;
use tokio::process::Child;

use crate::support::{spawn, wait_for};

/// The dev policy without its hold rules, written under `dir`: a mesh that has not configured
/// holds, so a burst from one node costs what it costs without waiting for an approver.
pub fn policy_without_holds(dir: &Path) -> anyhow::Result<String> {
    let policy = dir.join("policy");
    std::fs::create_dir_all(&policy)?;
    let source = source_without_holds();
    std::fs::write(policy.join("schema.cedarschema"), &source.schema)?;
    for file in &source.files {
        std::fs::write(policy.join(&file.name), &file.text)?;
    }
    Ok(policy.display().to_string())
}

/// The dev policy without its hold rules, as text.
pub fn source_without_holds() -> PolicySource {
    let mut source = PolicySource::dev();
    source.files.retain(|f| f.name != "holds.cedar");
    source
}

pub fn read(dir: &Path, name: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// `mintgate serve --dev` in a directory of its own (its dev PKI and SQLite database land
/// there), with an operator and a node client connected.
pub struct Mintgate {
    pub child: Child,
    pub pid: u32,
    pub url: String,
    pub http: String,
    pub pki: PathBuf,
    pub admin: Client,
    pub node: Client,
}

impl Mintgate {
    /// Starts it with `extra` arguments after `serve --dev` and its addresses.
    pub async fn start(bin: &Path, dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let grpc = format!("127.0.0.1:{}", crate::support::free_port()?);
        let http = format!("127.0.0.1:{}", crate::support::free_port()?);
        let mut args = vec!["serve", "--dev", "--grpc-addr", &grpc, "--http-addr", &http];
        args.extend_from_slice(extra);
        let mut child = spawn(bin, &args, dir, "mintgate.log")?;
        let pid = child.id().context("the server has no pid")?;
        let url = format!("https://{grpc}");
        let pki = dir.join("certs-dev");
        let connect = |who: &'static str| {
            let (url, pki) = (url.clone(), pki.clone());
            move || {
                let (url, pki) = (url.clone(), pki.clone());
                async move {
                    let tls = TlsMaterial {
                        ca_pem: read(&pki, "ca.pem")?,
                        cert_pem: read(&pki, &format!("{who}.pem"))?,
                        key_pem: read(&pki, &format!("{who}.key"))?,
                    };
                    Ok(Client::connect(&url, "localhost", &tls).await?)
                }
            }
        };
        let admin = wait_for(&mut child, Duration::from_secs(60), connect("admin")).await?;
        let node = wait_for(&mut child, Duration::from_secs(10), connect("node")).await?;
        Ok(Self {
            child,
            pid,
            url,
            http,
            pki,
            admin,
            node,
        })
    }

    /// `n` node clients, `/node/<prefix>-<i>`, each its own identity from the bootstrap CA and
    /// its own connection (as agents on `n` hosts are).
    pub async fn nodes(&self, n: usize, prefix: &str) -> anyhow::Result<Vec<Client>> {
        let bootstrap = mintgate_ca::CertAndKey {
            cert_pem: read(&self.pki, "bootstrap-ca.pem")?,
            key_pem: read(&self.pki, "bootstrap-ca.key")?,
        };
        let now = time::OffsetDateTime::now_utc();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let id = format!("spiffe://{TRUST_DOMAIN}/node/{prefix}-{i}");
            let (cert_pem, key_pem) = mintgate_tests::csr::node_certificate(&bootstrap, &id, now);
            let tls = TlsMaterial {
                ca_pem: read(&self.pki, "ca.pem")?,
                cert_pem,
                key_pem,
            };
            nodes.push(Client::connect(&self.url, "localhost", &tls).await?);
        }
        Ok(nodes)
    }

    /// Kills it and waits until it is gone.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        Ok(self.child.kill().await?)
    }

    /// One certificate per round for the operator to revoke.
    pub async fn enroll_targets(&self, rounds: usize) -> anyhow::Result<Vec<String>> {
        let mut serials = Vec::with_capacity(rounds);
        for r in 0..rounds {
            let id = format!("spiffe://{TRUST_DOMAIN}/workload/fanout-target-{r}");
            let (csr, _) = mintgate_tests::csr::csr(&id, &[]);
            let issued = self
                .node
                .enroll(v1::EnrollRequest {
                    csr: csr.into_bytes(),
                    ..Default::default()
                })
                .await?;
            anyhow::ensure!(
                issued.state == v1::RequestState::Issued as i32,
                "target {r} was held for approval: {:?}",
                issued.hold
            );
            serials.push(issued.serial);
        }
        Ok(serials)
    }
}
