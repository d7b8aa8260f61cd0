//! `mintgate ca csr` and `mintgate ca import` against an offline root made and operated with
//! openssl (not our code): the CSR verifies, a second `csr` reuses the key, the root signs it,
//! `import` refuses a certificate that is not a CA, one without its root, and one for another key,
//! and accepts the right one; the CA it imported issues certificates that `openssl verify
//! -CAfile root -untrusted intermediate` and webpki accept. On a key file and, in a SoftHSM
//! child process, on a key in a PKCS#11 token.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mintgate_ca::{CaKey, CertificateAuthority, FileKey, Pkcs11Key};
use mintgate_domain::ports::{IssueSpec, Signer as _};
use mintgate_domain::{KeyType, Serial, SpiffeId};
use mintgate_tests::{mintgate_bin, tool_available};
use time::OffsetDateTime;

const CA_EXTENSIONS: &str = "basicConstraints=critical,CA:TRUE,pathlen:0\n\
keyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n\
authorityKeyIdentifier=keyid:always\n";
const LEAF_EXTENSIONS: &str =
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n";

#[test]
fn csr_sign_and_import_with_a_key_file() {
    if !tool_available("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = "[ca]\ncert = \"ca.pem\"\nkey = \"ca.key\"\n";
    round_trip(dir.path(), config, &[], |dir| {
        let pem = std::fs::read_to_string(dir.join("ca.key")).unwrap();
        CaKey::File(FileKey::from_pem(&pem).unwrap())
    });
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key file is made private");
}

mintgate_ca::softhsm_test! {
    fn csr_sign_and_import_with_a_key_in_the_token(hsm) {
        if !tool_available("openssl") {
            return;
        }
        let pkcs11 = hsm.token("offline-root-test", "mintgate-issuing").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[ca]\nbackend = \"pkcs11\"\ncert = \"ca.pem\"\n[ca.pkcs11]\nmodule = \"{}\"\n\
             token_label = \"offline-root-test\"\nkey_label = \"mintgate-issuing\"\n\
             pin_env = \"MINTGATE_TEST_HSM_PIN\"\n",
            pkcs11.module.display()
        );
        let env = [
            ("MINTGATE_TEST_HSM_PIN", mintgate_ca::softhsm::USER_PIN),
        ];
        round_trip(dir.path(), &config, &env, |_| {
            CaKey::Pkcs11(Pkcs11Key::open(&pkcs11).unwrap())
        });
        assert!(!dir.path().join("ca.key").exists(), "the key is in the token, not in a file");
    }
}

fn round_trip(dir: &Path, config: &str, env: &[(&str, &str)], key: impl Fn(&Path) -> CaKey) {
    std::fs::write(dir.join("mintgate.toml"), config).unwrap();
    let mintgate = |args: &[&str]| -> Output {
        Command::new(mintgate_bin())
            .args(args)
            .args(["--config", "mintgate.toml"])
            .envs(env.iter().copied())
            .current_dir(dir)
            .output()
            .unwrap()
    };

    let out = mintgate(&[
        "ca",
        "csr",
        "--out",
        "ca.csr",
        "--common-name",
        "Test Issuing CA",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("generated"), "{}", text(&out));
    openssl(dir, &["req", "-in", "ca.csr", "-noout", "-verify"]);
    let first_key = openssl(dir, &["req", "-in", "ca.csr", "-noout", "-pubkey"]);
    let out = mintgate(&[
        "ca",
        "csr",
        "--out",
        "ca.csr",
        "--common-name",
        "Test Issuing CA",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("existing"), "{}", text(&out));
    assert_eq!(
        openssl(dir, &["req", "-in", "ca.csr", "-noout", "-pubkey"]),
        first_key,
        "the second CSR is for the same key: found, not generated again"
    );

    // The offline root, and what it signs.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "root.key",
            "-out",
            "root.pem",
            "-subj",
            "/CN=Test Offline Root",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    sign(dir, "ca.csr", "issuing.pem", CA_EXTENSIONS);
    sign(dir, "ca.csr", "not-a-ca.pem", LEAF_EXTENSIONS);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.csr",
            "-subj",
            "/CN=Another Key",
        ],
    );
    sign(dir, "other.csr", "other.pem", CA_EXTENSIONS);

    let refused = |args: &[&str], says: &str| {
        let out = mintgate(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
        assert!(!dir.join("ca.pem").exists(), "{args:?}: nothing written");
    };
    let import = ["ca", "import", "--cert"];
    refused(
        &[&import[..], &["not-a-ca.pem", "--chain", "root.pem"]].concat(),
        "not a CA",
    );
    refused(&[&import[..], &["issuing.pem"]].concat(), "up to the root");
    refused(
        &[&import[..], &["other.pem", "--chain", "root.pem"]].concat(),
        "does not match",
    );
    let out = mintgate(&[&import[..], &["issuing.pem", "--chain", "root.pem"]].concat());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("CN=Test Issuing CA"), "{}", text(&out));

    // The imported chain loads with the configured key and issues what openssl accepts.
    let chain = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let ca = CertificateAuthority::from_pem_with_key(&chain, key(dir), None).unwrap();
    assert_eq!(ca.chain_der().len(), 2);
    let now = OffsetDateTime::now_utc();
    let subject = rcgen::KeyPair::generate().unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&subject);
    let id = SpiffeId::parse("spiffe://dev.mintgate.local/workload/imported").unwrap();
    let serial = Serial::from_random([0x42; 17]);
    let signed = ca
        .sign(&IssueSpec {
            spki_der: &spki,
            key_type: KeyType::EcdsaP256,
            spiffe_id: &id,
            dns_names: &[],
            serial: &serial,
            not_before: now - time::Duration::seconds(30),
            not_after: now + time::Duration::minutes(10),
            server_auth: false,
        })
        .unwrap();
    let root_pem = std::fs::read_to_string(dir.join("root.pem")).unwrap();
    let bundle = ca.trust_bundle_pem().to_owned();
    assert!(bundle.ends_with(&root_pem), "the bundle ends with the root");
    mintgate_tests::csr::check_issued(
        &signed.chain_pem,
        &bundle,
        id.as_str(),
        now.unix_timestamp(),
    );
    let (leaf, intermediates) = signed
        .chain_pem
        .split_once("-----END CERTIFICATE-----\n")
        .unwrap();
    std::fs::write(
        dir.join("leaf.pem"),
        format!("{leaf}-----END CERTIFICATE-----\n"),
    )
    .unwrap();
    std::fs::write(dir.join("untrusted.pem"), intermediates).unwrap();
    openssl(
        dir,
        &[
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "untrusted.pem",
            "leaf.pem",
        ],
    );
}

/// `openssl x509 -req` signing `csr` with the root into `out`, with `extensions`.
fn sign(dir: &Path, csr: &str, out: &str, extensions: &str) {
    let ext: PathBuf = dir.join(format!("{out}.ext"));
    std::fs::write(&ext, extensions).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "10",
            "-out",
            out,
            "-extfile",
            ext.to_str().unwrap(),
        ],
    );
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
