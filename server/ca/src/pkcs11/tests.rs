//! The PKCS#11 backend against SoftHSM2 (a token of its own per test, see [`crate::softhsm`]).

use rcgen::{PublicKeyData as _, SigningKey as _};
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};

use super::*;
use crate::{softhsm, softhsm_test};

softhsm_test! {
fn a_key_is_generated_once_then_found_by_label_and_signs(hsm) {
            let config = hsm.token("ca-token", "issuing").unwrap();
            let err = Pkcs11Key::open(&config).unwrap_err();
            assert_eq!(err.reason(), "PKCS11_KEY_NOT_FOUND", "{err}");

            let (key, generated) = Pkcs11Key::open_or_generate(&config).unwrap();
            assert!(generated);
            assert_eq!(key.curve(), Curve::P256);
            let (again, generated) = Pkcs11Key::open_or_generate(&config).unwrap();
            assert!(!generated, "the label finds the key; no second key is made");
            assert_eq!(again.der_bytes(), key.der_bytes());
            let opened = Pkcs11Key::open(&config).unwrap();
            assert_eq!(opened.subject_public_key_info(), key.subject_public_key_info());

            let msg = b"tbsCertificate stand-in";
            let sig = key.sign(msg).unwrap();
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.der_bytes())
                .verify(msg, &sig)
                .expect("ring verifies the token's signature");

            let debug = format!("{key:?} {config:?}");
            assert!(!debug.contains(softhsm::USER_PIN), "{debug}");
            assert!(debug.contains("issuing"), "{debug}");
    }
}

softhsm_test! {
fn wrong_pin_unknown_token_and_missing_module_are_named(hsm) {
            let config = hsm.token("pin-token", "k").unwrap();
            let wrong = Pkcs11Config {
                pin: Pin::new("not-the-pin"),
                ..config.clone()
            };
            let err = Pkcs11Key::open(&wrong).unwrap_err();
            assert_eq!(err.reason(), "PKCS11_PIN_INCORRECT", "{err}");
            assert!(!err.to_string().contains("not-the-pin"), "{err}");

            let other = Pkcs11Config {
                token_label: "no-such-token".to_owned(),
                ..config.clone()
            };
            let err = Pkcs11Key::open(&other).unwrap_err();
            assert_eq!(err.reason(), "PKCS11_TOKEN_NOT_FOUND", "{err}");

            let module = Pkcs11Config {
                module: PathBuf::from("/nonexistent/libpkcs11.so"),
                ..config
            };
            let err = Pkcs11Key::open(&module).unwrap_err();
            assert_eq!(err.reason(), "PKCS11_MODULE", "{err}");
    }
}

softhsm_test! {
fn signing_takes_a_free_session_while_others_are_busy(hsm) {
            let config = Pkcs11Config {
                sessions: 3,
                ..hsm.token("pool-token", "pooled").unwrap()
            };
            let (key, _) = Pkcs11Key::open_or_generate(&config).unwrap();
            // Two of three sessions are held (as by signers on other threads): a third signer
            // must not wait for them. Were the pool one session, this would never return.
            let held = key.hold_sessions(2);
            for i in 0..4u8 {
                let sig = key.sign(&[i; 10]).unwrap();
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.der_bytes())
                    .verify(&[i; 10], &sig)
                    .unwrap();
            }
            drop(held);

            // Many threads at once, every signature valid.
            std::thread::scope(|s| {
                for t in 0..6u8 {
                    let key = &key;
                    s.spawn(move || {
                        for i in 0..20u8 {
                            let msg = [t, i];
                            let sig = key.sign(&msg).unwrap();
                            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.der_bytes())
                                .verify(&msg, &sig)
                                .unwrap();
                        }
                    });
                }
            });
    }
}

softhsm_test! {
fn a_logged_out_session_is_reopened(hsm) {
        let config = Pkcs11Config {
            sessions: 1,
            ..hsm.token("drop-token", "k").unwrap()
        };
        let (key, _) = Pkcs11Key::open_or_generate(&config).unwrap();
        // Log the application out of the token behind the key's back (login state is shared by
        // all its sessions), as a token that was reset would.
        let context = context(&config.module).unwrap();
        let slot = find_token(&context, &config.token_label).unwrap();
        context.open_ro_session(slot).unwrap().logout().unwrap();
        let sig = key.sign(b"after").unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.der_bytes())
            .verify(b"after", &sig)
            .unwrap();
    }
}
