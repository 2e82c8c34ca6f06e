//! Digit-led detectors: IPv4, SSN, payment cards, telephone numbers.

use super::{at, is_alnum, Finding, ScanOptions};
use crate::entity::Entity;

/// Most digits in a card number (ISO/IEC 7812).
const CARD_MAX_DIGITS: usize = 19;
const CARD_MIN_DIGITS: usize = 12;
/// Most digits in an international number including the country code (ITU-T E.164).
const E164_MAX_DIGITS: usize = 15;

pub(super) fn at_digit(s: &[u8], i: usize, o: &ScanOptions) -> Option<Finding> {
    let hit = |e: Entity, end: usize| {
        Some(Finding {
            entity: e,
            range: i..end,
        })
    };
    if o.on(Entity::IpAddress) {
        if let Some(end) = ipv4(s, i) {
            return hit(Entity::IpAddress, end);
        }
    }
    if o.on(Entity::Ssn) {
        if let Some(end) = ssn_dashed(s, i) {
            return hit(Entity::Ssn, end);
        }
    }
    // `… 8955 0419 2479 545`: a group inside a longer run of digit groups starts no card or
    // national phone number.
    let glued = i >= 2 && matches!(s[i - 1], b' ' | b'-') && s[i - 2].is_ascii_digit();
    if glued {
        return None;
    }
    if o.on(Entity::Card) {
        if let Some(end) = card(s, i) {
            return hit(Entity::Card, end);
        }
    }
    if o.on(Entity::Phone) {
        if let Some(end) = nanp(s, i).or_else(|| national_or_00(s, i)) {
            return hit(Entity::Phone, end);
        }
    }
    if o.plain_ssn && o.on(Entity::Ssn) {
        let end = digits_end(s, i);
        if end - i == 9
            && !is_alnum(at(s, end))
            && ssn_valid(&s[i..i + 3], &s[i + 3..i + 5], &s[i + 5..end])
        {
            return hit(Entity::Ssn, end);
        }
    }
    None
}

fn digits_end(s: &[u8], mut i: usize) -> usize {
    while at(s, i).is_ascii_digit() {
        i += 1;
    }
    i
}

fn num(d: &[u8]) -> u32 {
    d.iter().fold(0u32, |a, &b| a * 10 + u32::from(b - b'0'))
}

/// A token ends here: not followed by a letter/digit, nor by `.`/`-` + digit (a longer number).
fn clean_end(s: &[u8], end: usize) -> bool {
    let c = at(s, end);
    if is_alnum(c) {
        return false;
    }
    !(matches!(c, b'.' | b'-' | b'/' | b',') && at(s, end + 1).is_ascii_digit())
}

// ---------------------------------------------------------------- IPv4

fn ipv4(s: &[u8], i: usize) -> Option<usize> {
    let mut p = i;
    for k in 0..4 {
        if k > 0 {
            if at(s, p) != b'.' {
                return None;
            }
            p += 1;
        }
        let e = digits_end(s, p);
        let len = e - p;
        if len == 0 || len > 3 || (len > 1 && s[p] == b'0') || num(&s[p..e]) > 255 {
            return None;
        }
        p = e;
    }
    // `/24` (CIDR) may follow; a fifth `.n` or more letters/digits may not.
    let c = at(s, p);
    (!(is_alnum(c) || (c == b'.' && at(s, p + 1).is_ascii_digit()))).then_some(p)
}

// ---------------------------------------------------------------- SSN

fn ssn_valid(area: &[u8], group: &[u8], serial: &[u8]) -> bool {
    let a = num(area);
    a != 0 && a != 666 && a < 900 && num(group) != 0 && num(serial) != 0
}

fn ssn_dashed(s: &[u8], i: usize) -> Option<usize> {
    let a = digits_end(s, i);
    if a - i != 3 || at(s, a) != b'-' {
        return None;
    }
    let g = digits_end(s, a + 1);
    if g - (a + 1) != 2 || at(s, g) != b'-' {
        return None;
    }
    let e = digits_end(s, g + 1);
    if e - (g + 1) != 4 || !clean_end(s, e) {
        return None;
    }
    ssn_valid(&s[i..a], &s[a + 1..g], &s[g + 1..e]).then_some(e)
}

// ---------------------------------------------------------------- cards

