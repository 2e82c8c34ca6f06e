//! Deterministic generator of labelled cells for the accuracy test and the benchmark: sensitive
//! values of every entity embedded in realistic text, near-misses that must not be masked, and
//! ordinary clean values. Independent re-implementations of Luhn and mod-97 (not the crate's).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::ops::Range;

use gatehouse_masking::Entity;

/// SplitMix64: tiny, seedable, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn range(&mut self, lo: u64, hi_incl: u64) -> u64 {
        lo + self.below(hi_incl - lo + 1)
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
    pub fn ps(&mut self, xs: &[&'static str]) -> &'static str {
        xs[self.below(xs.len() as u64) as usize]
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
    pub fn of_alphabet(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n).map(|_| char::from(*self.pick(alphabet))).collect()
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const UPPER_DIGIT: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const PASSWORD: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789!#%^*+-_$";

const FIRST: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "zoe", "José",
    "Łukasz", "Ana", "Søren",
];
const LAST: &[&str] = &[
    "smith", "jones", "garcia", "miller", "davis", "martinez", "lopez", "wilson", "anderson",
    "thomas", "taylor", "moore", "müller", "o'neil", "nguyen", "kim",
];
const DOMAINS: &[&str] = &[
    "example",
    "mail",
    "corp-intra",
    "acme",
    "contoso",
    "fabrikam",
    "globex",
    "initech",
    "umbrella",
    "wayne-ent",
];
const TLDS: &[&str] = &[
    "com", "org", "net", "io", "co.uk", "de", "fr", "com.au", "info", "dev", "example",
];
const WORDS: &[&str] = &[
    "order",
    "shipped",
    "pending",
    "customer",
    "requested",
    "refund",
    "for",
    "the",
    "invoice",
    "account",
    "updated",
    "please",
    "contact",
    "support",
    "about",
    "delivery",
    "address",
    "changed",
    "note",
    "ticket",
    "escalated",
    "to",
    "billing",
    "review",
    "on",
    "with",
    "and",
    "from",
    "status",
    "approved",
    "declined",
    "payment",
    "received",
    "via",
    "call",
    "back",
    "login",
    "failed",
    "user",
    "reported",
];
const STATUSES: &[&str] = &[
    "active",
    "inactive",
    "pending",
    "shipped",
    "cancelled",
    "on hold",
    "delivered",
    "refunded",
    "open",
    "closed",
    "true",
    "false",
    "NULL",
    "n/a",
];

/// A labelled span.
#[derive(Debug, Clone)]
pub struct Label {
    pub entity: Entity,
    pub range: Range<usize>,
}

/// What a cell is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sensitive,
    NearMiss,
    Clean,
}

#[derive(Debug, Clone)]
pub struct Cell {
    pub kind: Kind,
    pub text: String,
    pub labels: Vec<Label>,
    /// Short name of the generator (for diagnostics).
    pub what: &'static str,
}

impl Cell {
    fn new(kind: Kind, what: &'static str) -> Cell {
        Cell {
            kind,
            text: String::new(),
            labels: Vec::new(),
            what,
        }
    }
    fn t(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }
    fn e(&mut self, entity: Entity, s: &str) -> &mut Self {
        let start = self.text.len();
        self.text.push_str(s);
        self.labels.push(Label {
            entity,
            range: start..self.text.len(),
        });
        self
    }
}

fn luhn_complete(body: &str) -> String {
    // Check digit that makes body+d Luhn-valid.
    let mut sum = 0u32;
    for (k, c) in body.bytes().rev().enumerate() {
        let mut v = u32::from(c - b'0');
        if k % 2 == 0 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    let d = (10 - sum % 10) % 10;
    format!("{body}{d}")
}

fn luhn_ok(n: &str) -> bool {
    let mut sum = 0u32;
    for (k, c) in n.bytes().rev().enumerate() {
        let mut v = u32::from(c - b'0');
        if k % 2 == 1 {
            v = if v * 2 > 9 { v * 2 - 9 } else { v * 2 };
        }
        sum += v;
    }
    sum % 10 == 0
}

/// A card number of a random network (digits only).
pub fn card_digits(r: &mut Rng) -> String {
    let (prefix, len): (String, usize) = match r.below(12) {
        0 | 1 => ("4".into(), 16),
        2 => ("4".into(), *r.pick(&[13usize, 19])),
        3 => (format!("5{}", r.range(1, 5)), 16),
        4 => (format!("{}", r.range(2221, 2720)), 16),
        5 => (format!("3{}", r.pick(&[4, 7])), 15),
        6 => (r.ps(&["6011", "65", "644", "649"]).to_string(), 16),
        7 => (format!("{}", r.range(3528, 3589)), 16),
        8 => (r.ps(&["36", "300", "305", "38"]).to_string(), 14),
        9 => ("62".into(), *r.pick(&[16usize, 19])),
        10 => (
            r.ps(&["6759", "5018", "6304", "5020"]).to_string(),
            *r.pick(&[12usize, 16, 19]),
        ),
        _ => (format!("{}", r.range(2200, 2204)), 16),
    };
    let body = format!("{prefix}{}", r.digits(len - prefix.len() - 1));
    luhn_complete(&body)
}

pub fn format_card(r: &mut Rng, d: &str) -> String {
    match r.below(4) {
        0 | 1 => d.to_string(),
        k => {
            let sep = if k == 2 { " " } else { "-" };
            let groups: Vec<usize> = if d.len() == 15 {
                vec![4, 6, 5]
            } else if d.len() == 14 {
                vec![4, 6, 4]
            } else {
                let mut g = vec![4; d.len() / 4];
                if d.len() % 4 != 0 {
                    g.push(d.len() % 4);
                }
                if *g.last().unwrap_or(&4) < 3 {
                    let x = g.pop().unwrap_or(0);
                    if let Some(l) = g.last_mut() {
                        *l += x;
                    }
                }
                g
            };
            let mut out = Vec::new();
            let mut p = 0;
            for g in groups {
                out.push(&d[p..p + g]);
                p += g;
            }
            out.join(sep)
        }
    }
}

pub fn ssn(r: &mut Rng) -> String {
    let mut area = r.range(1, 899);
    if area == 666 {
        area = 667;
    }
    format!("{area:03}-{:02}-{:04}", r.range(1, 99), r.range(1, 9999))
}

pub fn email(r: &mut Rng) -> String {
    let f = r.pick(&FIRST[..20]).to_string();
    let l = r.pick(&LAST[..12]).to_string();
    let local = match r.below(5) {
        0 => format!("{f}.{l}"),
        1 => format!("{}{l}", &f[..1]),
        2 => format!("{f}_{l}{}", r.below(100)),
        3 => format!("{f}+{}", r.ps(&["news", "billing", "x1"])),
        _ => f.to_uppercase(),
    };
    let sub = if r.chance(0.2) {
        format!("{}.", r.ps(&["mail", "eu", "dept-7"]))
    } else {
        String::new()
    };
    format!("{local}@{sub}{}.{}", r.pick(DOMAINS), r.pick(TLDS))
}

pub fn phone(r: &mut Rng) -> String {
    let nxx = |r: &mut Rng| format!("{}{}", r.range(2, 9), r.digits(2));
    match r.below(18) {
        14 => format!("+1 ({}) {}-{}", nxx(r), nxx(r), r.digits(4)),
        15 => format!("+44 (0)20 {} {}", r.range(3000, 8999), r.digits(4)),
        16 => format!("1 ({}) {}-{}", nxx(r), nxx(r), r.digits(4)),
        17 => {
            let (a, b) = (nxx(r), nxx(r));
            format!("+1{a}{b}{}", r.digits(4))
        }
        0 => format!("({}) {}-{}", nxx(r), nxx(r), r.digits(4)),
        1 => format!("{}-{}-{}", nxx(r), nxx(r), r.digits(4)),
        2 => format!("{}.{}.{}", nxx(r), nxx(r), r.digits(4)),
        3 => format!("+1 {} {} {}", nxx(r), nxx(r), r.digits(4)),
        4 => format!("+1-{}-{}-{}", nxx(r), nxx(r), r.digits(4)),
        5 => format!("+44 20 {} {}", r.range(3000, 8999), r.digits(4)),
        6 => format!("+44 7{} {}", r.digits(3), r.digits(6)),
        7 => format!("+49 {} {}", r.ps(&["30", "89", "40"]), r.digits(7)),
        8 => format!(
            "+33 {} {} {} {} {}",
            r.range(1, 9),
            r.digits(2),
            r.digits(2),
            r.digits(2),
            r.digits(2)
        ),
        9 => format!("+81 {}-{}-{}", r.ps(&["3", "6"]), r.digits(4), r.digits(4)),
        10 => format!("+91 9{} {}", r.digits(4), r.digits(5)),
        11 => format!("+61 4{} {} {}", r.digits(2), r.digits(3), r.digits(3)),
        12 => format!("020 {} {}", r.range(3000, 8999), r.digits(4)),
        _ => format!("+86 13{} {} {}", r.below(10), r.digits(4), r.digits(4)),
    }
}

fn mod97_str(s: &str) -> u64 {
    // s: digits and upper-case letters, already rearranged.
    let mut rem = 0u64;
    for c in s.chars() {
        let v = c.to_digit(36).unwrap_or(0) as u64;
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem
}

/// (IBAN electronic form) with valid or deliberately wrong check digits.
pub fn iban(r: &mut Rng, valid: bool) -> String {
    let letters = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let (cc, bban) = match r.below(10) {
        0 => ("DE", r.digits(18)),
        1 => (
            "GB",
            format!("{}{}", r.of_alphabet(letters, 4), r.digits(14)),
        ),
        2 => ("FR", r.digits(23)),
        3 => (
            "NL",
            format!("{}{}", r.of_alphabet(letters, 4), r.digits(10)),
        ),
        4 => ("ES", r.digits(20)),
        5 => (
            "IT",
            format!("{}{}", r.of_alphabet(letters, 1), r.digits(22)),
        ),
        6 => ("BE", r.digits(12)),
        7 => ("CH", r.digits(17)),
        8 => ("PL", r.digits(24)),
        _ => ("AT", r.digits(16)),
    };
    let check = 98 - mod97_str(&format!("{bban}{cc}00"));
    let check = if valid {
        check
    } else {
        (check + 1 + r.below(90)) % 97 + if check == 0 { 1 } else { 0 }
    };
    let s = format!("{cc}{check:02}{bban}");
    if !valid && mod97_str(&format!("{}{}", &s[4..], &s[..4])) == 1 {
        return format!("{cc}{:02}{bban}", (check + 1) % 100);
    }
    s
}

pub fn iban_print(r: &mut Rng, s: &str) -> String {
    if r.chance(0.5) {
        return s.to_string();
    }
    s.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn ip(r: &mut Rng) -> String {
    match r.below(5) {
        0 => format!("10.{}.{}.{}", r.below(256), r.below(256), r.range(1, 254)),
        1 => format!("192.168.{}.{}", r.below(256), r.range(1, 254)),
        2 => format!(
            "{}.{}.{}.{}",
            r.range(1, 223),
            r.below(256),
            r.below(256),
            r.range(1, 254)
        ),
        3 => format!("2001:db8:{:x}::{:x}", r.below(65536), r.range(1, 65535)),
        _ => format!(
            "fe80::{:x}:{:x}:{:x}:{:x}",
            r.below(65536),
            r.below(65536),
            r.below(65536),
            r.range(1, 65535)
        ),
    }
}

fn b64url_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for k in 0..chars {
            out.push(char::from(B64URL[((n >> (18 - 6 * k)) & 63) as usize]));
        }
    }
    out
}

pub fn jwt(r: &mut Rng) -> String {
    let header = format!(
        r#"{{"alg":"{}","typ":"JWT"{}}}"#,
        r.ps(&["HS256", "RS256", "ES256", "EdDSA"]),
        if r.chance(0.5) {
            format!(r#","kid":"k{}""#, r.below(100))
        } else {
            String::new()
        }
    );
    let payload = format!(
        r#"{{"sub":"{}","iat":{},"exp":{}}}"#,
        r.below(1_000_000),
        1_700_000_000 + r.below(1_000_000),
        1_800_000_000 + r.below(1000)
    );
    format!(
        "{}.{}.{}",
        b64url_encode(header.as_bytes()),
        b64url_encode(payload.as_bytes()),
        r.of_alphabet(B64URL, 43)
    )
}

pub fn pem(r: &mut Rng) -> String {
    let label = r.ps(&[
        "RSA PRIVATE KEY",
        "PRIVATE KEY",
        "EC PRIVATE KEY",
        "OPENSSH PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
    ]);
    let lines: Vec<String> = (0..r.range(2, 6)).map(|_| r.of_alphabet(B64, 64)).collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----",
        lines.join("\n")
    )
}

pub fn vault_secrets(r: &mut Rng, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let len = r.range(16, 28) as usize;
            r.of_alphabet(PASSWORD, len)
        })
        .collect()
}

