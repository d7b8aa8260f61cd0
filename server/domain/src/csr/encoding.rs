//! Input framing: a CSR arrives as DER, or as exactly one PEM `CERTIFICATE REQUEST` (or legacy
//! `NEW CERTIFICATE REQUEST`) block with nothing but whitespace around it. Owns only the framing;
//! the DER inside is parsed by the caller.

use std::borrow::Cow;
use std::io::Cursor;

use x509_parser::pem::Pem;

use super::CsrError;

const LABELS: [&str; 2] = ["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"];
const BEGIN: &str = "-----BEGIN ";
/// The tag byte of a DER SEQUENCE, which every CertificationRequest starts with.
const DER_SEQUENCE: u8 = 0x30;

/// Returns the DER bytes of the one CSR in `input`.
pub(super) fn decode(input: &[u8]) -> Result<Cow<'_, [u8]>, CsrError> {
    if input.first() == Some(&DER_SEQUENCE) {
        return Ok(Cow::Borrowed(input));
    }
    let input = input.trim_ascii_start();
    if !input.starts_with(BEGIN.as_bytes()) {
        return Err(CsrError::Malformed);
    }
    decode_pem(input).map(Cow::Owned)
}

/// Decodes one PEM block that starts at the beginning of `input`; only whitespace may follow it.
fn decode_pem(input: &[u8]) -> Result<Vec<u8>, CsrError> {
    let mut lines = input.split(|b| *b == b'\n').map(<[u8]>::trim_ascii_end);
    let first = lines.next().ok_or(CsrError::Malformed)?;
    let label = LABELS
        .into_iter()
        .find(|label| first == format!("{BEGIN}{label}-----").as_bytes())
        .ok_or(CsrError::Malformed)?;
    let end = format!("-----END {label}-----");

    let mut body = String::new();
    let mut closed = false;
    for line in lines.by_ref() {
        if line == end.as_bytes() {
            closed = true;
            break;
        }
        if line.starts_with(b"-----") {
            return Err(CsrError::Malformed);
        }
        let line = std::str::from_utf8(line.trim_ascii_start()).map_err(|_| CsrError::Malformed)?;
        body.push_str(line);
        body.push('\n');
    }
    if !closed {
        return Err(CsrError::Malformed);
    }
    if lines.any(|line| !line.trim_ascii().is_empty()) {
        return Err(CsrError::TrailingData);
    }

    // The framing is checked above; x509-parser only decodes the base64 (strict padding).
    let block = format!("{BEGIN}{label}-----\n{body}{end}\n");
    let (pem, _) = Pem::read(Cursor::new(block.as_bytes())).map_err(|_| CsrError::Malformed)?;
    Ok(pem.contents)
}