/// The run of digit groups from `i` joined by one consistent single separator (space or dash)
/// must, as a whole, be a valid card number: a card is never cut out of a longer run.
fn card(s: &[u8], i: usize) -> Option<usize> {
    let mut digits = [0u8; CARD_MAX_DIGITS];
    let mut nd = 0usize;
    let mut sep: Option<u8> = None;
    let mut p = i;
    loop {
        let e = digits_end(s, p);
        let glen = e - p;
        // Grouped numbers use groups of at least 3 digits (4-4-4-4, 4-6-5, 4-6-4, 6-13).
        if nd + glen > CARD_MAX_DIGITS || (sep.is_some() && glen < 3) {
            return None;
        }
        digits[nd..nd + glen].copy_from_slice(&s[p..e]);
        nd += glen;
        let c = at(s, e);
        if matches!(c, b' ' | b'-') && at(s, e + 1).is_ascii_digit() {
            if sep.is_some_and(|x| x != c) || glen < 3 {
                return None;
            }
            sep = Some(c);
            p = e + 1;
            continue;
        }
        return (nd >= CARD_MIN_DIGITS && clean_card_end(s, e) && card_valid(&digits[..nd]))
            .then_some(e);
    }
}

fn clean_card_end(s: &[u8], end: usize) -> bool {
    let c = at(s, end);
    !(is_alnum(c) || (c == b'.' && at(s, end + 1).is_ascii_digit()))
}

