//! E-mail addresses, IPv6 addresses and passwords in URL user-info.

use super::{at, is_alnum, Finding, ScanOptions};
use crate::entity::Entity;

/// RFC 5321 limits.
const LOCAL_MAX: usize = 64;
const DOMAIN_MAX: usize = 255;
/// Longest textual IPv6 address we scan (`ffff:…:ffff` is 39; no embedded IPv4 form).
const IPV6_MAX: usize = 39;
/// Longest URL user-info we look at.
const USERINFO_MAX: usize = 256;

fn local_char(b: u8) -> bool {
    is_alnum(b) || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-' | b'\'')
}

/// E-mail anchored on the `@` at `i`: the local part is scanned backwards (never before
/// `floor`, the end of the previous finding), the domain forwards. Practical RFC 5322 subset:
/// `local@label.label…tld`, TLD alphabetic, two letters or more.
pub(super) fn email_at(s: &[u8], i: usize, floor: usize, o: &ScanOptions) -> Option<Finding> {
    if !o.on(Entity::Email) {
        return None;
    }
    let mut start = i;
    while start > floor && i - start < LOCAL_MAX && local_char(s[start - 1]) {
        start -= 1;
    }
    // A local part is not cut out of a longer run (65+ characters or an earlier '@').
    if start > floor && (local_char(s[start - 1]) || s[start - 1] == b'@') {
        return None;
    }
    while start < i && matches!(s[start], b'.' | b'\'' | b'-' | b'+') {
        start += 1;
    }
    if start == i || s[i - 1] == b'.' {
        return None;
    }
    // Domain: labels of [A-Za-z0-9-] joined by single dots.
    let mut p = i + 1;
    let mut label_start = p;
    let mut last_good: Option<usize> = None;
    let mut labels = 0;
    loop {
        while is_alnum(at(s, p)) || at(s, p) == b'-' {
            p += 1;
        }
        let label = &s[label_start..p];
        if label.is_empty()
            || label.len() > 63
            || label[0] == b'-'
            || label[label.len() - 1] == b'-'
        {
            break;
        }
        labels += 1;
        if labels >= 2 && label.len() >= 2 && label.iter().all(u8::is_ascii_alphabetic) {
            last_good = Some(p);
        }
        if p - (i + 1) > DOMAIN_MAX {
            return None;
        }
        if at(s, p) == b'.' && is_alnum(at(s, p + 1)) {
            p += 1;
            label_start = p;
        } else {
            break;
        }
    }
    let end = last_good?;
    if is_alnum(at(s, end)) || at(s, end) == b'-' || at(s, end) == b'@' {
        return None;
    }
    Some(Finding {
        entity: Entity::Email,
        range: start..end,
    })
}

fn hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

/// IPv6 in its basic textual forms (RFC 4291 §2.2 forms 1 and 2): eight groups of one to four
/// hex digits, or fewer around a single `::`.
pub(super) fn ipv6_at(s: &[u8], i: usize, o: &ScanOptions) -> Option<Finding> {
    if !o.on(Entity::IpAddress) {
        return None;
    }
    // Every IPv6 form has a ':' within its first five bytes (at most four hex digits, then
    // ':'); most digit runs (dates, numbers) are rejected here without a walk.
    if !s[i..s.len().min(i + 5)].contains(&b':') {
        return None;
    }
    let mut p = i;
    while p - i <= IPV6_MAX && (hex(at(s, p)) || at(s, p) == b':') {
        p += 1;
    }
    if p - i > IPV6_MAX {
        return None;
    }
    let mut end = p;
    // A sentence colon after the address (`at fe80::1: refused`).
    if end >= 2 && s[end - 1] == b':' && s[end - 2] != b':' {
        end -= 1;
    }
    let c = at(s, end);
    if end <= i || is_alnum(c) || c == b'_' || (c == b'.' && at(s, end + 1).is_ascii_digit()) {
        return None;
    }
    let text = &s[i..end];
    let ok = match find_double_colon(text) {
        None => hex_groups(text) == Some(8),
        Some(k) => {
            let (left, right) = (&text[..k], &text[k + 2..]);
            let l = if left.is_empty() {
                Some(0)
            } else {
                hex_groups(left)
            };
            let r = if right.is_empty() {
                Some(0)
            } else {
                hex_groups(right)
            };
            matches!((l, r), (Some(l), Some(r)) if l + r <= 7 && l + r >= 1)
        }
    };
    ok.then_some(Finding {
        entity: Entity::IpAddress,
        range: i..end,
    })
}