fn sentence(r: &mut Rng, n: usize) -> String {
    (0..n).map(|_| *r.pick(WORDS)).collect::<Vec<_>>().join(" ")
}

fn name(r: &mut Rng) -> String {
    let f = r.pick(FIRST);
    let l = r.pick(LAST);
    let mut c = f.chars();
    let cap: String = c
        .next()
        .map(|x| x.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default();
    format!("{cap} {}", l)
}

fn prefix(r: &mut Rng) -> String {
    if r.chance(0.35) {
        String::new()
    } else {
        let n = r.range(1, 5) as usize;
        format!("{} ", sentence(r, n))
    }
}

fn suffix(r: &mut Rng) -> String {
    if r.chance(0.35) {
        String::new()
    } else {
        let n = r.range(1, 5) as usize;
        format!("{} {}", r.ps(&["", ",", ".", ";", " -"]), sentence(r, n)).replacen("  ", " ", 1)
    }
}

/// One sensitive cell with entity `e`.
pub fn sensitive(r: &mut Rng, e: Entity, vault: &[String]) -> Cell {
    let mut c = Cell::new(Kind::Sensitive, e.name());
    let pre = prefix(r);
    let suf = suffix(r);
    c.t(&pre);
    match e {
        Entity::Card => {
            let d = card_digits(r);
            let f = format_card(r, &d);
            c.t(r.ps(&["card ", "paid with ", "PAN: ", ""])).e(e, &f);
        }
        Entity::Ssn => {
            let s = ssn(r);
            c.t(r.ps(&["SSN ", "ssn: ", "social security number ", ""]))
                .e(e, &s);
        }
        Entity::Email => {
            let m = email(r);
            if r.chance(0.3) {
                c.t("<").e(e, &m).t(">");
            } else {
                c.t(r.ps(&["email ", "contact: ", "mailto:", ""])).e(e, &m);
            }
        }
        Entity::Phone => {
            let p = phone(r);
            c.t(r.ps(&["call ", "tel: ", "phone ", "mobile: ", ""]))
                .e(e, &p);
        }
        Entity::Iban => {
            let i = iban(r, true);
            let i = iban_print(r, &i);
            c.t(r.ps(&["IBAN ", "to account ", "iban: ", ""])).e(e, &i);
        }
        Entity::IpAddress => {
            let i = ip(r);
            c.t(r.ps(&["from ", "client ip ", "host=", "peer "]))
                .e(e, &i);
            if !i.contains(':') && r.chance(0.3) {
                c.t(&format!(":{}", r.range(1024, 65535)));
            }
        }
        Entity::AwsKey => {
            let k = format!(
                "{}{}",
                r.ps(&["AKIA", "ASIA"]),
                r.of_alphabet(UPPER_DIGIT, 16)
            );
            c.t(r.ps(&["aws key ", "AccessKeyId ", "key="])).e(e, &k);
        }
        Entity::PrivateKey => {
            let p = pem(r);
            c.t("key:\n").e(e, &p);
        }
        Entity::Jwt => {
            let j = jwt(r);
            c.t(r.ps(&["token ", "jwt ", "id_token "])).e(e, &j);
        }
        Entity::BearerToken => {
            let t = if r.chance(0.3) {
                jwt(r)
            } else {
                let n = r.range(24, 48) as usize;
                r.of_alphabet(B64URL, n)
            };
            c.t(r.ps(&[
                "Authorization: Bearer ",
                "authorization: bearer ",
                "header Bearer ",
            ]))
            .e(e, &t);
        }
        Entity::GithubToken => {
            let t = if r.chance(0.7) {
                format!(
                    "{}{}",
                    r.ps(&["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]),
                    r.of_alphabet(ALNUM, 36)
                )
            } else {
                format!(
                    "github_pat_{}_{}",
                    r.of_alphabet(ALNUM, 22),
                    r.of_alphabet(ALNUM, 59)
                )
            };
            c.t(r.ps(&["token ", "gh token ", "using "])).e(e, &t);
        }
        Entity::StripeKey => {
            let n = r.range(24, 99) as usize;
            let t = format!(
                "{}{}",
                r.ps(&["sk_live_", "rk_live_", "sk_test_"]),
                r.of_alphabet(ALNUM, n)
            );
            c.t(r.ps(&["stripe ", "key ", "using "])).e(e, &t);
        }
        Entity::SlackToken => {
            let t = format!(
                "{}{}-{}-{}",
                r.ps(&["xoxb-", "xoxp-"]),
                r.digits(12),
                r.digits(13),
                r.of_alphabet(ALNUM, 24)
            );
            c.t(r.ps(&["slack ", "bot token ", "using "])).e(e, &t);
        }
        Entity::GoogleApiKey => {
            let t = format!("AIza{}", r.of_alphabet(B64URL, 35));
            c.t(r.ps(&["maps key ", "key ", "using "])).e(e, &t);
        }
        Entity::OpenAiKey => {
            let t = format!("{}{}", r.ps(&["sk-", "sk-proj-"]), r.of_alphabet(ALNUM, 48));
            c.t(r.ps(&["openai ", "key ", "using "])).e(e, &t);
        }
        Entity::AssignedSecret => {
            let n = r.range(8, 20) as usize;
            let v = r.of_alphabet(PASSWORD, n);
            match r.below(6) {
                0 => {
                    c.t("password=").e(e, &v);
                }
                1 => {
                    c.t("DB_PASSWORD=").e(e, &v);
                }
                2 => {
                    c.t("{\"api_key\": \"").e(e, &v).t("\"}");
                }
                3 => {
                    c.t("client_secret: ").e(e, &v);
                }
                4 => {
                    c.t("ALTER ROLE app PASSWORD '").e(e, &v).t("'");
                }
                _ => {
                    c.t("?access_token=").e(e, &v).t("&lang=en");
                }
            }
        }
        Entity::VaultedSecret => {
            let s = r.pick(vault).clone();
            match r.below(3) {
                0 => {
                    c.t("auth failed for ").e(e, &s);
                }
                1 => {
                    c.t("host=db user=app password=").e(e, &s);
                }
                _ => {
                    c.t("value ").e(e, &s).t(" end");
                }
            }
        }
        Entity::Column => {
            c.t(&name(r));
        }
    }
    c.t(&suf);
    c
}

/// A near-miss cell: looks like sensitive data, must not be masked.
pub fn near_miss(r: &mut Rng) -> Cell {
    let mut c;
    let text: String = match r.below(22) {
        0 => {
            c = Cell::new(Kind::NearMiss, "luhn-invalid card");
            let d = card_digits(r);
            let last = (d.as_bytes()[d.len() - 1] - b'0' + 1 + r.below(9) as u8) % 10;
            let bad = format!("{}{}", &d[..d.len() - 1], last);
            let bad = if luhn_ok(&bad) {
                format!("{}{}", &d[..d.len() - 1], (last + 1) % 10)
            } else {
                bad
            };
            format!("card {}", format_card(r, &bad))
        }
        1 => {
            c = Cell::new(Kind::NearMiss, "bad iban");
            let i = iban(r, false);
            format!("IBAN {}", iban_print(r, &i))
        }
        2 => {
            c = Cell::new(Kind::NearMiss, "invalid ssn");
            match r.below(4) {
                0 => format!("SSN 000-{:02}-{:04}", r.range(1, 99), r.range(1, 9999)),
                1 => format!("ssn 666-{:02}-{:04}", r.range(1, 99), r.range(1, 9999)),
                2 => format!("{}-00-{:04}", r.range(900, 999), r.range(1, 9999)),
                _ => format!("{:03}-{:02}-0000", r.range(1, 899), r.range(1, 99)),
            }
        }
        3 => {
            c = Cell::new(Kind::NearMiss, "number");
            match r.below(4) {
                0 => format!("{}", r.below(1_000_000)),
                1 => format!(
                    "{},{:03},{:03}",
                    r.range(1, 999),
                    r.below(1000),
                    r.below(1000)
                ),
                2 => format!("{}.{:02}", r.below(100_000), r.below(100)),
                _ => format!("qty {} of {}", r.range(1, 50), r.range(50, 500)),
            }
        }
        4 => {
            c = Cell::new(Kind::NearMiss, "date");
            let (y, m, d) = (r.range(1990, 2030), r.range(1, 12), r.range(1, 28));
            match r.below(4) {
                0 => format!("{y}-{m:02}-{d:02}"),
                1 => format!("{d:02}/{m:02}/{y}"),
                2 => format!("{m}/{d}/{y}"),
                _ => format!("{d:02}.{m:02}.{y}"),
            }
        }
        5 => {
            c = Cell::new(Kind::NearMiss, "timestamp");
            match r.below(3) {
                0 => format!(
                    "{}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                    r.range(2000, 2030),
                    r.range(1, 12),
                    r.range(1, 28),
                    r.below(24),
                    r.below(60),
                    r.below(60)
                ),
                1 => format!(
                    "{}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
                    r.range(2000, 2030),
                    r.range(1, 12),
                    r.range(1, 28),
                    r.below(24),
                    r.below(60),
                    r.below(60),
                    r.below(1_000_000)
                ),
                _ => format!("{}", 1_600_000_000_000u64 + r.below(200_000_000_000)),
            }
        }
        6 => {
            c = Cell::new(Kind::NearMiss, "uuid");
            format!(
                "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                r.next_u64() as u32,
                r.below(65536),
                r.below(4096),
                0x8000 + r.below(0x4000),
                r.next_u64() & 0xffff_ffff_ffff
            )
        }
        7 => {
            c = Cell::new(Kind::NearMiss, "price");
            match r.below(3) {
                0 => format!(
                    "${},{:03}.{:02}",
                    r.range(1, 99),
                    r.below(1000),
                    r.below(100)
                ),
                1 => format!("EUR {}.{:02}", r.below(10000), r.below(100)),
                _ => format!("total: {} USD", r.below(100000)),
            }
        }
        8 => {
            c = Cell::new(Kind::NearMiss, "order number");
            match r.below(4) {
                0 => format!("ORD-{}-{:06}", r.range(2015, 2030), r.below(1_000_000)),
                1 => format!("#{}", r.range(10000, 99999999)),
                2 => format!("INV-{:08}", r.below(100_000_000)),
                _ => format!("order {}", r.range(1_000_000, 9_999_999_999)),
            }
        }
        9 => {
            c = Cell::new(Kind::NearMiss, "version");
            match r.below(4) {
                0 => format!("v{}.{}.{}", r.below(20), r.below(50), r.below(100)),
                1 => format!(
                    "version {}.{}.{}-beta.{}",
                    r.below(5),
                    r.below(30),
                    r.below(30),
                    r.below(9)
                ),
                2 => format!(
                    "v{}.{}.{}.{}",
                    r.below(10),
                    r.below(10),
                    r.below(10),
                    r.below(300)
                ),
                _ => format!(
                    "{}.{}.{}.{}.{}",
                    r.below(10),
                    r.below(10),
                    r.below(10),
                    r.below(10),
                    r.below(10)
                ),
            }
        }
        10 => {
            c = Cell::new(Kind::NearMiss, "hash");
            let alphabet = b"0123456789abcdef";
            let n = *r.pick(&[32usize, 40, 64]);
            format!("sha {}", r.of_alphabet(alphabet, n))
        }
        11 => {
            c = Cell::new(Kind::NearMiss, "time");
            format!("{:02}:{:02}:{:02}", r.below(24), r.below(60), r.below(60))
        }
        12 => {
            c = Cell::new(Kind::NearMiss, "not an email");
            match r.below(4) {
                0 => format!("@{}", r.pick(FIRST)),
                1 => format!("{} at {} dot com", r.pick(FIRST), r.pick(DOMAINS)),
                2 => format!("{}@localhost", r.pick(FIRST)),
                _ => format!("git@{}:repo", r.pick(DOMAINS)),
            }
        }
        13 => {
            c = Cell::new(Kind::NearMiss, "not a secret");
            r.ps(&[
                "password reset requested",
                "token count: 5",
                "is_secret: false",
                "sk-learn model",
                "password: null",
                "the bearer of this note",
                "Basic plan",
                "secret santa list",
                "api_key=",
                "AKIA docs page",
            ])
            .to_string()
        }
        14 => {
            c = Cell::new(Kind::NearMiss, "short digits");
            format!("{} {} {}", r.digits(3), r.digits(3), r.digits(3))
        }
        15 => {
            c = Cell::new(Kind::NearMiss, "isbn");
            format!(
                "ISBN 978-{}-{}-{}-{}",
                r.below(10),
                r.digits(2),
                r.digits(6),
                r.below(10)
            )
        }
        16 => {
            c = Cell::new(Kind::NearMiss, "ip-like");
            format!(
                "{}.{}.{}.{}",
                r.range(256, 999),
                r.below(256),
                r.below(256),
                r.below(256)
            )
        }
        17 => {
            c = Cell::new(Kind::NearMiss, "percent/coords");
            format!(
                "{}.{:06}, -{}.{:06}",
                r.below(90),
                r.below(1_000_000),
                r.below(180),
                r.below(1_000_000)
            )
        }
        18 => {
            c = Cell::new(Kind::NearMiss, "mac");
            format!(
                "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
                r.below(256),
                r.below(256),
                r.below(256),
                r.below(256),
                r.below(256),
                r.below(256)
            )
        }
        19 => {
            c = Cell::new(Kind::NearMiss, "tracking");
            format!(
                "1Z{}{}",
                r.of_alphabet(b"ABCDEFGHJKLMNPRSTUVWXYZ0123456789", 6),
                r.digits(10)
            )
        }
        20 => {
            c = Cell::new(Kind::NearMiss, "plain 9-10 digits");
            {
                let n = *r.pick(&[9usize, 10]);
                r.digits(n).trim_start_matches('0').to_string()
            }
        }
        _ => {
            c = Cell::new(Kind::NearMiss, "short phone-like");
            format!("ext. {}", r.digits(4))
        }
    };
    let pre = prefix(r);
    let suf = suffix(r);
    c.t(&pre).t(&text).t(&suf);
    c
}

pub fn clean(r: &mut Rng) -> Cell {
    let mut c = Cell::new(Kind::Clean, "clean");
    let text = match r.below(6) {
        0 => name(r),
        1 => r.pick(STATUSES).to_string(),
        2 => {
            let n = r.range(3, 12) as usize;
            sentence(r, n)
        }
        3 => format!("{}", r.below(10_000)),
        4 => format!(
            "{} {}",
            r.ps(&["Widget", "Gadget", "Sprocket", "Gizmo"]),
            r.ps(&["Pro", "Mini", "XL", "2000"])
        ),
        _ => format!(
            "{}, {}",
            r.ps(&["Berlin", "Paris", "Austin", "Osaka", "São Paulo"]),
            r.ps(&["DE", "FR", "TX", "JP", "BR"])
        ),
    };
    c.t(&text);
    c
}

/// Detected entities measured by the accuracy test (everything but rule-based `Column`).
pub const MEASURED: [Entity; 17] = [
    Entity::Card,
    Entity::Ssn,
    Entity::Email,
    Entity::Phone,
    Entity::Iban,
    Entity::IpAddress,
    Entity::AwsKey,
    Entity::PrivateKey,
    Entity::Jwt,
    Entity::BearerToken,
    Entity::GithubToken,
    Entity::StripeKey,
    Entity::SlackToken,
    Entity::GoogleApiKey,
    Entity::OpenAiKey,
    Entity::AssignedSecret,
    Entity::VaultedSecret,
];

/// The labelled set: `sensitive_per_entity` cells for each measured entity, `near` near-miss
/// cells and `clean` clean cells, shuffled deterministically.
pub fn dataset(
    seed: u64,
    sensitive_per_entity: usize,
    near: usize,
    clean_n: usize,
    vault: &[String],
) -> Vec<Cell> {
    let mut r = Rng::new(seed);
    let mut cells = Vec::new();
    for e in MEASURED {
        for _ in 0..sensitive_per_entity {
            cells.push(sensitive(&mut r, e, vault));
        }
    }
    for _ in 0..near {
        cells.push(near_miss(&mut r));
    }
    for _ in 0..clean_n {
        cells.push(clean(&mut r));
    }
    // Fisher–Yates
    for i in (1..cells.len()).rev() {
        let j = r.below(i as u64 + 1) as usize;
        cells.swap(i, j);
    }
    cells
}
