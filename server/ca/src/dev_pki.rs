//! The dev PKI behind `mintgate dev-certs` and `mintgate serve --dev`: P-256 CAs (Mintgate's
//! offline root and the issuing CA under it, a bootstrap/node CA and an operator CA), the
//! server, node and operator (admin, alice, bob) certificates they issue, and the join-token
//! HMAC secret.
//!
//! [`generate_pki`] makes it in memory (tests use it for an ephemeral PKI); [`write_dev_pki`]
//! writes it to a directory, only where nothing is there yet. Every dev CA carries
//! O = [`DEV_ORGANIZATION`], which [`is_dev_material`] recognises so the server can refuse dev
//! material outside `--dev`.

use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use mintgate_domain::{Serial, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyUsagePurpose,
    SerialNumber, SigningKey,
};
use ring::rand::{SecureRandom as _, SystemRandom};
use time::{Duration, OffsetDateTime};
use x509_parser::x509::X509Name;

use crate::CaError;
use crate::key::FileKey;
use crate::signer::{LeafProfile, parse_certificate};

/// The organization (O) in the subject of every dev CA. Certificates carrying it are dev material.
pub const DEV_ORGANIZATION: &str = "Mintgate Dev PKI (insecure)";

/// How long the dev CAs and the certificates they issue are valid.
pub const DEV_VALIDITY: Duration = Duration::days(365);
/// How far dev certificates are backdated to absorb clock skew.
const DEV_BACKDATE: Duration = Duration::seconds(60);

/// A certificate and its private key, both PEM. `Debug` omits the key.
#[derive(Clone)]
pub struct CertAndKey {
    pub cert_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
}

impl fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAndKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// The whole dev PKI in memory. `Debug` omits keys and the join-token secret.
#[derive(Clone)]
pub struct DevPki {
    /// Mintgate's root, standing in for an offline root: it signed the issuing CA only.
    pub root: CertAndKey,
    /// Mintgate's issuing CA, an intermediate under `root`: issues workload certificates and
    /// the server certificate. `cert_pem` is the issuing CA then the root: the chain the server
    /// loads (`ca.cert`) and the bundle clients trust.
    pub ca: CertAndKey,
    /// serverAuth for `localhost`, `127.0.0.1`, `::1` and `spiffe://<td>/mintgate/server`;
    /// `cert_pem` is the certificate then the issuing CA.
    pub server: CertAndKey,
    /// The node/bootstrap CA (the platform's node identity).
    pub bootstrap_ca: CertAndKey,
    /// clientAuth `spiffe://<td>/node/dev-node-1`, issued by the bootstrap CA.
    pub node: CertAndKey,
    /// The operator CA.
    pub operator_ca: CertAndKey,
    /// clientAuth `spiffe://<td>/operator/admin`, issued by the operator CA.
    pub admin: CertAndKey,
    /// clientAuth `spiffe://<td>/operator/alice` (the dev policy author), by the operator CA.
    pub alice: CertAndKey,
    /// clientAuth `spiffe://<td>/operator/bob` (the dev policy approver), by the operator CA.
    pub bob: CertAndKey,
    /// 32 random bytes, lower-case hex: the HMAC secret for join tokens.
    pub join_token_key_hex: String,
}

impl fmt::Debug for DevPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevPki")
            .field("root", &self.root)
            .field("ca", &self.ca)
            .field("server", &self.server)
            .field("bootstrap_ca", &self.bootstrap_ca)
            .field("node", &self.node)
            .field("operator_ca", &self.operator_ca)
            .field("admin", &self.admin)
            .field("alice", &self.alice)
            .field("bob", &self.bob)
            .field("join_token_key_hex", &"[redacted]")
            .finish()
    }
}

/// Where the dev PKI lives in its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPkiPaths {
    pub dir: PathBuf,
    pub root_cert: PathBuf,
    pub root_key: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub bootstrap_ca_cert: PathBuf,
    pub bootstrap_ca_key: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    pub operator_ca_cert: PathBuf,
    pub operator_ca_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub alice_cert: PathBuf,
    pub alice_key: PathBuf,
    pub bob_cert: PathBuf,
    pub bob_key: PathBuf,
    pub join_token_key: PathBuf,
    /// Whether [`write_dev_pki`] generated the files (`false`: they were already there).
    pub created: bool,
}

