use super::*;
use mintgate_domain::lifetime::DEFAULT_MIN_LIFETIME;

#[test]
fn the_sample_config_parses_and_unknown_keys_are_refused() {
    let sample = include_str!("../../../mintgate.example.toml");
    let parsed: FileConfig = Figment::new()
        .merge(Toml::string(sample))
        .extract()
        .unwrap();
    assert_eq!(parsed.trust_domain.as_deref(), Some("prod.example"));
    assert_eq!(parsed.environment.as_deref(), Some("production"));
    assert!(!parsed.trust.bootstrap_cas.is_empty());
    assert_eq!(parsed.ca.min_lifetime().unwrap(), Duration::from_secs(300));
    assert_eq!(
        CaFiles::default().min_lifetime().unwrap(),
        DEFAULT_MIN_LIFETIME
    );
    let zero = CaFiles {
        min_lifetime_seconds: Some(0),
        ..CaFiles::default()
    };
    let err = zero.min_lifetime().unwrap_err().to_string();
    assert!(err.contains("ca.min_lifetime_seconds"), "{err}");
    assert_eq!(parsed.audit.checkpoint_every_events, Some(1000));
    assert_eq!(parsed.audit.checkpoint_every_seconds, Some(300));
    let hub = parsed.revocation.hub_config().unwrap();
    assert_eq!(hub.heartbeat, Duration::from_secs(5));
    assert_eq!(hub.max_streams_per_identity, 4);

    assert_eq!(
        parsed.telemetry.otlp_endpoint().unwrap().as_deref(),
        Some("http://127.0.0.1:4317")
    );
    assert_eq!(
        FileConfig::default().telemetry.otlp_endpoint().unwrap(),
        None
    );
    for bad in ["https://collector:4317", "collector:4317", "http://"] {
        let telemetry = TelemetryFile {
            otlp_endpoint: Some(bad.to_owned()),
        };
        let err = telemetry.otlp_endpoint().unwrap_err().to_string();
        assert!(err.contains("telemetry.otlp_endpoint"), "{bad}: {err}");
    }

    let grpc = parsed.grpc.config().unwrap();
    assert_eq!(grpc.call_timeout, Duration::from_secs(30));
    assert_eq!(grpc.handshake_timeout, Duration::from_secs(10));
    assert_eq!(grpc.pressure_handshake_timeout, Duration::from_secs(1));
    assert_eq!(grpc.max_handshakes_per_source, 64);
    assert_eq!(
        grpc.max_connections,
        usize::MAX,
        "unset: the open-file limit decides"
    );
    assert_eq!(parsed.grpc.descriptor_reserve().unwrap(), 128);
    let slow_pressure = GrpcFile {
        pressure_handshake_timeout_ms: Some(20_000),
        ..GrpcFile::default()
    };
    let err = slow_pressure.config().unwrap_err().to_string();
    assert!(err.contains("grpc.pressure_handshake_timeout_ms"), "{err}");
    let no_reserve = GrpcFile {
        descriptor_reserve: Some(0),
        ..GrpcFile::default()
    };
    let err = no_reserve.descriptor_reserve().unwrap_err().to_string();
    assert!(err.contains("grpc.descriptor_reserve"), "{err}");

    let zero = RevocationFile {
        heartbeat_seconds: Some(0),
        ..RevocationFile::default()
    };
    let err = zero.hub_config().unwrap_err().to_string();
    assert!(err.contains("revocation.heartbeat_seconds"), "{err}");

    let td = TrustDomain::parse("prod.example").unwrap();
    let jwt = parsed.attestation.jwt(&td).unwrap().unwrap();
    assert_eq!(jwt.rules.audiences, ["mintgate"]);
    assert_eq!(
        jwt.rules.spiffe_id.as_str(),
        "spiffe://prod.example/ns/{namespace}/sa/{serviceaccount}"
    );
    assert_eq!(jwt.min_refresh, Duration::from_secs(30));
    assert!(matches!(jwt.jwks, JwksSource::File(_)));
    assert!(AttestationFile::default().jwt(&td).unwrap().is_none());
    let base = parsed.attestation.jwt.clone().unwrap();
    let refused = [
        (
            JwtFile {
                jwks_url: Some("https://issuer/jwks".to_owned()),
                ..base.clone()
            },
            "exactly one of jwks_file and jwks_url",
        ),
        (
            JwtFile {
                jwks_file: None,
                jwks_url: Some("http://issuer/jwks".to_owned()),
                ..base.clone()
            },
            "attestation.jwt.jwks_url",
        ),
        (
            JwtFile {
                jwks_file: None,
                jwks_url: Some("https://issuer/jwks".to_owned()),
                ..base.clone()
            },
            "attestation.jwt.jwks_ca_file",
        ),
        (
            JwtFile {
                audiences: Vec::new(),
                ..base.clone()
            },
            "attestation.jwt.audiences",
        ),
        (
            JwtFile {
                spiffe_id: Some("spiffe://other.example/ns/{namespace}".to_owned()),
                ..base.clone()
            },
            "attestation.jwt.spiffe_id",
        ),
        (
            JwtFile {
                jwks_min_refresh_seconds: Some(0),
                ..base.clone()
            },
            "attestation.jwt.jwks_min_refresh_seconds",
        ),
    ];
    for (file, field) in refused {
        let attestation = AttestationFile { jwt: Some(file) };
        let err = attestation.jwt(&td).unwrap_err().to_string();
        assert!(err.contains(field), "{field}: {err}");
    }

    let bad = format!("{sample}\ntypo_key = 1\n");
    let err = Figment::new()
        .merge(Toml::string(&bad))
        .extract::<FileConfig>()
        .unwrap_err();
    assert!(err.to_string().contains("typo_key"), "{err}");
}

#[test]
fn the_example_policy_directory_loads_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy/example");
    let source = load_policy_dir(&dir).unwrap();
    assert_eq!(source.files.len(), 3, "issuance, operators and holds");
    let td = TrustDomain::parse("prod.example").unwrap();
    let policy = mintgate_domain::policy::Policy::load(&source, Some(&td)).unwrap();
    assert_eq!(policy.policy_count(), 21);

    // The dev directory on disk is what --dev embeds.
    let dev = load_policy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policy/dev"));
    assert_eq!(dev.unwrap(), PolicySource::dev());

    let missing = load_policy_dir(&dir.join("nowhere"))
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("policy_dir") && missing.contains("schema.cedarschema"),
        "{missing}"
    );
}

#[test]
fn urls_lose_their_password_in_logs() {
    assert_eq!(
        redact_url("postgres://u:secret@db:5432/x"),
        "postgres://***@db:5432/x"
    );
    assert_eq!(redact_url("sqlite://mintgate.db"), "sqlite://mintgate.db");
}
