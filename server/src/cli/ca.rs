//! `mintgate ca`: the binary's side of `ca csr` and `ca import` (arguments, files, exit codes);
//! the work is `mintgate_server::ca_admin`'s.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use mintgate_server::ca_admin::{self, CsrSubject};

use crate::EXIT_CONFIG;

#[derive(Subcommand)]
pub(crate) enum CaCommand {
    /// Write a CSR for the issuing CA, for the offline root to sign, with the key in the
    /// configured backend ([ca] backend): a key file is made (mode 0600) if missing, a PKCS#11
    /// key pair is generated in the token if no key carries the label; an existing key is used.
    Csr {
        /// The configuration file; only its [ca] table is read.
        #[arg(long, env = "MINTGATE_CONFIG")]
        config: PathBuf,
        /// Where to write the CSR (PEM); standard output if not given.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value = "Mintgate Issuing CA")]
        common_name: String,
        #[arg(long)]
        organization: Option<String>,
        /// The key of a CA to rotate to, instead of [ca]'s: a key file path (made if missing,
        /// mode 0600) with backend "file", a key label in the configured token with "pkcs11".
        /// This is the `key` of Admin/ProposeCa PREPARE.
        #[arg(long)]
        key: Option<String>,
    },
    /// Check the certificate the root signed (a CA, for the configured key, linking up to a
    /// self-signed root, valid now) and write it, with its chain, to [ca] cert. Exits 1 naming
    /// what is wrong; nothing is written then.
    Import {
        #[arg(long, env = "MINTGATE_CONFIG")]
        config: PathBuf,
        /// The signed issuing CA certificate (PEM; the chain may follow it in the file).
        #[arg(long)]
        cert: PathBuf,
        /// The certificates above it, up to and including the root (PEM); repeatable.
        #[arg(long)]
        chain: Vec<PathBuf>,
    },
}

pub(crate) fn ca_command(command: CaCommand) -> anyhow::Result<ExitCode> {
    let fail = |e: ca_admin::CaAdminError| {
        eprintln!("mintgate: {e}{}", cause_chain(&e));
        Ok(ExitCode::from(if e.is_config() { EXIT_CONFIG } else { 1 }))
    };
    let config = match &command {
        CaCommand::Csr { config, .. } | CaCommand::Import { config, .. } => config,
    };
    let mut files = match ca_admin::ca_files(config) {
        Ok(files) => files,
        Err(e) => return fail(e.into()),
    };
    match command {
        CaCommand::Csr {
            out,
            common_name,
            organization,
            key,
            ..
        } => {
            if let Some(key) = key {
                match files.pkcs11.as_mut() {
                    Some(token) => token.key_label = Some(key),
                    None => files.key = Some(key.into()),
                }
            }
            let subject = CsrSubject {
                common_name,
                organization,
            };
            let csr = match ca_admin::csr(&files, &subject) {
                Ok(csr) => csr,
                Err(e) => return fail(e),
            };
            let key = if csr.generated {
                "generated"
            } else {
                "existing"
            };
            match out {
                Some(path) => std::fs::write(&path, &csr.pem)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{}", csr.pem),
            }
            eprintln!("CSR for the {key} {} key of the issuing CA", csr.backend);
        }
        CaCommand::Import { cert, chain, .. } => {
            // A bad [ca] table is reported as such before any file is read.
            if let Err(e) = files.key_source() {
                return fail(e.into());
            }
            let mut pem = std::fs::read_to_string(&cert)
                .with_context(|| format!("--cert {}", cert.display()))?;
            for path in &chain {
                let more = std::fs::read_to_string(path)
                    .with_context(|| format!("--chain {}", path.display()))?;
                pem.push_str(&more);
            }
            let now = time::OffsetDateTime::now_utc();
            match ca_admin::import(&files, &cert, &pem, now) {
                Ok(done) => println!(
                    "imported {} (notAfter {}, {} certificates up to the root) into {}",
                    done.subject,
                    done.not_after,
                    done.chain_len,
                    done.path.display()
                ),
                Err(e) => return fail(e),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// ": cause: cause ..." of an error's sources.
fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    out
}