impl DevPkiPaths {
    /// The file names of the dev PKI inside `dir`; touches nothing.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            root_cert: dir.join("root.pem"),
            root_key: dir.join("root.key"),
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            bootstrap_ca_cert: dir.join("bootstrap-ca.pem"),
            bootstrap_ca_key: dir.join("bootstrap-ca.key"),
            node_cert: dir.join("node.pem"),
            node_key: dir.join("node.key"),
            operator_ca_cert: dir.join("operator-ca.pem"),
            operator_ca_key: dir.join("operator-ca.key"),
            admin_cert: dir.join("admin.pem"),
            admin_key: dir.join("admin.key"),
            alice_cert: dir.join("alice.pem"),
            alice_key: dir.join("alice.key"),
            bob_cert: dir.join("bob.pem"),
            bob_key: dir.join("bob.key"),
            join_token_key: dir.join("join-token.key"),
            created: false,
        }
    }

    /// Every file and whether it holds a secret, in the order of [`DevPki::file_contents`].
    fn entries(&self) -> [(&Path, Secrecy); 19] {
        use Secrecy::{Public, Secret};
        [
            (&self.root_cert, Public),
            (&self.root_key, Secret),
            (&self.ca_cert, Public),
            (&self.ca_key, Secret),
            (&self.server_cert, Public),
            (&self.server_key, Secret),
            (&self.bootstrap_ca_cert, Public),
            (&self.bootstrap_ca_key, Secret),
            (&self.node_cert, Public),
            (&self.node_key, Secret),
            (&self.operator_ca_cert, Public),
            (&self.operator_ca_key, Secret),
            (&self.admin_cert, Public),
            (&self.admin_key, Secret),
            (&self.alice_cert, Public),
            (&self.alice_key, Secret),
            (&self.bob_cert, Public),
            (&self.bob_key, Secret),
            (&self.join_token_key, Secret),
        ]
    }
}

impl DevPki {
    /// What goes in each file, in the order of [`DevPkiPaths::entries`].
    fn file_contents(&self) -> [&str; 19] {
        [
            &self.root.cert_pem,
            &self.root.key_pem,
            &self.ca.cert_pem,
            &self.ca.key_pem,
            &self.server.cert_pem,
            &self.server.key_pem,
            &self.bootstrap_ca.cert_pem,
            &self.bootstrap_ca.key_pem,
            &self.node.cert_pem,
            &self.node.key_pem,
            &self.operator_ca.cert_pem,
            &self.operator_ca.key_pem,
            &self.admin.cert_pem,
            &self.admin.key_pem,
            &self.alice.cert_pem,
            &self.alice.key_pem,
            &self.bob.cert_pem,
            &self.bob.key_pem,
            &self.join_token_key_hex,
        ]
    }
}

#[derive(Clone, Copy)]
enum Secrecy {
    Public,
    Secret,
}

/// Generates the whole dev PKI in memory, valid from `now` (backdated a minute) for a year.
pub fn generate_pki(trust_domain: &TrustDomain, now: OffsetDateTime) -> Result<DevPki, CaError> {
    let key = FileKey::generate_p256()?;
    let key_pem = key.to_pkcs8_pem();
    let mut pki = build_pki(trust_domain, now, key)?;
    pki.ca.key_pem = key_pem;
    Ok(pki)
}

/// The dev PKI with `issuing_key` as the issuing CA's key (`ca.key_pem` left empty).
fn build_pki<K: SigningKey>(
    trust_domain: &TrustDomain,
    now: OffsetDateTime,
    issuing_key: K,
) -> Result<DevPki, CaError> {
    let rng = SystemRandom::new();
    let not_before = now - DEV_BACKDATE;
    let not_after = now + DEV_VALIDITY;
    let id = |path: &str| format!("spiffe://{trust_domain}{path}");
    let leaf = |spiffe_id: &str, server: bool| LeafTemplate {
        spiffe_id: spiffe_id.to_owned(),
        server,
        not_before,
        not_after,
    };

    let root = DevCa::generate("Mintgate Dev Root CA", 1, not_before, not_after, &rng)?;
    let ca = root.intermediate(issuing_key, "Mintgate Dev Issuing CA", &rng)?;
    let server = ca.issue(&leaf(&id("/mintgate/server"), true), &rng)?;
    let bootstrap_ca =
        DevCa::generate("Mintgate Dev Bootstrap CA", 0, not_before, not_after, &rng)?;
    let node = bootstrap_ca.issue(&leaf(&id("/node/dev-node-1"), false), &rng)?;
    let operator_ca = DevCa::generate("Mintgate Dev Operator CA", 0, not_before, not_after, &rng)?;
    let admin = operator_ca.issue(&leaf(&id("/operator/admin"), false), &rng)?;
    let alice = operator_ca.issue(&leaf(&id("/operator/alice"), false), &rng)?;
    let bob = operator_ca.issue(&leaf(&id("/operator/bob"), false), &rng)?;

    let mut secret = [0u8; 32];
    rng.fill(&mut secret).map_err(CaError::Random)?;

    Ok(DevPki {
        root: root.into_cert_and_key(),
        ca: CertAndKey {
            cert_pem: ca.cert_pem,
            key_pem: String::new(),
        },
        server,
        bootstrap_ca: bootstrap_ca.into_cert_and_key(),
        node,
        operator_ca: operator_ca.into_cert_and_key(),
        admin,
        alice,
        bob,
        join_token_key_hex: format!("{}\n", hex::encode(secret)),
    })
}

