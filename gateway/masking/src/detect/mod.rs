//! The detectors and the single scan that runs them.
//!
//! `scan` walks a value once, left to right. At each position it looks at the byte and the
//! byte before it and, only at plausible token starts, tries the detectors that can start with
//! that byte (digits → IPv4, SSN, card, phone, IPv6; `+`/`(` → phone; `@` → e-mail anchored on
//! the `@`; letters → IBAN, key prefixes, JWT, bearer, `name=value` secrets; `-----BEGIN` →
//! PEM; `://` → URL user-info). A match moves the cursor past it, so findings come out sorted
//! and disjoint.
//!
//! Linear time: every detector is a hand-written scanner that either looks at a bounded window
//! (card: 19 digits, phone: 20 digits, IPv6: 39 bytes, …) or consumes what it matches. The
//! unbounded scans (token bodies, identifier runs, digit runs) run only from the first byte of
//! a run: letter-led detectors start only after a byte that is not `[A-Za-z0-9_.-]`, and
//! digit-led ones only after a byte that cannot continue a number, so no run is rescanned from
//! each of its positions.
//!
//! Before the scan, `prefilter` does one table-driven pass over the bytes: a value with no
//! digit, no `@ : = - _ + . / '` and no run of 8 or more letters cannot contain anything any
//! detector reports, and is skipped. (The vaulted-secret automaton is separate and always runs.)

mod iban;
mod net;
mod numeric;
mod secrets;

use std::ops::Range;

use crate::entity::Entity;

/// One detected span of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was found.
    pub entity: Entity,
    /// Byte range in the value.
    pub range: Range<usize>,
}

/// Which detectors run, and column facts that change detection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanOptions {
    pub(crate) enabled: [bool; Entity::COUNT],
    /// Nine plain digits count as an SSN (column listed in `ssn_plain_columns`).
    pub(crate) plain_ssn: bool,
}

impl ScanOptions {
    fn on(&self, e: Entity) -> bool {
        self.enabled[e as usize]
    }
}

// Byte classes for the prefilter.
const TRIGGER: u8 = 1;
const ALPHA: u8 = 2;

const fn class_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        t[b] = if c.is_ascii_digit() {
            TRIGGER
        } else if c.is_ascii_alphabetic() {
            ALPHA
        } else {
            match c {
                b'@' | b':' | b'=' | b'-' | b'_' | b'+' | b'.' | b'/' | b'\'' => TRIGGER,
                _ => 0,
            }
        };
        b += 1;
    }
    t
}

static CLASS: [u8; 256] = class_table();

/// Shortest letter run that could be a credential without any trigger byte: the base64 of a
/// `Basic` credential is at least 8 characters and may be letters only.
const LONG_ALPHA_RUN: u32 = 8;

