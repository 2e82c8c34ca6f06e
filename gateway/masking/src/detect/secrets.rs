//! Keys, tokens and assigned secrets: AWS access key ids, PEM private keys, JWTs, bearer and
//! basic credentials, GitHub / Stripe / Slack / Google / OpenAI-style keys, and the value part of
//! `password=…`, `"api_key": "…"`, `PASSWORD '…'`.

use super::{at, classify_token, is_alnum, Finding, ScanOptions};
use crate::entity::Entity;

/// Upper bound on token bodies, assigned values and PEM labels scanned from one start.
const TOKEN_MAX: usize = 4096;
/// Identifier runs longer than this are not treated as secret names.
const NAME_MAX: usize = 128;
/// Longest JWT header decoded.
const JWT_HEADER_MAX: usize = 2048;

pub(super) fn is_ident(b: u8) -> bool {
    is_alnum(b) || matches!(b, b'_' | b'.' | b'-')
}

fn b64url(b: u8) -> bool {
    is_alnum(b) || b == b'-' || b == b'_'
}

fn run(s: &[u8], mut p: usize, class: impl Fn(u8) -> bool) -> usize {
    let start = p;
    while p - start < TOKEN_MAX && class(at(s, p)) {
        p += 1;
    }
    p
}

fn starts_with_ci(s: &[u8], i: usize, word: &[u8]) -> bool {
    s.len() >= i + word.len() && s[i..i + word.len()].eq_ignore_ascii_case(word)
}

const AWS_PREFIXES: [&[u8; 4]; 12] = [
    b"AKIA", b"ASIA", b"ABIA", b"ACCA", b"AGPA", b"AIDA", b"AIPA", b"ANPA", b"ANVA", b"APKA",
    b"AROA", b"ASCA",
];

/// Prefixed tokens, JWTs and bearer/basic credentials starting at `i` (a word start).
pub(super) fn at_letter(s: &[u8], i: usize, o: &ScanOptions) -> Option<Finding> {
    let hit = |e: Entity, r: std::ops::Range<usize>| {
        o.on(e).then_some(Finding {
            entity: e,
            range: r,
        })
    };
    let rest = &s[i..];
    match s[i] {
        b'A' => {
            if rest.len() >= 20 && AWS_PREFIXES.iter().any(|p| rest.starts_with(*p)) {
                let e = run(s, i + 4, |b| b.is_ascii_uppercase() || b.is_ascii_digit());
                if e - i == 20 && !is_alnum(at(s, e)) {
                    return hit(Entity::AwsKey, i..e);
                }
            }
            if rest.starts_with(b"AIza") {
                let e = run(s, i + 4, b64url);
                if e - i == 39 {
                    return hit(Entity::GoogleApiKey, i..e);
                }
            }
            None
        }
        b'g' => {
            if rest.starts_with(b"github_pat_") {
                let e = run(s, i + 11, |b| is_alnum(b) || b == b'_');
                if e - (i + 11) >= 22 {
                    return hit(Entity::GithubToken, i..e);
                }
            } else if rest.len() > 4
                && rest.starts_with(b"gh")
                && matches!(rest[2], b'p' | b'o' | b'u' | b's' | b'r')
                && rest[3] == b'_'
            {
                let e = run(s, i + 4, is_alnum);
                if e - (i + 4) >= 30 && at(s, e) != b'_' {
                    return hit(Entity::GithubToken, i..e);
                }
            }
            None
        }
        b's' | b'r' => {
            for p in [&b"sk_live_"[..], b"sk_test_", b"rk_live_", b"rk_test_"] {
                if rest.starts_with(p) {
                    let e = run(s, i + p.len(), is_alnum);
                    if e - (i + p.len()) >= 16 && at(s, e) != b'_' {
                        return hit(Entity::StripeKey, i..e);
                    }
                    return None;
                }
            }
            if rest.starts_with(b"sk-") {
                let e = run(s, i + 3, b64url);
                let body = &s[i + 3..e];
                if body.len() >= 20
                    && body.iter().any(u8::is_ascii_digit)
                    && body.iter().any(u8::is_ascii_alphabetic)
                {
                    return hit(Entity::OpenAiKey, i..e);
                }
            }
            None
        }
        b'x' => {
            let slack = rest.starts_with(b"xapp-")
                || (rest.len() > 5
                    && rest.starts_with(b"xox")
                    && matches!(rest[3], b'a' | b'b' | b'p' | b'r' | b's' | b'e' | b'o')
                    && rest[4] == b'-');
            if slack {
                let body_start = i + 5; // `xapp-` and `xoxb-` are both five bytes
                let e = run(s, body_start, |b| is_alnum(b) || b == b'-');
                let body = &s[body_start..e];
                if body.len() >= 10 && body.iter().any(u8::is_ascii_digit) {
                    return hit(Entity::SlackToken, i..e);
                }
            }
            None
        }
        b'e' => {
            if rest.starts_with(b"eyJ") {
                if let Some(e) = jwt(s, i) {
                    return hit(Entity::Jwt, i..e);
                }
            }
            None
        }
        b'B' | b'b' => {
            if starts_with_ci(s, i, b"bearer ") {
                let mut p = i + 7;
                while at(s, p) == b' ' && p - i < 12 {
                    p += 1;
                }
                let e = run(s, p, |b| {
                    is_alnum(b) || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
                });
                let mut end = e;
                while at(s, end) == b'=' && end - e < 2 {
                    end += 1;
                }
                if e - p >= 16 && !is_alnum(at(s, end)) {
                    return hit(Entity::BearerToken, p..end);
                }
            } else if starts_with_ci(s, i, b"basic ") {
                let mut p = i + 6;
                while at(s, p) == b' ' && p - i < 11 {
                    p += 1;
                }
                let e = run(s, p, |b| is_alnum(b) || b == b'+' || b == b'/');
                let mut end = e;
                while at(s, end) == b'=' && end - e < 2 {
                    end += 1;
                }
                if e - p >= 8 && !is_alnum(at(s, end)) {
                    let mut buf = Vec::new();
                    if b64_decode(&s[p..e], false, &mut buf)
                        && buf.contains(&b':')
                        && buf.iter().all(|b| (0x20..0x7f).contains(b))
                    {
                        return hit(Entity::BearerToken, p..end);
                    }
                }
            }
            None
        }
        _ => None,
    }
}