/// The dev PKI of [`generate_pki`], but with an issuing CA whose key is `key` (a key in a
/// PKCS#11 token, for tests of that backend). `ca.key_pem` is empty: the key is wherever `key`
/// keeps it.
pub fn generate_pki_with_issuing_key<K: SigningKey>(
    trust_domain: &TrustDomain,
    now: OffsetDateTime,
    key: K,
) -> Result<DevPki, CaError> {
    build_pki(trust_domain, now, key)
}

/// A new dev issuing CA for `key` under the dev root `root` (its certificate and key), for
/// rotation drills: the root's validity; returns the CA's certificate then the root's, PEM.
pub fn dev_successor_ca<K: SigningKey>(
    root: &CertAndKey,
    common_name: &str,
    key: &K,
) -> Result<String, CaError> {
    let rng = SystemRandom::new();
    let root_key = FileKey::from_pem(&root.key_pem)?;
    let root_der =
        <rustls_pki_types::CertificateDer<'_> as rustls_pki_types::pem::PemObject>::from_pem_slice(
            root.cert_pem.as_bytes(),
        )
        .map_err(CaError::CertificatePem)?;
    let validity = parse_certificate(&root_der)?.validity().clone();
    let issuer = Issuer::from_ca_cert_der(&root_der, &root_key).map_err(CaError::IssuerName)?;
    let mut params = dev_ca_params(
        common_name,
        validity.not_before.to_datetime(),
        validity.not_after.to_datetime(),
        &rng,
    )?;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(key, &issuer).map_err(CaError::Build)?;
    Ok(format!("{}{}", cert.pem(), root.cert_pem))
}

/// Writes a fresh dev PKI into `dir` (created if missing) unless one is already there.
///
/// Existing files are never overwritten: if every file exists they are kept as they are
/// (`created: false`); if only some exist, this refuses with [`CaError::PartialDevPki`]. Private
/// keys get mode 0600, certificates 0644; each file is written to a temporary file in `dir` and
/// then moved into place.
pub fn write_dev_pki(dir: &Path, trust_domain: &TrustDomain) -> Result<DevPkiPaths, CaError> {
    let mut paths = DevPkiPaths::in_dir(dir);
    let entries = paths.entries();
    let mut missing = Vec::new();
    for (path, _) in entries {
        if !path.try_exists().map_err(|e| CaError::io(path, e))? {
            missing.push(path.to_path_buf());
        }
    }
    if missing.is_empty() {
        return Ok(paths);
    }
    if missing.len() != entries.len() {
        return Err(CaError::PartialDevPki {
            dir: dir.to_path_buf(),
            missing,
        });
    }

    std::fs::create_dir_all(dir).map_err(|e| CaError::io(dir, e))?;
    let pki = generate_pki(trust_domain, OffsetDateTime::now_utc())?;
    for ((path, secrecy), contents) in paths.entries().into_iter().zip(pki.file_contents()) {
        write_new_file(dir, path, contents, secrecy)?;
    }
    paths.created = true;
    Ok(paths)
}

/// Whether a certificate belongs to the dev PKI: its subject or issuer has O = [`DEV_ORGANIZATION`].
/// Anything that does not parse is not dev material (and will be refused elsewhere).
pub fn is_dev_material(cert_der: &[u8]) -> bool {
    let Ok(cert) = parse_certificate(cert_der) else {
        return false;
    };
    has_dev_organization(cert.subject()) || has_dev_organization(cert.issuer())
}

fn has_dev_organization(name: &X509Name<'_>) -> bool {
    name.iter_organization()
        .any(|o| o.as_str().is_ok_and(|o| o == DEV_ORGANIZATION))
}

/// One dev CA while the PKI is being built.
struct DevCa<K = FileKey> {
    params: CertificateParams,
    key: K,
    cert_pem: String,
    /// What certificates it issues carry after themselves: nothing for a root, itself for an
    /// intermediate.
    chain_pem: String,
}

