//! The two encodings a PKCS#11 EC key needs converting: a token signs with `CKM_ECDSA` as the
//! fixed-length r ‖ s, X.509 wants the DER `ECDSA-Sig-Value` (RFC 3279 §2.2.3); and
//! `CKA_EC_POINT` is a DER OCTET STRING around the uncompressed point (some tokens give the bare
//! point), where rcgen wants the point itself. No I/O.

/// DER `SEQUENCE { r INTEGER, s INTEGER }` of a raw r ‖ s signature whose halves are `field_len`
/// bytes each; `None` if `raw` is not `2 * field_len` bytes.
pub fn der_signature(raw: &[u8], field_len: usize) -> Option<Vec<u8>> {
    if raw.len() != 2 * field_len || field_len == 0 {
        return None;
    }
    let (r, s) = raw.split_at(field_len);
    let mut body = Vec::with_capacity(raw.len() + 6);
    der_integer(r, &mut body);
    der_integer(s, &mut body);
    let mut out = Vec::with_capacity(body.len() + 3);
    out.push(0x30);
    der_length(body.len(), &mut out);
    out.extend_from_slice(&body);
    Some(out)
}

/// The uncompressed point (`04 ‖ X ‖ Y`, coordinates of `field_len` bytes) in a `CKA_EC_POINT`
/// value: a DER OCTET STRING holding it (what PKCS#11 specifies) or the bare point.
pub fn uncompressed_point(value: &[u8], field_len: usize) -> Option<Vec<u8>> {
    let point_len = 2 * field_len + 1;
    let is_point = |p: &[u8]| p.len() == point_len && p.first() == Some(&0x04);
    if is_point(value) {
        return Some(value.to_vec());
    }
    let inner = match value {
        [0x04, len, rest @ ..] if usize::from(*len) < 0x80 => {
            (usize::from(*len) == rest.len()).then_some(rest)?
        }
        [0x04, 0x81, len, rest @ ..] if *len >= 0x80 => {
            (usize::from(*len) == rest.len()).then_some(rest)?
        }
        _ => return None,
    };
    is_point(inner).then(|| inner.to_vec())
}

/// A positive DER INTEGER from big-endian unsigned bytes: leading zeros dropped (one kept for
/// zero), a zero octet prepended when the high bit is set.
fn der_integer(unsigned: &[u8], out: &mut Vec<u8>) {
    let first = unsigned
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(unsigned.len().saturating_sub(1));
    let digits = unsigned.get(first..).unwrap_or(&[0]);
    let digits = if digits.is_empty() { &[0][..] } else { digits };
    let pad = digits[0] & 0x80 != 0;
    out.push(0x02);
    der_length(digits.len() + usize::from(pad), out);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(digits);
}

fn der_length(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        // Checked just above: fits in seven bits.
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        let significant = &bytes[skip..];
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use ring::signature::{
        ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
        UnparsedPublicKey,
    };

    use super::*;

    #[test]
    fn a_fixed_signature_converted_verifies_as_der_under_ring() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        for i in 0..64u8 {
            let msg = [i; 40];
            let fixed = key.sign(&rng, &msg).unwrap();
            let der = der_signature(fixed.as_ref(), 32).unwrap();
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key().as_ref())
                .verify(&msg, &der)
                .unwrap();
        }
        assert_eq!(der_signature(&[1; 63], 32), None);
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        let mut raw = [0u8; 64];
        raw[31] = 1; // r = 1
        raw[32] = 0x80; // s has its high bit set
        let der = der_signature(&raw, 32).unwrap();
        assert_eq!(&der[..5], &[0x30, 0x26, 0x02, 0x01, 0x01]);
        assert_eq!(&der[5..8], &[0x02, 0x21, 0x00]);
        let zero = der_signature(&[0; 64], 32).unwrap();
        assert_eq!(zero, [0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]);
    }

    #[test]
    fn ec_points_bare_or_wrapped() {
        let mut point = vec![0x04];
        point.extend([7u8; 64]);
        let mut wrapped = vec![0x04, 65];
        wrapped.extend(&point);
        assert_eq!(uncompressed_point(&point, 32).as_deref(), Some(&point[..]));
        assert_eq!(
            uncompressed_point(&wrapped, 32).as_deref(),
            Some(&point[..])
        );
        let mut p384 = vec![0x04];
        p384.extend([9u8; 96]);
        let mut wrapped384 = vec![0x04, 97];
        wrapped384.extend(&p384);
        assert_eq!(
            uncompressed_point(&wrapped384, 48).as_deref(),
            Some(&p384[..])
        );
        // A length in long form where the short one fits is not DER.
        let mut long = vec![0x04, 0x81, 97];
        long.extend(&p384);
        assert_eq!(uncompressed_point(&long, 48), None);
        // A compressed point, a wrong length, trailing bytes.
        assert_eq!(uncompressed_point(&[0x02; 33], 32), None);
        assert_eq!(uncompressed_point(&point, 48), None);
        wrapped.push(0);
        assert_eq!(uncompressed_point(&wrapped, 32), None);
    }

    proptest! {
        #[test]
        fn der_signatures_parse_back_to_r_and_s(raw in proptest::collection::vec(any::<u8>(), 96)) {
            let der = der_signature(&raw, 48).unwrap();
            let sig = x509_parser::der_parser::parse_der(&der).unwrap().1;
            let items = sig.as_sequence().unwrap();
            prop_assert_eq!(items.len(), 2);
            for (item, half) in items.iter().zip(raw.chunks(48)) {
                let content = item.as_slice().unwrap();
                let big = match content {
                    [0, next, ..] if next & 0x80 != 0 => content[1..].to_vec(),
                    _ => content.to_vec(),
                };
                let want: Vec<u8> = half.iter().copied().skip_while(|&b| b == 0).collect();
                let want = if want.is_empty() { vec![0] } else { want };
                prop_assert_eq!(big, want);
            }
        }
    }
}
