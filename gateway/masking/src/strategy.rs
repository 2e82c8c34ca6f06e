//! Applying a [`Strategy`] to one span.

use ring::hmac;

use crate::config::Strategy;
use crate::entity::Entity;

/// Append the replacement of `v` (an `entity` span) to `out`.
pub(crate) fn apply(
    strategy: &Strategy,
    entity: Entity,
    v: &[u8],
    key: &hmac::Key,
    out: &mut Vec<u8>,
) {
    match strategy {
        Strategy::Redact {
            replacement: Some(r),
        } => out.extend_from_slice(r.as_bytes()),
        Strategy::Redact { replacement: None } => {
            out.extend_from_slice(b"[REDACTED:");
            out.extend_from_slice(entity.label().as_bytes());
            out.push(b']');
        }
        Strategy::Partial { keep_last } => partial(v, usize::from(*keep_last), out),
        Strategy::KeyedHash { length } => {
            let tag = hmac::sign(key, &normalize(entity, v));
            let hex = hex::encode(tag.as_ref());
            out.extend_from_slice(b"tok_");
            out.extend_from_slice(&hex.as_bytes()[..usize::from(*length).min(hex.len())]);
        }
        Strategy::FormatPreserving => format_preserving(entity, v, key, out),
    }
}

/// Start of a character: ASCII or a UTF-8 lead byte (continuation bytes are 0x80..=0xBF).
fn is_char_start(b: u8) -> bool {
    !(0x80..=0xbf).contains(&b)
}

fn significant(b: u8) -> bool {
    b.is_ascii_alphanumeric() || (b >= 0x80 && is_char_start(b))
}

/// Star every letter/digit (any non-ASCII character counts as one) except the last `keep`,
/// which is capped at half of them; separators stay.
fn partial(v: &[u8], keep_last: usize, out: &mut Vec<u8>) {
    let sig = v.iter().filter(|&&b| significant(b)).count();
    let keep = keep_last.min(sig / 2);
    let star_until = sig - keep;
    let mut k = 0usize;
    let mut starring = false;
    for &b in v {
        if significant(b) {
            k += 1;
            starring = k <= star_until;
            if starring {
                out.push(b'*');
                continue;
            }
        } else if b >= 0x80 {
            // Continuation byte: dropped when its character was starred.
            if starring {
                continue;
            }
        } else {
            starring = false;
        }
        out.push(b);
    }
}

/// What is hashed: the same card, phone, IBAN or SSN written with or without separators, and
/// an e-mail in any case, give the same token.
fn normalize(entity: Entity, v: &[u8]) -> Vec<u8> {
    match entity {
        Entity::Card | Entity::Ssn | Entity::Phone | Entity::Iban => v
            .iter()
            .filter(|b| b.is_ascii_alphanumeric())
            .map(u8::to_ascii_uppercase)
            .collect(),
        Entity::Email => v.to_ascii_lowercase(),
        _ => v.to_vec(),
    }
}

/// Digits → digits, ASCII letters → letters of the same case, other ASCII kept, each non-ASCII
/// character → one lower-case letter; the choices come from an HMAC stream keyed by the engine
/// key over the normalized value, so equal inputs give equal outputs.
fn format_preserving(entity: Entity, v: &[u8], key: &hmac::Key, out: &mut Vec<u8>) {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(b"gatehouse-fpe-v1\0");
    ctx.update(&normalize(entity, v));
    let seed = ctx.sign();
    let mut block = [0u8; 32];
    let mut used = 32usize;
    let mut counter = 0u32;
    let mut next = |m: u8| -> u8 {
        if used == 32 {
            let mut c = hmac::Context::with_key(key);
            c.update(seed.as_ref());
            c.update(&counter.to_be_bytes());
            block.copy_from_slice(c.sign().as_ref());
            counter = counter.wrapping_add(1);
            used = 0;
        }
        let r = block[used];
        used += 1;
        // Modulo bias below 4% for 26 and 10: a pseudonym, not a cipher.
        r % m
    };
    for &b in v {
        match b {
            b'0'..=b'9' => out.push(b'0' + next(10)),
            b'a'..=b'z' => out.push(b'a' + next(26)),
            b'A'..=b'Z' => out.push(b'A' + next(26)),
            0x80..=0xff if is_char_start(b) => out.push(b'a' + next(26)),
            0x80..=0xff => {}
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn key() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32])
    }

    fn run(s: &Strategy, e: Entity, v: &str) -> String {
        let mut out = Vec::new();
        apply(s, e, v.as_bytes(), &key(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn redact() {
        assert_eq!(
            run(&Strategy::default(), Entity::Email, "a@b.co"),
            "[REDACTED:EMAIL]"
        );
        let fixed = Strategy::Redact {
            replacement: Some("****".into()),
        };
        assert_eq!(run(&fixed, Entity::Card, "4111111111111111"), "****");
    }

    #[test]
    fn partial_keeps_tail_and_separators() {
        let p = Strategy::Partial { keep_last: 4 };
        assert_eq!(
            run(&p, Entity::Card, "4242424242424242"),
            "************4242"
        );
        assert_eq!(
            run(&p, Entity::Card, "4242 4242 4242 4242"),
            "**** **** **** 4242"
        );
        assert_eq!(run(&p, Entity::Ssn, "123-45-6789"), "***-**-6789");
        // never more than half
        assert_eq!(run(&p, Entity::Column, "abc123"), "***123");
        assert_eq!(run(&p, Entity::Column, "ab"), "*b");
        assert_eq!(run(&p, Entity::Column, "José Ñúñez"), "**** *úñez");
    }

    #[test]
    fn keyed_hash_is_stable_and_normalized() {
        let h = Strategy::KeyedHash { length: 16 };
        let a = run(&h, Entity::Card, "4111 1111 1111 1111");
        let b = run(&h, Entity::Card, "4111111111111111");
        let c = run(&h, Entity::Card, "4012888888881881");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.starts_with("tok_") && a.len() == 20, "{a}");
        assert_eq!(
            run(&h, Entity::Email, "A@B.com"),
            run(&h, Entity::Email, "a@b.COM")
        );
        let other = hmac::Key::new(hmac::HMAC_SHA256, &[8u8; 32]);
        let mut out = Vec::new();
        apply(&h, Entity::Card, b"4111111111111111", &other, &mut out);
        assert_ne!(out, b.as_bytes());
    }

    #[test]
    fn format_preserving_keeps_shape() {
        let f = Strategy::FormatPreserving;
        let a = run(&f, Entity::Phone, "+1 (415) 555-0132");
        assert_eq!(a.len(), "+1 (415) 555-0132".len());
        for (x, y) in a.bytes().zip("+1 (415) 555-0132".bytes()) {
            assert_eq!(x.is_ascii_digit(), y.is_ascii_digit());
            if !y.is_ascii_alphanumeric() {
                assert_eq!(x, y);
            }
        }
        assert_ne!(a, "+1 (415) 555-0132");
        assert_eq!(a, run(&f, Entity::Phone, "+1 (415) 555-0132"));
        let e = run(&f, Entity::Email, "John.Doe@Example.com");
        assert!(
            e.as_bytes()[0].is_ascii_uppercase() && e.contains('@') && e.len() == 20,
            "{e}"
        );
        assert_eq!(run(&f, Entity::Column, "Zoë").chars().count(), 3);
        assert!(run(&f, Entity::Column, "Zoë").is_ascii());
    }
}