/// Base64 (standard or URL alphabet, padding already stripped) into `out`; `false` on a bad
/// character or impossible length.
pub(crate) fn b64_decode(t: &[u8], url: bool, out: &mut Vec<u8>) -> bool {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' if url => 62,
            b'_' if url => 63,
            b'+' if !url => 62,
            b'/' if !url => 63,
            _ => return None,
        } as u32)
    };
    if t.len() % 4 == 1 {
        return false;
    }
    let mut acc = 0u32;
    let mut bits = 0u32;
    for &c in t {
        let Some(v) = val(c) else { return false };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    true
}

/// `header.payload.signature`, base64url parts, header JSON with an `"alg"` member.
fn jwt(s: &[u8], i: usize) -> Option<usize> {
    let h = run(s, i, b64url);
    if at(s, h) != b'.' || h - i < 10 || h - i > JWT_HEADER_MAX {
        return None;
    }
    let p = run(s, h + 1, b64url);
    if p == h + 1 || at(s, p) != b'.' {
        return None;
    }
    let sig = run(s, p + 1, b64url);
    if (at(s, sig) == b'.' && b64url(at(s, sig + 1))) || is_alnum(at(s, sig)) {
        return None;
    }
    let mut header = Vec::with_capacity(h - i);
    if !b64_decode(&s[i..h], true, &mut header) {
        return None;
    }
    let text = header.trim_ascii();
    (text.first() == Some(&b'{') && text.windows(5).any(|w| w == b"\"alg\"")).then_some(sig)
}

/// `-----BEGIN … PRIVATE KEY-----` through its `-----END …-----` line, or to the end of the
/// value when the block is cut off.
pub(super) fn pem_at(s: &[u8], i: usize, o: &ScanOptions) -> Option<Finding> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    if !o.on(Entity::PrivateKey) || !s[i..].starts_with(BEGIN) {
        return None;
    }
    let l = i + BEGIN.len();
    let le = run(s, l, |b| {
        b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' '
    });
    if le - l > 64 || !s[le..].starts_with(b"-----") {
        return None;
    }
    let label = &s[l..le];
    if !label.windows(11).any(|w| w == b"PRIVATE KEY") {
        return None;
    }
    let end = match find(s, b"-----END ", le + 5) {
        Some(e) => {
            let after = e + 9;
            match find(&s[..s.len().min(after + 80)], b"-----", after) {
                Some(x) => x + 5,
                None => s.len(),
            }
        }
        None => s.len(),
    };
    Some(Finding {
        entity: Entity::PrivateKey,
        range: i..end,
    })
}