/// Luhn check over ASCII digits.
pub(crate) fn luhn(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (k, &b) in d.iter().rev().enumerate() {
        let mut v = u32::from(b - b'0');
        if k % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

/// IIN range and length of current networks, then Luhn.
pub(crate) fn card_valid(d: &[u8]) -> bool {
    let len = d.len();
    if !(CARD_MIN_DIGITS..=CARD_MAX_DIGITS).contains(&len) {
        return false;
    }
    let p = |k: usize| num(&d[..k]);
    let (p1, p2, p3, p4) = (p(1), p(2), p(3), p(4));
    let ok = match p1 {
        // Visa
        4 => matches!(len, 13 | 16 | 19),
        // Mastercard 2221–2720; Mir 2200–2204
        2 => {
            ((2221..=2720).contains(&p4) && len == 16) || ((2200..=2204).contains(&p4) && len >= 16)
        }
        // Amex 34/37; JCB 3528–3589; Diners 36, 300–305, 38–39
        3 => {
            ((p2 == 34 || p2 == 37) && len == 15)
                || ((3528..=3589).contains(&p4) && len >= 16)
                || (p2 == 36 && len >= 14)
                || (((300..=305).contains(&p3) || p2 == 38 || p2 == 39) && (len == 14 || len >= 16))
        }
        // Mastercard 51–55; Maestro 50, 56–59 (12–19)
        5 => ((51..=55).contains(&p2) && len == 16) || p2 == 50 || (56..=59).contains(&p2),
        // Discover (6011, 644–649, 65, 622126–622925: 16–19), UnionPay (62: 16–19), Maestro and
        // RuPay (60–69: 12–19) together take every 6-prefixed number of 12–19 digits.
        6 => true,
        // UATP 1 (15) is not a bank card; 7, 8, 9, 0 are not issued for payment cards we mask.
        _ => false,
    };
    ok && luhn(d)
}

// ---------------------------------------------------------------- phones

/// NANP: `AAA-EEE-NNNN`, `AAA.EEE.NNNN`, `AAA EEE NNNN`, optionally after `1-`/`1 `/`1.`,
/// area and exchange starting 2–9.
fn nanp(s: &[u8], i: usize) -> Option<usize> {
    let mut p = i;
    if at(s, p) == b'1' && matches!(at(s, p + 1), b'-' | b' ' | b'.') {
        if at(s, p + 2) == b'(' {
            return nanp_paren(s, p + 2);
        }
        p += 2;
    }
    let a = digits_end(s, p);
    if a - p != 3 {
        return None;
    }
    let sep = at(s, a);
    if !matches!(sep, b'-' | b'.' | b' ') {
        return None;
    }
    let e = digits_end(s, a + 1);
    if e - (a + 1) != 3 || at(s, e) != sep {
        return None;
    }
    let n = digits_end(s, e + 1);
    // `415 555 0132 7` is part of a longer digit sequence, not a phone number.
    let continues = at(s, n) == b' ' && at(s, n + 1).is_ascii_digit();
    if n - (e + 1) != 4 || !clean_end(s, n) || continues {
        return None;
    }
    nanp_ok(s[p], s[a + 1]).then_some(n)
}

fn nanp_ok(area0: u8, exch0: u8) -> bool {
    (b'2'..=b'9').contains(&area0) && (b'2'..=b'9').contains(&exch0)
}

/// `(AAA) EEE-NNNN`, `(AAA)EEE-NNNN`, `(AAA) EEE NNNN`, `(AAA) EEE.NNNN`.
fn nanp_paren(s: &[u8], i: usize) -> Option<usize> {
    let a = digits_end(s, i + 1);
    if a - (i + 1) != 3 || at(s, a) != b')' {
        return None;
    }
    let mut p = a + 1;
    if at(s, p) == b' ' {
        p += 1;
    }
    let e = digits_end(s, p);
    if e - p != 3 || !matches!(at(s, e), b'-' | b' ' | b'.') {
        return None;
    }
    let n = digits_end(s, e + 1);
    if n - (e + 1) != 4 || !clean_end(s, n) {
        return None;
    }
    nanp_ok(s[i + 1], s[p]).then_some(n)
}

pub(super) fn phone_paren(s: &[u8], i: usize, o: &ScanOptions) -> Option<Finding> {
    if !o.on(Entity::Phone) {
        return None;
    }
    nanp_paren(s, i).map(|end| Finding {
        entity: Entity::Phone,
        range: i..end,
    })
}

/// Digits of a formatted number from `p`: groups joined by one space, dash or dot, or a
/// parenthesised group (`(0)`, `(20)`). Returns (end, digits, count, trunk-zero-in-parens).
fn phone_digits(s: &[u8], mut p: usize) -> (usize, [u8; 20], usize, bool) {
    let mut d = [0u8; 20];
    let mut n = 0usize;
    let mut paren_zero = false;
    let mut end = p;
    loop {
        let mut q = p;
        let in_paren = at(s, q) == b'(';
        if in_paren {
            q += 1;
        }
        let e = digits_end(s, q);
        if e == q || n + (e - q) > d.len() {
            break;
        }
        if in_paren {
            if at(s, e) != b')' {
                break;
            }
            if &s[q..e] == b"0" {
                paren_zero = true;
            }
        }
        d[n..n + (e - q)].copy_from_slice(&s[q..e]);
        n += e - q;
        end = if in_paren { e + 1 } else { e };
        let c = at(s, end);
        let next = at(s, end + 1);
        if matches!(c, b' ' | b'-' | b'.') && (next.is_ascii_digit() || next == b'(') {
            p = end + 1;
        } else if (c.is_ascii_digit() && in_paren) || c == b'(' {
            // `(0)20 …`, `1(415)…`
            p = end;
        } else {
            break;
        }
    }
    (end, d, n, paren_zero)
}

/// `+CC …`: country code, then the national significant number whose length must fit the
/// country's numbering plan.
pub(super) fn phone_plus(s: &[u8], i: usize, o: &ScanOptions) -> Option<Finding> {
    if !o.on(Entity::Phone) || !at(s, i + 1).is_ascii_digit() {
        return None;
    }
    intl(s, i + 1).map(|end| Finding {
        entity: Entity::Phone,
        range: i..end,
    })
}

fn intl(s: &[u8], p: usize) -> Option<usize> {
    let (end, d, n, paren_zero) = phone_digits(s, p);
    if n > E164_MAX_DIGITS + usize::from(paren_zero) || !clean_end(s, end) {
        return None;
    }
    let d = &d[..n];
    let (cc_len, lens) = country(d)?;
    let nsn = n - cc_len - usize::from(paren_zero);
    if !lens.contains(&nsn) {
        return None;
    }
    // The national significant number never starts with the trunk prefix 0 (Italy excepted,
    // where the 0 is part of the number); `+44 (0)20 …` writes it in parentheses.
    if d[cc_len + usize::from(paren_zero)] == b'0' && &d[..cc_len] != b"39" {
        return None;
    }
    if cc_len == 1 && d[0] == b'1' {
        // NANP after +1: area and exchange start 2–9.
        let nsn_digits = &d[1..];
        if !nanp_ok(nsn_digits[0], nsn_digits[3]) {
            return None;
        }
    }
    Some(end)
}

/// National formats with a trunk `0` (`020 7946 0958`, `07700 900123`, `01 23 45 67 89`) and
/// `00CC …` international dialling.
fn national_or_00(s: &[u8], i: usize) -> Option<usize> {
    if at(s, i) != b'0' {
        return None;
    }
    if at(s, i + 1) == b'0' {
        return if at(s, i + 2) != b'0' && at(s, i + 2).is_ascii_digit() {
            intl(s, i + 2)
        } else {
            None
        };
    }
    let first = digits_end(s, i);
    let flen = first - i;
    if !(2..=5).contains(&flen) {
        return None;
    }
    let sep = at(s, first);
    if !matches!(sep, b' ' | b'-') {
        return None;
    }
    let mut n = flen;
    let mut p = first;
    let mut groups = 1;
    while at(s, p) == sep && at(s, p + 1).is_ascii_digit() {
        let e = digits_end(s, p + 1);
        if e - (p + 1) < 2 {
            return None;
        }
        n += e - (p + 1);
        groups += 1;
        p = e;
        if n > 11 {
            return None;
        }
    }
    (groups >= 2 && (10..=11).contains(&n) && clean_end(s, p)).then_some(p)
}

/// Country code at the start of `d` and the allowed national significant number lengths.
/// Country codes are prefix-free (ITU-T E.164), so the first hit is the only one.
fn country(d: &[u8]) -> Option<(usize, std::ops::RangeInclusive<usize>)> {
    for cc_len in 1..=3 {
        if d.len() <= cc_len {
            return None;
        }
        let cc = num(&d[..cc_len]);
        let lens = match (cc_len, cc) {
            (1, 1) => 10..=10,
            (1, 7) => 10..=10,
            (2, 20) => 9..=10,
            (2, 27) => 9..=9,
            (2, 30) => 10..=10,
            (2, 31) => 9..=9,
            (2, 32) => 8..=9,
            (2, 33) => 9..=9,
            (2, 34) => 9..=9,
            (2, 36) => 8..=9,
            (2, 39) => 6..=11,
            (2, 40) => 9..=9,
            (2, 41) => 9..=9,
            (2, 43) => 4..=13,
            (2, 44) => 9..=10,
            (2, 45) => 8..=8,
            (2, 46) => 7..=13,
            (2, 47) => 8..=8,
            (2, 48) => 9..=9,
            (2, 49) => 6..=13,
            (2, 51) => 8..=9,
            (2, 52) => 10..=10,
            (2, 53) => 8..=8,
            (2, 54) => 10..=11,
            (2, 55) => 10..=11,
            (2, 56) => 9..=9,
            (2, 57) => 10..=10,
            (2, 58) => 10..=10,
            (2, 60) => 8..=10,
            (2, 61) => 9..=9,
            (2, 62) => 9..=12,
            (2, 63) => 10..=10,
            (2, 64) => 8..=10,
            (2, 65) => 8..=8,
            (2, 66) => 8..=9,
            (2, 81) => 9..=10,
            (2, 82) => 8..=10,
            (2, 84) => 9..=10,
            (2, 86) => 11..=11,
            (2, 90) => 10..=10,
            (2, 91) => 10..=10,
            (2, 92) => 10..=10,
            (2, 93) => 9..=9,
            (2, 94) => 9..=9,
            (2, 95) => 8..=10,
            (2, 98) => 10..=10,
            (3, 212) => 9..=9,
            (3, 213) => 9..=9,
            (3, 216) => 8..=8,
            (3, 234) => 8..=10,
            (3, 254) => 9..=9,
            (3, 255) => 9..=9,
            (3, 256) => 9..=9,
            (3, 351) => 9..=9,
            (3, 352) => 6..=11,
            (3, 353) => 7..=9,
            (3, 354) => 7..=9,
            (3, 356) => 8..=8,
            (3, 357) => 8..=8,
            (3, 358) => 5..=12,
            (3, 359) => 8..=9,
            (3, 370) => 8..=8,
            (3, 371) => 8..=8,
            (3, 372) => 7..=8,
            (3, 380) => 9..=9,
            (3, 381) => 8..=9,
            (3, 385) => 8..=9,
            (3, 386) => 8..=8,
            (3, 420) => 9..=9,
            (3, 421) => 9..=9,
            (3, 852) => 8..=8,
            (3, 853) => 8..=8,
            (3, 855) => 8..=9,
            (3, 880) => 10..=10,
            (3, 886) => 8..=9,
            (3, 960) => 7..=7,
            (3, 961) => 7..=8,
            (3, 962) => 8..=9,
            (3, 963) => 9..=9,
            (3, 964) => 10..=10,
            (3, 965) => 8..=8,
            (3, 966) => 9..=9,
            (3, 968) => 8..=8,
            (3, 971) => 8..=9,
            (3, 972) => 8..=9,
            (3, 973) => 8..=8,
            (3, 974) => 8..=8,
            (3, 977) => 8..=10,
            _ => continue,
        };
        return Some((cc_len, lens));
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::tests::{all_on, check, found_opts, none};
    use super::*;

    #[test]
    fn cards_by_network() {
        for c in [
            "4111111111111111",
            "4012888888881881",
            "4222222222222",
            "5555555555554444",
            "5105105105105100",
            "2223003122003222",
            "378282246310005",
            "371449635398431",
            "6011111111111117",
            "6011000990139424",
            "3530111333300000",
            "3566002020360505",
            "30569309025904",
            "38520000023237",
            "6200000000000005",
            "6759649826438453",
            "6799990100000000019",
        ] {
            check(&format!("paid with {c} yesterday"), Entity::Card, c);
        }
    }

    #[test]
    fn cards_with_separators() {
        check(
            "card: 4111 1111 1111 1111.",
            Entity::Card,
            "4111 1111 1111 1111",
        );
        check(
            "card 4111-1111-1111-1111",
            Entity::Card,
            "4111-1111-1111-1111",
        );
        check("amex 3782 822463 10005!", Entity::Card, "3782 822463 10005");
    }

    #[test]
    fn card_near_misses() {
        none("4111111111111112"); // Luhn
        none("41111111111111110"); // Visa 17 digits
        none("9111111111111111"); // no network
        none("04111111111111111"); // longer digit run
        none("x4111111111111111");
        none("4111 1111 1111 1111 1111 1111");
        none("4111-1111 1111-1111"); // mixed separators
        none("4111  1111  1111  1111"); // double spaces
        none("1.4111111111111111");
        none("550e8400-e29b-41d4-a716-446655440000");
    }

    #[test]
    fn luhn_examples() {
        assert!(luhn(b"79927398713"));
        assert!(!luhn(b"79927398710"));
    }

    #[test]
    fn ssn() {
        check("SSN 123-45-6789.", Entity::Ssn, "123-45-6789");
        check("ssn:078-05-1120", Entity::Ssn, "078-05-1120");
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123-45-67890",
            "1123-45-6789",
        ] {
            none(bad);
        }
        none("123456789");
        let o = all_on(true);
        assert_eq!(
            found_opts("123456789", &o),
            vec![(Entity::Ssn, "123456789".into())]
        );
        assert_eq!(found_opts("666456789", &o), vec![]);
        assert_eq!(found_opts("1234567890", &o), vec![]);
    }

    #[test]
    fn phones() {
        for p in [
            "(415) 555-0132",
            "(415)555-0132",
            "415-555-0132",
            "415.555.0132",
            "415 555 0132",
            "1-800-555-0199",
            "+1 415 555 0132",
            "+1-415-555-0132",
            "+14155550132",
            "+44 20 7946 0958",
            "+44 (0)20 7946 0958",
            "+44 (0)2 7946 09581",
            "+447700900123",
            "+49 30 901820",
            "+49 151 23456789",
            "+33 1 23 45 67 89",
            "+81 3-1234-5678",
            "+91 98765 43210",
            "+61 2 9876 5432",
            "+86 138 0013 8000",
            "+353 1 234 5678",
            "020 7946 0958",
            "07700 900123",
            "01 23 45 67 89",
            "0044 20 7946 0958",
        ] {
            check(&format!("call {p} today"), Entity::Phone, p);
        }
    }

    #[test]
    fn phone_near_misses() {
        for s in [
            "2024-01-05",
            "2024-01-05 12:30:45",
            "price $1,299.00",
            "+12.50",
            "+3 days",
            "+1 555 0132",
            "+44 20 7946",
            "+999 1234 5678",
            "order 1234567890",
            "(123) 555-0132",
            "415-155-0132",
            "id 4155550132",
            "v1.2.3",
            "12:30:45.123",
            "1700000000",
            "+1 415 555 01321",
        ] {
            none(s);
        }
    }

    #[test]
    fn ipv4() {
        check("from 192.168.1.20:5432", Entity::IpAddress, "192.168.1.20");
        check("10.0.0.1", Entity::IpAddress, "10.0.0.1");
        check("255.255.255.255/32", Entity::IpAddress, "255.255.255.255");
        for s in [
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "v1.2.3.4",
            "01.2.3.4",
            "1.2.3.4a",
        ] {
            none(s);
        }
    }
}
