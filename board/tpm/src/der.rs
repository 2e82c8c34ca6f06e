//! The few DER encodings the signing key needs: an ECDSA signature (`Ecdsa-Sig-Value`,
//! RFC 3279 §2.2.3) from the TPM's raw `r` and `s`, and the `SubjectPublicKeyInfo`
//! (RFC 5480 §2) of a P-256 public key.

/// Length of a P-256 field element / scalar in bytes.
pub(crate) const P256_SCALAR_LEN: usize = 32;
/// Length of an uncompressed SEC1 P-256 point: `0x04 || X || Y`.
pub(crate) const P256_SEC1_LEN: usize = 1 + 2 * P256_SCALAR_LEN;

/// DER prefix of a P-256 `SubjectPublicKeyInfo`: SEQUENCE { SEQUENCE { id-ecPublicKey,
/// prime256v1 }, BIT STRING (0 unused bits) } up to the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Uncompressed SEC1 point from the TPM's `x` and `y` (which may come without leading
/// zero bytes). `None` if a coordinate is longer than 32 bytes.
pub(crate) fn sec1_uncompressed(x: &[u8], y: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(P256_SEC1_LEN);
    out.push(0x04);
    out.extend_from_slice(&left_pad(x)?);
    out.extend_from_slice(&left_pad(y)?);
    Some(out)
}

/// `SubjectPublicKeyInfo` DER of an uncompressed SEC1 P-256 point.
pub(crate) fn p256_spki(sec1: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(P256_SPKI_PREFIX.len() + sec1.len());
    out.extend_from_slice(&P256_SPKI_PREFIX);
    out.extend_from_slice(sec1);
    out
}

/// `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` from big-endian `r` and `s`
/// of at most 32 bytes each. `None` if either is longer.
pub(crate) fn ecdsa_signature(r: &[u8], s: &[u8]) -> Option<Vec<u8>> {
    let r = der_integer(&left_pad(r)?);
    let s = der_integer(&left_pad(s)?);
    // Each INTEGER is at most 2 + 33 bytes, so the content fits a short-form length.
    let len = u8::try_from(r.len() + s.len()).ok()?;
    let mut out = Vec::with_capacity(2 + usize::from(len));
    out.push(0x30);
    out.push(len);
    out.extend_from_slice(&r);
    out.extend_from_slice(&s);
    Some(out)
}

fn left_pad(v: &[u8]) -> Option<[u8; P256_SCALAR_LEN]> {
    let start = P256_SCALAR_LEN.checked_sub(v.len())?;
    let mut out = [0u8; P256_SCALAR_LEN];
    out[start..].copy_from_slice(v);
    Some(out)
}

/// A non-negative DER INTEGER: minimal big-endian, with a 0x00 byte when the top bit is set.
fn der_integer(v: &[u8; P256_SCALAR_LEN]) -> Vec<u8> {
    let first = v
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(P256_SCALAR_LEN - 1);
    let digits = &v[first..];
    let pad = digits[0] & 0x80 != 0;
    let len = digits.len() + usize::from(pad);
    let mut out = Vec::with_capacity(2 + len);
    out.push(0x02);
    // len <= 33: short form.
    out.push(len as u8);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(digits);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{
        EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING,
    };

    #[test]
    fn integers_are_minimal_and_positive() {
        let mut v = [0u8; 32];
        assert_eq!(der_integer(&v), vec![0x02, 0x01, 0x00]);
        v[31] = 0x7f;
        assert_eq!(der_integer(&v), vec![0x02, 0x01, 0x7f]);
        v[31] = 0x80;
        assert_eq!(der_integer(&v), vec![0x02, 0x02, 0x00, 0x80]);
        let full = [0xffu8; 32];
        let enc = der_integer(&full);
        assert_eq!(&enc[..3], &[0x02, 33, 0x00]);
        assert_eq!(enc.len(), 35);
        assert!(ecdsa_signature(&[1u8; 33], &[1]).is_none());
        assert!(sec1_uncompressed(&[1u8; 33], &[1]).is_none());
    }

    /// ring signs in fixed r||s form; our DER encoding of that must be byte-for-byte what
    /// ring itself produces for ASN.1, and must verify with the SPKI we build.
    #[test]
    fn der_matches_ring_and_verifies() {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let fixed =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap();
        let public = fixed.public_key().as_ref().to_vec();
        assert_eq!(public.len(), P256_SEC1_LEN);
        assert_eq!(
            sec1_uncompressed(&public[1..33], &public[33..]).unwrap(),
            public
        );
        let spki = p256_spki(&public);
        assert_eq!(spki.len(), 91);
        for i in 0..50u8 {
            let msg = [i; 7];
            let sig = fixed.sign(&rng, &msg).unwrap();
            let (r, s) = sig.as_ref().split_at(32);
            // Strip leading zeros the way a TPM may return them.
            let trim = |v: &[u8]| v[v.iter().position(|&b| b != 0).unwrap_or(31)..].to_vec();
            let der = ecdsa_signature(&trim(r), &trim(s)).unwrap();
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &public)
                .verify(&msg, &der)
                .unwrap();
        }
        // ring's own DER output, taken apart and re-encoded by us, is byte-for-byte equal.
        let asn1 =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref(), &rng).unwrap();
        for i in 0..50u8 {
            let sig = asn1.sign(&rng, &[i]).unwrap();
            let sig = sig.as_ref();
            assert_eq!(sig[0], 0x30);
            let r_len = usize::from(sig[3]);
            let r = &sig[4..4 + r_len];
            let s = &sig[4 + r_len + 2..];
            let strip = |v: &[u8]| {
                if v[0] == 0 {
                    v[1..].to_vec()
                } else {
                    v.to_vec()
                }
            };
            assert_eq!(ecdsa_signature(&strip(r), &strip(s)).unwrap(), sig);
        }
    }
}
