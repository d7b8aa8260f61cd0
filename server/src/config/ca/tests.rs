use std::os::unix::fs::PermissionsExt as _;

use super::*;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn parse(toml: &str) -> Result<CaFiles, Box<figment::Error>> {
    use figment::providers::{Format as _, Toml};
    figment::Figment::new()
        .merge(Toml::string(toml))
        .extract()
        .map_err(Box::new)
}

#[test]
fn a_file_key_others_may_read_is_a_config_error_naming_ca_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ca.key");
    let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
    std::fs::write(&key, pem).unwrap();
    let files = CaFiles {
        key: Some(key.clone()),
        ..CaFiles::default()
    };
    chmod(&key, 0o644);
    let err = files.key_source().unwrap_err().to_string();
    assert!(err.starts_with("config: ca.key:"), "{err}");
    assert!(
        err.contains("mode 644") && err.contains("chmod 600"),
        "{err}"
    );
    chmod(&key, 0o600);
    assert!(matches!(files.key_source(), Ok(CaKeySource::File(_))));
    let missing = CaFiles {
        key: Some(dir.path().join("nope.key")),
        ..CaFiles::default()
    };
    let err = missing.key_source().unwrap_err().to_string();
    assert!(err.contains("ca.key") && err.contains("nope.key"), "{err}");
}

#[test]
fn pkcs11_reads_the_pin_from_a_private_file_or_a_variable_and_never_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, "s3cret-pin-1234\n").unwrap();
    chmod(&pin_file, 0o600);
    let toml = format!(
        "backend = \"pkcs11\"\ncert = \"ca.pem\"\n[pkcs11]\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\n\
         token_label = \"mintgate\"\nkey_label = \"issuing-ca\"\npin_file = \"{}\"\nsessions = 8\n",
        pin_file.display()
    );
    let files = parse(&toml).unwrap();
    let CaKeySource::Pkcs11(config) = files.key_source().unwrap() else {
        panic!("a pkcs11 key")
    };
    assert_eq!(config.token_label, "mintgate");
    assert_eq!(config.key_label, "issuing-ca");
    assert_eq!(config.sessions, 8);
    let debug = format!("{:?} {files:?}", files.key_source().unwrap());
    assert!(!debug.contains("s3cret"), "{debug}");

    chmod(&pin_file, 0o640);
    let err = files.key_source().unwrap_err().to_string();
    assert!(
        err.contains("ca.pkcs11.pin_file") && err.contains("mode 640"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");

    // PATH is always set; a variable that is not set is named.
    let by_env = parse(
        "backend = \"pkcs11\"\n[pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\nkey_label = \"k\"\n\
         pin_env = \"MINTGATE_TEST_PIN_THAT_IS_NOT_SET\"\n",
    )
    .unwrap();
    let err = by_env.key_source().unwrap_err().to_string();
    assert!(
        err.contains("ca.pkcs11.pin_env") && err.contains("MINTGATE_TEST_PIN_THAT_IS_NOT_SET"),
        "{err}"
    );
    let by_path = parse(
        "backend = \"pkcs11\"\n[pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\nkey_label = \"k\"\n\
         pin_env = \"PATH\"\n",
    )
    .unwrap();
    assert!(matches!(by_path.key_source(), Ok(CaKeySource::Pkcs11(_))));
}

#[test]
fn backends_and_their_keys_must_agree() {
    let cases = [
        ("backend = \"pkcs11\"\nkey = \"ca.key\"\n", "ca.key"),
        ("backend = \"pkcs11\"\n", "ca.pkcs11"),
        (
            "backend = \"file\"\n[pkcs11]\nmodule = \"m.so\"\n",
            "ca.pkcs11",
        ),
        (
            "backend = \"pkcs11\"\n[pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\n",
            "ca.pkcs11.key_label",
        ),
        (
            "backend = \"pkcs11\"\n[pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\nkey_label = \"k\"\n",
            "ca.pkcs11.pin_file",
        ),
        (
            "backend = \"pkcs11\"\n[pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\nkey_label = \"k\"\n\
             pin_env = \"PATH\"\npin_file = \"p\"\n",
            "ca.pkcs11.pin_env",
        ),
        (
            "backend = \"pkcs11\"\n[pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\nkey_label = \"k\"\n\
             pin_env = \"PATH\"\nsessions = 0\n",
            "ca.pkcs11.sessions",
        ),
        (
            "backend = \"pkcs11\"\n[pkcs11]\nmodule = \"m.so\"\ntoken_label = \"a-token-label-longer-than-32-bytes\"\n\
             key_label = \"k\"\npin_env = \"PATH\"\n",
            "ca.pkcs11.token_label",
        ),
        ("", "ca.key"),
    ];
    for (toml, field) in cases {
        let err = parse(toml).unwrap().key_source().unwrap_err().to_string();
        assert!(err.contains(field), "{toml}: {err}");
    }
    assert!(
        parse("backend = \"hsm\"\n").is_err(),
        "unknown backends are refused"
    );
    assert!(
        parse("[pkcs11]\npin = \"1234\"\n").is_err(),
        "no PIN in the config file"
    );
}