/// What differs between the dev end-entity certificates.
struct LeafTemplate {
    spiffe_id: String,
    server: bool,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl DevCa {
    /// A self-signed P-256 root: pathLen `path_len` (1 for Mintgate's root, above the issuing
    /// CA; 0 for a CA that signs only end entities), keyCertSign + cRLSign, O = [`DEV_ORGANIZATION`].
    fn generate(
        common_name: &str,
        path_len: u8,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        rng: &SystemRandom,
    ) -> Result<Self, CaError> {
        let key = FileKey::generate_p256()?;
        let mut params = dev_ca_params(common_name, not_before, not_after, rng)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
        let cert = params.self_signed(&key).map_err(CaError::Build)?;
        Ok(Self {
            params,
            key,
            cert_pem: cert.pem(),
            chain_pem: String::new(),
        })
    }

    /// The CA and the chain above it (itself then its root, for an intermediate), and its key.
    fn into_cert_and_key(self) -> CertAndKey {
        CertAndKey {
            key_pem: self.key.to_pkcs8_pem(),
            cert_pem: self.cert_pem,
        }
    }

    /// An intermediate CA for `key` (pathLen 0) with this root's validity, signed by this root.
    fn intermediate<K: SigningKey>(
        &self,
        key: K,
        common_name: &str,
        rng: &SystemRandom,
    ) -> Result<DevCa<K>, CaError> {
        let params = dev_ca_params(
            common_name,
            self.params.not_before,
            self.params.not_after,
            rng,
        )?;
        let mut params = params;
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(CaError::Build)?;
        Ok(DevCa {
            params,
            key,
            chain_pem: cert.pem(),
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
        })
    }
}

/// The parameters of a dev CA: pathLen 0, keyCertSign + cRLSign, O = [`DEV_ORGANIZATION`].
pub(crate) fn dev_ca_params(
    common_name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    rng: &SystemRandom,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(SerialNumber::from_slice(random_serial(rng)?.as_bytes()));
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, DEV_ORGANIZATION);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

impl<K: SigningKey> DevCa<K> {
    /// An end-entity certificate with the Mintgate profile and a fresh P-256 key. A server
    /// certificate gets serverAuth and the loopback names; any other gets clientAuth.
    fn issue(&self, leaf: &LeafTemplate, rng: &SystemRandom) -> Result<CertAndKey, CaError> {
        let key = FileKey::generate_p256()?;
        let serial = random_serial(rng)?;
        let (dns_names, ip_addresses): (Vec<String>, Vec<IpAddr>) = if leaf.server {
            (
                vec!["localhost".to_owned()],
                vec![
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                ],
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let profile = LeafProfile {
            spiffe_id: &leaf.spiffe_id,
            dns_names: &dns_names,
            ip_addresses: &ip_addresses,
            serial: serial.as_bytes(),
            not_before: leaf.not_before,
            not_after: leaf.not_after.min(self.params.not_after),
            rsa_key: false,
            client_auth: !leaf.server,
            server_auth: leaf.server,
            crl_url: None,
        };
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = profile
            .params()?
            .signed_by(&key, &issuer)
            .map_err(CaError::Build)?;
        Ok(CertAndKey {
            cert_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.to_pkcs8_pem(),
        })
    }
}

/// A positive serial with 128 CSPRNG bits.
fn random_serial(rng: &SystemRandom) -> Result<Serial, CaError> {
    let mut bytes = [0u8; 17];
    rng.fill(&mut bytes).map_err(CaError::Random)?;
    Ok(Serial::from_random(bytes))
}

/// Writes `contents` to a temporary file in `dir`, sets its mode, and moves it to `path` only if
/// nothing is there (never replacing an existing file).
fn write_new_file(
    dir: &Path,
    path: &Path,
    contents: &str,
    secrecy: Secrecy,
) -> Result<(), CaError> {
    let io = |e| CaError::io(path, e);
    // tempfile creates the file with mode 0600 on Unix, so a key is never readable by others.
    let mut tmp = tempfile::Builder::new()
        .prefix(".mintgate-dev-")
        .tempfile_in(dir)
        .map_err(|e| CaError::io(dir, e))?;
    tmp.write_all(contents.as_bytes()).map_err(io)?;
    set_mode(tmp.as_file(), secrecy).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist_noclobber(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(unix)]
fn set_mode(file: &std::fs::File, secrecy: Secrecy) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = match secrecy {
        Secrecy::Public => 0o644,
        Secrecy::Secret => 0o600,
    };
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_file: &std::fs::File, _secrecy: Secrecy) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests;