fn find_double_colon(t: &[u8]) -> Option<usize> {
    t.windows(2).position(|w| w == b"::")
}

/// Number of `:`-separated groups of 1–4 hex digits, or `None` if any group is malformed
/// (empty, too long, or another `::`).
fn hex_groups(t: &[u8]) -> Option<usize> {
    let mut n = 0;
    for g in t.split(|&b| b == b':') {
        if g.is_empty() || g.len() > 4 {
            return None;
        }
        n += 1;
    }
    Some(n)
}

/// `scheme://user:password@host`: the password part, as an assigned secret.
pub(super) fn uri_userinfo_at(s: &[u8], i: usize, o: &ScanOptions) -> Option<Finding> {
    if !o.on(Entity::AssignedSecret)
        || at(s, i + 1) != b'/'
        || at(s, i + 2) != b'/'
        || i == 0
        || !is_alnum(s[i - 1])
    {
        return None;
    }
    let start = i + 3;
    let mut p = start;
    let mut colon = None;
    while p - start < USERINFO_MAX {
        match at(s, p) {
            b'@' => break,
            b':' if colon.is_none() => colon = Some(p),
            0 | b'/' | b'?' | b'#' | b' ' | b'\t' | b'\r' | b'\n' | b'"' | b'\'' | b'<' | b'>' => {
                return None
            }
            _ => {}
        }
        p += 1;
    }
    if at(s, p) != b'@' {
        return None;
    }
    let c = colon?;
    (p > c + 1).then_some(Finding {
        entity: Entity::AssignedSecret,
        range: c + 1..p,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::tests::{check, found, none};
    use super::*;

    #[test]
    fn emails() {
        for e in [
            "alice@example.com",
            "bob.smith+tag@mail.example.co.uk",
            "o'reilly@example.ie",
            "x_y-z%1@sub-domain.example.museum",
            "UPPER@EXAMPLE.ORG",
        ] {
            check(&format!("contact <{e}>."), Entity::Email, e);
            check(e, Entity::Email, e);
        }
        check(
            "mailto:carol@example.net",
            Entity::Email,
            "carol@example.net",
        );
    }

    #[test]
    fn email_near_misses() {
        for s in [
            "@handle",
            "user@localhost",
            "user@example.c",
            "user@example.123",
            "user@@example.com",
            "a@b",
            "foo @ bar.com",
            "user@-example.com",
            "git@github",
        ] {
            none(s);
        }
    }

    #[test]
    fn ipv6() {
        for a in [
            "2001:db8::1",
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            "fe80::1",
            "::1",
            "2001:db8:0:0:1::",
        ] {
            check(&format!("from {a} ok"), Entity::IpAddress, a);
        }
        check("peer fe80::1: refused", Entity::IpAddress, "fe80::1");
        for s in [
            "12:30:45",
            "00:1A:2B:3C:4D:5E",
            "dead:beef",
            "a:::b",
            "1::2::3",
            "std::vector",
            "::",
        ] {
            none(s);
        }
    }

    #[test]
    fn url_userinfo_password() {
        check(
            "dsn postgres://app:S3cr3t!x@db.internal:5432/prod",
            Entity::AssignedSecret,
            "S3cr3t!x",
        );
        none("https://example.com/path");
        assert_eq!(
            found("https://user@example.com/"),
            vec![(Entity::Email, "user@example.com".to_string())]
        );
    }
}