fn find(s: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from >= s.len() {
        return None;
    }
    s[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Name endings that make the assigned value a secret.
const SECRET_NAME_SUFFIXES: [&[u8]; 24] = [
    b"password",
    b"passwd",
    b"passphrase",
    b"pwd",
    b"secret",
    b"token",
    b"apikey",
    b"api_key",
    b"api-key",
    b"accesskey",
    b"access_key",
    b"secretkey",
    b"secret_key",
    b"privatekey",
    b"private_key",
    b"signing_key",
    b"encryption_key",
    b"credential",
    b"credentials",
    b"authorization",
    b"_pass",
    b"-pass",
    b".pass",
    b"auth_key",
];

fn secret_name(name: &[u8]) -> bool {
    if name.len() > NAME_MAX {
        return false;
    }
    let mut lower = [0u8; NAME_MAX];
    let lower = &mut lower[..name.len()];
    for (d, s) in lower.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    lower == b"pass" || SECRET_NAME_SUFFIXES.iter().any(|k| lower.ends_with(k))
}

fn ignorable_value(v: &[u8]) -> bool {
    // `password: null.` — sentence punctuation is not part of the placeholder.
    let v = v.strip_suffix(b".").unwrap_or(v);
    const IGNORE: [&[u8]; 7] = [
        b"true",
        b"false",
        b"null",
        b"none",
        b"nil",
        b"undefined",
        b"redacted",
    ];
    IGNORE.iter().any(|w| v.eq_ignore_ascii_case(w))
        || v.starts_with(b"[REDACTED")
        || v.iter().all(|&b| b == b'*')
}

/// `name=value`, `name: value`, `"name": "value"`, `name := value`, `name => value`, and SQL's
/// `PASSWORD 'value'`, where the name ends like a secret. Returns the finding (the value part)
/// and the end of the identifier run, which the scanner does not examine again.
pub(super) fn assigned_at(s: &[u8], i: usize, o: &ScanOptions) -> (Option<Finding>, usize) {
    let mut name_end = i;
    while is_ident(at(s, name_end)) {
        name_end += 1;
    }
    if !o.on(Entity::AssignedSecret) || !secret_name(&s[i..name_end]) {
        return (None, name_end);
    }
    (assigned_value(s, i, name_end, o), name_end)
}

fn assigned_value(s: &[u8], i: usize, name_end: usize, o: &ScanOptions) -> Option<Finding> {
    let mut p = name_end;
    if i > 0 && matches!(s[i - 1], b'"' | b'\'') && at(s, p) == s[i - 1] {
        p += 1;
    }
    let ws_start = p;
    while matches!(at(s, p), b' ' | b'\t') && p - ws_start < 8 {
        p += 1;
    }
    let had_ws = p > ws_start;
    match (at(s, p), at(s, p + 1)) {
        (b':', b'=') | (b'=', b'>') => p += 2,
        (b'=', b'=') | (b':', b':') => return None,
        (b'=', _) | (b':', _) => p += 1,
        (b'\'', _) if had_ws && s[i..name_end].eq_ignore_ascii_case(b"password") => {}
        _ => return None,
    }
    let ws_start = p;
    while matches!(at(s, p), b' ' | b'\t') && p - ws_start < 8 {
        p += 1;
    }
    let q = at(s, p);
    let (vs, ve) = if matches!(q, b'"' | b'\'' | b'`') {
        let vs = p + 1;
        let mut e = vs;
        loop {
            let c = at(s, e);
            if e >= s.len() || c == q || e - vs >= TOKEN_MAX {
                break;
            }
            e += if c == b'\\' { 2 } else { 1 };
        }
        (vs, e.min(s.len()))
    } else {
        let value_char = |b: u8| {
            b > b' '
                && b != 0x7f
                && !matches!(
                    b,
                    b',' | b';' | b'&' | b')' | b'}' | b']' | b'<' | b'>' | b'"' | b'\''
                )
        };
        let e = run(s, p, value_char);
        // `Authorization: Bearer xyz`: the credential is the word after the scheme.
        let word = &s[p..e];
        let scheme = [&b"bearer"[..], b"basic", b"token", b"digest", b"negotiate"]
            .iter()
            .any(|w| word.eq_ignore_ascii_case(w));
        if scheme && at(s, e) == b' ' && value_char(at(s, e + 1)) {
            let te = run(s, e + 1, value_char);
            return o.on(Entity::BearerToken).then_some(Finding {
                entity: Entity::BearerToken,
                range: e + 1..te,
            });
        }
        (p, e)
    };
    if ve <= vs || !s[vs..ve].iter().any(|b| is_alnum(*b)) || ignorable_value(&s[vs..ve]) {
        return None;
    }
    let entity = classify_token(s, vs..ve, o).unwrap_or(Entity::AssignedSecret);
    Some(Finding {
        entity,
        range: vs..ve,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::tests::{check, found, none};
    use super::*;

    const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

    #[test]
    fn prefixed_keys() {
        check(
            "key AKIAIOSFODNN7EXAMPLE in log",
            Entity::AwsKey,
            "AKIAIOSFODNN7EXAMPLE",
        );
        check(
            "ASIAY34FZKBOKMUTVV7A",
            Entity::AwsKey,
            "ASIAY34FZKBOKMUTVV7A",
        );
        let gh = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";
        check(&format!("token {gh}"), Entity::GithubToken, gh);
        let pat = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV";
        check(pat, Entity::GithubToken, pat);
        check(
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            Entity::StripeKey,
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        );
        check(
            "rk_test_51H8abcdEFGH1234ijkl",
            Entity::StripeKey,
            "rk_test_51H8abcdEFGH1234ijkl",
        );
        let slack = "xoxb-2048-123456789012-AbCdEfGhIjKlMnOpQrStUvWx";
        check(slack, Entity::SlackToken, slack);
        check(
            "xapp-1-A0123-4567-abcdef",
            Entity::SlackToken,
            "xapp-1-A0123-4567-abcdef",
        );
        let g = "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe";
        check(&format!("?key={g}&q=1"), Entity::GoogleApiKey, g);
        let oa = "sk-proj-abcDEF1234567890ghijKLMNOP";
        check(oa, Entity::OpenAiKey, oa);
        check(
            "sk-abcdefghij1234567890XYZ",
            Entity::OpenAiKey,
            "sk-abcdefghij1234567890XYZ",
        );
    }

    #[test]
    fn prefixed_near_misses() {
        for s in [
            "AKIA1234",
            "AKIAIOSFODNN7EXAMPLEX",
            "ghp_short",
            "sk-learn is a library",
            "sk_live_short",
            "xoxb-abc",
            "AIzaShort",
            "the bearer of this letter",
            "Basic income",
            "eyJhbGciOiJIUzI1NiJ9",
        ] {
            none(s);
        }
    }

    #[test]
    fn jwt_and_bearer() {
        check(&format!("jwt {JWT} end"), Entity::Jwt, JWT);
        check(
            &format!("Authorization: Bearer {JWT}"),
            Entity::BearerToken,
            JWT,
        );
        check(
            "bearer abcdefghijklmnopqrstuvwxyz0123",
            Entity::BearerToken,
            "abcdefghijklmnopqrstuvwxyz0123",
        );
        // dXNlcjpwYXNz = "user:pass"
        check(
            "Authorization: Basic dXNlcjpwYXNz",
            Entity::BearerToken,
            "dXNlcjpwYXNz",
        );
        // header without "alg"
        none("eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.c2ln");
    }

    #[test]
    fn pem_blocks() {
        let pem =
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----";
        check(&format!("key:\n{pem}\nrest"), Entity::PrivateKey, pem);
        let cut = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA";
        check(cut, Entity::PrivateKey, cut);
        none("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----");
    }

    #[test]
    fn assigned_secrets() {
        check("password=hunter2", Entity::AssignedSecret, "hunter2");
        check("DB_PASSWORD=s3cr3t!", Entity::AssignedSecret, "s3cr3t!");
        check(
            r#"{"client_secret": "abc def"}"#,
            Entity::AssignedSecret,
            "abc def",
        );
        check("passwd: 'x y'", Entity::AssignedSecret, "x y");
        check(
            "url?access_token=abc123&x=1",
            Entity::AssignedSecret,
            "abc123",
        );
        check(
            "ALTER ROLE app PASSWORD 'Tr0ub4dor'",
            Entity::AssignedSecret,
            "Tr0ub4dor",
        );
        check(
            "authorization: Basic Zm9vOmJhcg==",
            Entity::BearerToken,
            "Zm9vOmJhcg==",
        );
        check(
            "api_key=AKIAIOSFODNN7EXAMPLE",
            Entity::AwsKey,
            "AKIAIOSFODNN7EXAMPLE",
        );
        check("secret := xyz", Entity::AssignedSecret, "xyz");
        for s in [
            "password=",
            "password: null",
            "is_secret: true",
            "token_count: 5",
            "primary_key=id",
            "password == other",
            "password reset requested",
            "password=****",
        ] {
            none(s);
        }
        assert_eq!(found("my_password_hint=blue").len(), 0);
    }

    #[test]
    fn long_identifier_runs_stay_linear() {
        let s = "a_".repeat(50_000) + "password=x";
        let t = std::time::Instant::now();
        let f = found(&s);
        assert!(t.elapsed().as_secs() < 2);
        assert_eq!(f, vec![]); // the name is the whole run, longer than NAME_MAX
        let s = "sk-".repeat(20_000);
        let t = std::time::Instant::now();
        assert_eq!(found(&s), vec![]);
        assert!(t.elapsed().as_secs() < 2);
    }
}
