//! IBAN: country code, check digits, BBAN of the country's length, ISO 13616 mod-97 = 1;
//! electronic form or print form (groups of four separated by single spaces).

use super::{at, is_alnum, Finding, ScanOptions};
use crate::entity::Entity;

/// Longest IBAN (ISO 13616).
const IBAN_MAX: usize = 34;

/// Total IBAN length per country (SWIFT IBAN registry).
fn country_len(cc: [u8; 2]) -> Option<usize> {
    let n = match &cc {
        b"AD" => 24,
        b"AE" => 23,
        b"AL" => 28,
        b"AT" => 20,
        b"AZ" => 28,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BI" => 27,
        b"BR" => 29,
        b"BY" => 28,
        b"CH" => 21,
        b"CR" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DJ" => 27,
        b"DK" => 18,
        b"DO" => 28,
        b"EE" => 20,
        b"EG" => 29,
        b"ES" => 24,
        b"FI" => 18,
        b"FK" => 18,
        b"FO" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GE" => 22,
        b"GI" => 23,
        b"GL" => 18,
        b"GR" => 27,
        b"GT" => 28,
        b"HN" => 28,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IQ" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"JO" => 30,
        b"KW" => 30,
        b"KZ" => 20,
        b"LB" => 28,
        b"LC" => 32,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"LY" => 25,
        b"MC" => 27,
        b"MD" => 24,
        b"ME" => 22,
        b"MK" => 19,
        b"MN" => 20,
        b"MR" => 27,
        b"MT" => 31,
        b"MU" => 30,
        b"NI" => 28,
        b"NL" => 18,
        b"NO" => 15,
        b"OM" => 23,
        b"PK" => 24,
        b"PL" => 28,
        b"PS" => 29,
        b"PT" => 25,
        b"QA" => 29,
        b"RO" => 24,
        b"RS" => 22,
        b"RU" => 33,
        b"SA" => 24,
        b"SC" => 31,
        b"SD" => 18,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"SO" => 23,
        b"ST" => 25,
        b"SV" => 28,
        b"TL" => 23,
        b"TN" => 24,
        b"TR" => 26,
        b"UA" => 29,
        b"VA" => 22,
        b"VG" => 24,
        b"XK" => 20,
        b"YE" => 30,
        _ => return None,
    };
    Some(n)
}

/// ISO 7064 mod 97-10 over the rearranged IBAN (first four characters moved to the end,
/// letters as 10..35).
pub(crate) fn mod97(iban: &[u8]) -> u32 {
    let (head, tail) = iban.split_at(4.min(iban.len()));
    let mut r = 0u32;
    for &c in tail.iter().chain(head.iter()) {
        if c.is_ascii_digit() {
            r = (r * 10 + u32::from(c - b'0')) % 97;
        } else {
            let v = u32::from(c.to_ascii_uppercase() - b'A') + 10;
            r = (r * 100 + v) % 97;
        }
    }
    r
}

pub(super) fn iban_at(s: &[u8], i: usize, o: &ScanOptions) -> Option<Finding> {
    if !o.on(Entity::Iban) {
        return None;
    }
    let cc = [at(s, i), at(s, i + 1)];
    if !cc[0].is_ascii_uppercase() || !cc[1].is_ascii_uppercase() {
        return None;
    }
    if !at(s, i + 2).is_ascii_digit() || !at(s, i + 3).is_ascii_digit() {
        return None;
    }
    let want = country_len(cc)?;
    let mut buf = [0u8; IBAN_MAX];
    let mut n = 0usize;
    let mut p = i;
    // Print form: a single space after every group of four, or none anywhere.
    let mut spaced: Option<bool> = None;
    loop {
        let c = at(s, p);
        if !c.is_ascii_digit() && !c.is_ascii_uppercase() {
            return None;
        }
        buf[n] = c;
        n += 1;
        p += 1;
        if n == want {
            break;
        }
        if n % 4 == 0 {
            let sp = at(s, p) == b' ';
            match spaced {
                None => spaced = Some(sp),
                Some(x) if x != sp => return None,
                Some(_) => {}
            }
            if sp {
                p += 1;
            }
        }
    }
    if is_alnum(at(s, p)) || mod97(&buf[..n]) != 1 {
        return None;
    }
    Some(Finding {
        entity: Entity::Iban,
        range: i..p,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::tests::{check, found, none};
    use super::*;

    #[test]
    fn ibans() {
        for s in [
            "DE89370400440532013000",
            "DE89 3704 0044 0532 0130 00",
            "GB29NWBK60161331926819",
            "GB29 NWBK 6016 1331 9268 19",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
            "BE68539007547034",
            "CH9300762011623852957",
            "NO9386011117947",
            "MT84MALT011000012345MTLCAST001S",
        ] {
            check(&format!("pay to {s}, thanks"), Entity::Iban, s);
        }
    }

    #[test]
    fn iban_near_misses() {
        for s in [
            "DE89370400440532013001",       // check digits
            "DE8937040044053201300",        // short
            "DE893704004405320130001",      // long
            "XX89370400440532013000",       // country
            "de89370400440532013000",       // lower case
            "DE89 3704 0044 0532 013000",   // broken grouping
            "DE89  3704 0044 0532 0130 00", // double space
        ] {
            // (the digits of the last two may still look like a national phone number)
            assert!(found(s).iter().all(|(e, _)| *e != Entity::Iban), "{s}");
        }
        none("DE89370400440532013001");
    }
}
