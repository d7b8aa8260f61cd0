//! SoftHSM2 for tests (the feature `softhsm`, and this crate's own tests): a token of its own for
//! each test, so tests on the PKCS#11 backend run in parallel without seeing each other's keys.
//!
//! SoftHSM reads its configuration (`SOFTHSM2_CONF`, naming the token directory) once per
//! process, at `C_Initialize`, and a process may initialise a module only once. So [`run`]
//! re-runs the calling test alone in a child process of the test binary, with `SOFTHSM2_CONF`
//! pointing at a fresh temporary directory; in the child, the test's body gets a [`SoftHsm`]
//! that initialises tokens there. Without SoftHSM installed the test prints that it skipped,
//! or fails when `MINTGATE_REQUIRE_TOOLS=1` (as CI sets). [`isolate`] and [`child`] do the same
//! for any program that re-runs itself (the benchmark).

// Test support: a failure here is a failed test, reported by panicking.
#![allow(clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::pkcs11::{self, DEFAULT_SESSIONS, Pin, Pkcs11Config, Pkcs11Error};

/// Where Debian's `softhsm2` package puts the module.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The user PIN of every test token.
pub const USER_PIN: &str = "4242-test-pin";
const SO_PIN: &str = "so-test-pin-0000";
/// Set in the child to the test it runs.
const CHILD: &str = "MINTGATE_SOFTHSM_CHILD";
const TOKEN_DIR: &str = "MINTGATE_SOFTHSM_TOKENS";

/// SoftHSM in this (child) process, with a token directory of its own.
#[derive(Debug)]
pub struct SoftHsm {
    tokens: PathBuf,
}

impl SoftHsm {
    /// The directory SoftHSM keeps its tokens in (a temporary directory of the test).
    pub fn token_dir(&self) -> &Path {
        &self.tokens
    }

    /// The file `SOFTHSM2_CONF` names, for child processes (the `mintgate` binary) to use.
    pub fn config_file(&self) -> PathBuf {
        self.tokens.with_file_name("softhsm2.conf")
    }

    /// Initialises a new token labelled `label` with the SO PIN and [`USER_PIN`], and returns
    /// the configuration of a key labelled `key_label` in it (which does not exist yet).
    pub fn token(&self, label: &str, key_label: &str) -> Result<Pkcs11Config, Pkcs11Error> {
        let context = pkcs11::context(Path::new(MODULE))?;
        let token_err = |doing, e| Pkcs11Error::Token {
            token: label.to_owned(),
            doing,
            source: e,
        };
        let slot = context
            .get_all_slots()
            .map_err(|e| token_err("listing slots", e))?
            .into_iter()
            .find(|slot| {
                context
                    .get_token_info(*slot)
                    .is_ok_and(|info| !info.token_initialized())
            })
            .ok_or(Pkcs11Error::NoSession {
                token: label.to_owned(),
            })?;
        let so_pin = cryptoki::types::AuthPin::from(SO_PIN);
        context
            .init_token(slot, &so_pin, label)
            .map_err(|e| token_err("initialising the token", e))?;
        let slot = pkcs11::find_token(&context, label)?;
        let session = context
            .open_rw_session(slot)
            .map_err(|e| token_err("opening a session", e))?;
        session
            .login(cryptoki::session::UserType::So, Some(&so_pin))
            .map_err(|e| token_err("logging in as SO", e))?;
        session
            .init_pin(&cryptoki::types::AuthPin::from(USER_PIN))
            .map_err(|e| token_err("setting the user PIN", e))?;
        session.logout().map_err(|e| token_err("logging out", e))?;
        Ok(Pkcs11Config {
            module: PathBuf::from(MODULE),
            token_label: label.to_owned(),
            key_label: key_label.to_owned(),
            pin: Pin::new(USER_PIN),
            sessions: DEFAULT_SESSIONS,
        })
    }
}

/// Whether SoftHSM2 is installed where [`MODULE`] says.
pub fn available() -> bool {
    Path::new(MODULE).exists()
}

/// Gives `command` (this program run again, usually) SoftHSM of its own: a temporary
/// directory with a SoftHSM configuration and an empty token directory, named to it by
/// `SOFTHSM2_CONF`. The directory lives as long as the returned guard.
pub fn isolate(command: &mut Command) -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens)?;
    let config = dir.path().join("softhsm2.conf");
    std::fs::write(
        &config,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n\
             slots.removable = false\n",
            tokens.display()
        ),
    )?;
    command
        .env("SOFTHSM2_CONF", &config)
        .env(TOKEN_DIR, &tokens);
    Ok(dir)
}

/// In a process started through [`isolate`], its SoftHSM.
pub fn child() -> Option<SoftHsm> {
    let tokens = PathBuf::from(std::env::var_os(TOKEN_DIR)?);
    Some(SoftHsm { tokens })
}

/// Runs `body` with SoftHSM of its own: in the child process, calls it; in the test process,
/// re-runs the test `test` (its path as `module_path!()` and the function name give it) alone
/// in a child with a fresh `SOFTHSM2_CONF`, and fails if the child fails or ran no test.
pub fn run(test: &str, body: impl FnOnce(&SoftHsm)) {
    if let Ok(running) = std::env::var(CHILD) {
        assert_eq!(running, test, "the child runs another test than asked");
        body(&child().expect("the parent set the token directory"));
        return;
    }
    if !available() {
        let required = std::env::var("MINTGATE_REQUIRE_TOOLS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "softhsm2 is not installed ({MODULE} is missing) and MINTGATE_REQUIRE_TOOLS=1: \
             apt-get install -y softhsm2"
        );
        println!("note: softhsm2 is not installed ({MODULE} missing); skipping {test}");
        return;
    }
    // The libtest name: the module path without the crate's name.
    let name = test.split_once("::").map_or(test, |(_, rest)| rest);
    let exe = std::env::current_exe().expect("the test binary");
    let mut command = Command::new(exe);
    command
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, test);
    let _tokens = isolate(&mut command).expect("a SoftHSM configuration of its own");
    let out = command.output().expect("the test binary runs again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(out.status.success(), "{test} failed in its SoftHSM child");
    assert!(
        stdout.contains("1 passed"),
        "{test}: the SoftHSM child ran no test named {name}"
    );
}

/// A test that runs with SoftHSM of its own ([`run`]): `softhsm_test!(fn name(hsm) { ... })`,
/// where `hsm` is the [`SoftHsm`] the body gets.
#[macro_export]
macro_rules! softhsm_test {
    ($(#[$meta:meta])* fn $name:ident($hsm:ident) $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            $crate::softhsm::run(
                concat!(module_path!(), "::", stringify!($name)),
                |$hsm: &$crate::softhsm::SoftHsm| $body,
            );
        }
    };
}
