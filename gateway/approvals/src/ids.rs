//! Ids shown to users, and the time representation of the store.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};

use crate::ApprovalError;

/// RFC 4648 base32 alphabet, lowercase (easy to read out and type; no padding needed for 10 bytes).
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// 10 random bytes = 80 bits = exactly 16 base32 characters.
const ID_BYTES: usize = 10;
const ID_CHARS: usize = 16;

fn random_suffix() -> Result<String, ApprovalError> {
    let mut bytes = [0u8; ID_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApprovalError::Random)?;
    let mut bits: u128 = 0;
    for b in bytes {
        bits = (bits << 8) | u128::from(b);
    }
    let mut out = String::with_capacity(ID_CHARS);
    for i in (0..ID_CHARS).rev() {
        let idx = ((bits >> (i * 5)) & 0x1f) as usize;
        out.push(char::from(BASE32[idx]));
    }
    Ok(out)
}

fn parse_id(s: &str, prefix: &str, what: &str) -> Result<String, ApprovalError> {
    let s = s.trim();
    let ok = s.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == ID_CHARS
            && rest
                .bytes()
                .all(|b| BASE32.contains(&b.to_ascii_lowercase()))
    });
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(ApprovalError::Invalid(format!(
            "{what} id must be {prefix} followed by {ID_CHARS} base32 characters"
        )))
    }
}

macro_rules! id_type {
    ($name:ident, $prefix:literal, $what:literal) => {
        #[doc = concat!("A ", $what, " id: `", $prefix, "` + 16 lowercase base32 characters (80 random bits).")]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub(crate) fn random() -> Result<Self, ApprovalError> {
                Ok(Self(format!("{}{}", $prefix, random_suffix()?)))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ApprovalError;
            /// Accepts what users type: surrounding spaces and upper case are tolerated.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_id(s, $prefix, $what).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(RequestId, "apr_", "approval request");
id_type!(GrantId, "grt_", "grant");

/// Milliseconds since the Unix epoch, as stored.
pub(crate) fn to_ms(t: SystemTime) -> Result<i64, ApprovalError> {
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| ApprovalError::Invalid("time before 1970".to_owned()))?;
    i64::try_from(d.as_millis()).map_err(|_| ApprovalError::Invalid("time too far".to_owned()))
}

pub(crate) fn from_ms(ms: i64) -> Result<SystemTime, ApprovalError> {
    let ms = u64::try_from(ms).map_err(|_| ApprovalError::Corrupt(format!("time {ms}")))?;
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .ok_or_else(|| ApprovalError::Corrupt(format!("time {ms}")))
}

pub(crate) fn opt_from_ms(ms: Option<i64>) -> Result<Option<SystemTime>, ApprovalError> {
    ms.map(from_ms).transpose()
}

/// Hex SHA-256 of the statement text (the ticket key).
pub fn statement_sha256(statement: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, statement.as_bytes()).as_ref())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn ids_are_prefixed_random_and_parse_back() {
        let a = RequestId::random().unwrap();
        let b = RequestId::random().unwrap();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("apr_"));
        assert_eq!(a.as_str().len(), 4 + ID_CHARS);
        assert_eq!(a.as_str().parse::<RequestId>().unwrap(), a);
        assert_eq!(
            format!(
                " {} ",
                a.as_str().to_ascii_uppercase().replace("APR_", "apr_")
            )
            .parse::<RequestId>()
            .unwrap(),
            a
        );
        let g = GrantId::random().unwrap();
        assert!(g.as_str().starts_with("grt_"));
        assert!(g.as_str().parse::<RequestId>().is_err());
        assert!("apr_short".parse::<RequestId>().is_err());
        assert!("apr_0000000000000000".parse::<RequestId>().is_err()); // 0 is not base32
        assert!("apr_aaaaaaaaaaaaaaaa; drop".parse::<RequestId>().is_err());
    }

    #[test]
    fn base32_encodes_every_bit() {
        // All 16 characters together must cover the 80 bits: over many ids, every position
        // takes more than one value, and the alphabet is respected.
        let ids: Vec<String> = (0..64).map(|_| random_suffix().unwrap()).collect();
        for pos in 0..ID_CHARS {
            let distinct: std::collections::BTreeSet<u8> =
                ids.iter().map(|s| s.as_bytes()[pos]).collect();
            assert!(distinct.len() > 1, "position {pos} constant");
        }
    }

    #[test]
    fn times_round_trip_in_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(from_ms(to_ms(t).unwrap()).unwrap(), t);
        assert!(to_ms(UNIX_EPOCH - Duration::from_secs(1)).is_err());
        assert!(from_ms(-1).is_err());
    }

    #[test]
    fn statement_hash_is_sha256_hex() {
        assert_eq!(
            statement_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