/// `true` when some detector could match in `s`.
pub(crate) fn prefilter(s: &[u8]) -> bool {
    let mut run = 0u32;
    for &b in s {
        let c = CLASS[b as usize];
        if c & TRIGGER != 0 {
            return true;
        }
        if c & ALPHA != 0 {
            run += 1;
            if run >= LONG_ALPHA_RUN {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

pub(crate) fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// Byte at `i`, or 0 past the end (0 is in no class any detector accepts).
#[inline]
pub(crate) fn at(s: &[u8], i: usize) -> u8 {
    s.get(i).copied().unwrap_or(0)
}

/// Digit-led tokens start after a byte that cannot continue a number or an identifier:
/// not a letter or digit, and not `.`, `-`, `_`, `/`, `\` (decimals, UUID and date parts,
/// order numbers like `ORD-…`, paths).
fn digit_start(prev: Option<u8>) -> bool {
    match prev {
        None => true,
        Some(p) => !is_alnum(p) && !matches!(p, b'.' | b'-' | b'_' | b'/' | b'\\' | b','),
    }
}

/// Scan `s` and append findings (sorted, disjoint) to `out`.
pub(crate) fn scan(s: &[u8], opts: &ScanOptions, out: &mut Vec<Finding>) {
    let n = s.len();
    let mut i = 0usize;
    // End of the last finding: e-mail local parts are not searched before it.
    let mut last_end = 0usize;
    // Identifier runs (`db_password`) are examined once, at their first byte.
    let mut ident_checked_until = 0usize;
    while i < n {
        let b = s[i];
        let prev = if i > 0 { Some(s[i - 1]) } else { None };
        let found: Option<Finding> = match b {
            b'0'..=b'9' if digit_start(prev) => numeric::at_digit(s, i, opts).or_else(|| {
                if prev.is_none_or(|p| p != b':') {
                    net::ipv6_at(s, i, opts)
                } else {
                    None
                }
            }),
            b'+' if prev.is_none_or(|p| !is_alnum(p)) => numeric::phone_plus(s, i, opts),
            b'(' if prev.is_none_or(|p| !is_alnum(p)) => numeric::phone_paren(s, i, opts),
            b'@' => net::email_at(s, i, last_end, opts),
            b'-' => secrets::pem_at(s, i, opts),
            b':' => net::uri_userinfo_at(s, i, opts).or_else(|| {
                if prev.is_none_or(|p| !is_alnum(p) && p != b':' && p != b'.') {
                    net::ipv6_at(s, i, opts)
                } else {
                    None
                }
            }),
            b'A'..=b'Z' | b'a'..=b'z' if prev.is_none_or(|p| !secrets::is_ident(p)) => {
                let ident_start = i >= ident_checked_until;
                let f = secrets::at_letter(s, i, opts)
                    .or_else(|| iban::iban_at(s, i, opts))
                    .or_else(|| net::ipv6_at(s, i, opts));
                match f {
                    Some(f) => Some(f),
                    None if ident_start => {
                        let (f, run_end) = secrets::assigned_at(s, i, opts);
                        ident_checked_until = run_end;
                        f
                    }
                    None => None,
                }
            }
            _ => None,
        };
        match found {
            Some(f) if f.range.end > i && f.range.start >= last_end => {
                i = f.range.end;
                last_end = f.range.end;
                out.push(f);
            }
            _ => i += 1,
        }
    }
}

/// Classify a whole assigned value by the prefix detectors (an `api_key=AKIA…` is an AWS key).
pub(crate) fn classify_token(s: &[u8], range: Range<usize>, opts: &ScanOptions) -> Option<Entity> {
    let v = &s[..range.end];
    let f = secrets::at_letter(v, range.start, opts)?;
    (f.range == range).then_some(f.entity)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn all_on(plain_ssn: bool) -> ScanOptions {
        ScanOptions {
            enabled: [true; Entity::COUNT],
            plain_ssn,
        }
    }

    /// `(entity, matched text)` pairs for `text`.
    pub(crate) fn found(text: &str) -> Vec<(Entity, String)> {
        found_opts(text, &all_on(false))
    }

    pub(crate) fn found_opts(text: &str, opts: &ScanOptions) -> Vec<(Entity, String)> {
        let mut out = Vec::new();
        if prefilter(text.as_bytes()) {
            scan(text.as_bytes(), opts, &mut out);
        }
        out.into_iter()
            .map(|f| (f.entity, text[f.range].to_string()))
            .collect()
    }

    /// Assert `text` yields exactly one finding of `entity` covering `expect`.
    pub(crate) fn check(text: &str, entity: Entity, expect: &str) {
        assert_eq!(
            found(text),
            vec![(entity, expect.to_string())],
            "in {text:?}"
        );
    }

    pub(crate) fn none(text: &str) {
        assert_eq!(found(text), vec![], "in {text:?}");
    }

    #[test]
    fn prefilter_skips_plain_words_only() {
        assert!(!prefilter(b"Alice Smith"));
        assert!(!prefilter(b"active"));
        assert!(!prefilter(b""));
        assert!(prefilter(b"order 7"));
        assert!(prefilter(b"a@b"));
        assert!(prefilter(b"Basic dXNlcjpwYXNz"));
        assert!(prefilter(b"PASSWORD 'abc'"));
        assert!(!prefilter(b"Bearer of news"));
    }

    #[test]
    fn several_entities_in_one_value_come_out_sorted() {
        let got = found(
            "mail bob@example.org, card 4111 1111 1111 1111, ip 10.0.0.1, key AKIAIOSFODNN7EXAMPLE.",
        );
        assert_eq!(
            got,
            vec![
                (Entity::Email, "bob@example.org".into()),
                (Entity::Card, "4111 1111 1111 1111".into()),
                (Entity::IpAddress, "10.0.0.1".into()),
                (Entity::AwsKey, "AKIAIOSFODNN7EXAMPLE".into()),
            ]
        );
    }

    #[test]
    fn disabled_detectors_do_not_report() {
        let mut o = all_on(false);
        o.enabled[Entity::IpAddress as usize] = false;
        assert_eq!(found_opts("host 10.0.0.1", &o), vec![]);
    }
}
