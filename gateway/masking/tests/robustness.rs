//! Randomised robustness: the engine never panics, findings are sorted, disjoint and in
//! bounds, vaulted secrets never survive masking, masked JSON stays valid JSON, and
//! pathological inputs cost linear time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::gen::Rng;
use gatehouse_masking::{ColumnPlan, Counts, Engine, MaskingConfig};

const FRAGMENTS: &[&str] = &[
    "0",
    "1",
    "4",
    "9",
    " ",
    "-",
    ".",
    ":",
    "::",
    "@",
    "+",
    "(",
    ")",
    "/",
    "=",
    "'",
    "\"",
    "\\",
    "_",
    "\n",
    "ab",
    "Z",
    "é",
    "\u{0}",
    "4111",
    "111",
    "0044",
    "+1",
    "+44 ",
    "(415)",
    "555-",
    "0132",
    "123-45-6789",
    "DE89",
    "3704",
    "GB29",
    "AKIA",
    "ASIA",
    "AIza",
    "ghp_",
    "github_pat_",
    "sk-",
    "sk_live_",
    "xoxb-",
    "eyJ",
    "eyJhbGciOiJIUzI1NiJ9",
    "Bearer ",
    "Basic ",
    "password",
    "=",
    "\"token\": \"",
    "-----BEGIN RSA PRIVATE KEY-----",
    "-----END ",
    "://",
    "fe80",
    "10.0.0.",
    "255",
    "example.com",
    "Vault-S3cret!",
    "Vault-S3c",
];

fn random_value(r: &mut Rng) -> Vec<u8> {
    let n = r.range(0, 40);
    let mut v = Vec::new();
    for _ in 0..n {
        if r.chance(0.05) {
            v.push(r.below(256) as u8);
        } else {
            v.extend_from_slice(r.pick(FRAGMENTS).as_bytes());
        }
    }
    v
}

fn engine() -> Engine {
    let cfg: MaskingConfig = toml::from_str(
        r#"
ssn_plain_columns = ["tax*"]
[entities]
card = { kind = "partial", keep_last = 4 }
email = { kind = "keyed_hash", length = 12 }
phone = { kind = "format_preserving" }
[[rules]]
name = "pii"
columns = ["ssn"]
strategy = { kind = "format_preserving" }
"#,
    )
    .unwrap();
    Engine::new(&cfg, &[b"Vault-S3cret!", b"x"], [5; 32]).unwrap()
}

#[test]
fn random_values_never_panic_and_findings_are_well_formed() {
    let e = engine();
    let mut r = Rng::new(42);
    for k in 0..60_000 {
        let v = random_value(&mut r);
        let column = ["tax_id", "ssn", "note"][k % 3];
        let plan = e.plan(Some(column));
        let found = e.find(plan, &v);
        let mut last = 0;
        for f in &found {
            assert!(
                f.range.start >= last && f.range.start < f.range.end && f.range.end <= v.len(),
                "{v:?} {found:?}"
            );
            last = f.range.end;
        }
        let mut c = Counts::new();
        let out = e.mask(Some(column), &v, &mut c).unwrap();
        assert!(!out.windows(13).any(|w| w == b"Vault-S3cret!"), "{v:?}");
        if !plan.masks_whole_value() {
            assert_eq!(c.total() as usize, found.len());
        }
    }
}

#[test]
fn random_json_stays_valid_and_loses_vaulted_secrets() {
    let e = engine();
    let mut r = Rng::new(7);
    for _ in 0..10_000 {
        let mut obj = serde_json::Map::new();
        for _ in 0..r.range(0, 6) {
            let key = String::from_utf8_lossy(&random_value(&mut r)).into_owned();
            let val = String::from_utf8_lossy(&random_value(&mut r)).into_owned();
            let v = match r.below(4) {
                0 => serde_json::Value::String(val),
                1 => serde_json::json!([val, r.next_u64() >> 12, null, true]),
                2 => serde_json::json!({ "ssn": val, "n": r.next_u64() >> 11 }),
                _ => serde_json::json!(r.next_u64() % 10_000_000_000_000_000),
            };
            obj.insert(key, v);
        }
        let doc = serde_json::to_vec(&serde_json::Value::Object(obj)).unwrap();
        let mut c = Counts::new();
        let out = e.mask_json(&doc, &mut c).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(!parsed.to_string().contains("Vault-S3cret!"));
    }
}

fn timed(e: &Engine, v: &[u8]) -> Duration {
    let t = Instant::now();
    let mut c = Counts::new();
    let _ = e.mask(None, v, &mut c).unwrap();
    let _ = e.find(ColumnPlan::default(), v);
    t.elapsed()
}

#[test]
fn pathological_inputs_take_linear_time() {
    let e = engine();
    for unit in [
        "1 ",
        "1-",
        "1.",
        "+1 ",
        "0 1",
        "a_",
        "sk-",
        "eyJ.",
        "eyJ",
        "a@",
        "@a.",
        "::",
        "a:",
        "f:",
        "password=",
        "\"password\":",
        "-----BEGIN PRIVATE KEY-----",
        "http://a:",
        "Bearer ",
        "4111 ",
        "DE89 ",
        "AKIA",
        "1.1.1.",
        "(415) ",
        "ghp_",
        "xoxb-1",
        "'",
        "Basic ",
        "a.",
    ] {
        // Eight times the input must cost about eight times as much, not sixty-four (the bound
        // is loose because the machine is shared).
        let small = unit.repeat(16 * 1024 / unit.len());
        let large = unit.repeat(128 * 1024 / unit.len());
        // Three tries: a quadratic scan fails all of them, a busy neighbour not.
        let mut seen = Vec::new();
        let linear = (0..3).any(|_| {
            let (ts, tl) = (
                min_of_5(&e, small.as_bytes()),
                min_of_5(&e, large.as_bytes()),
            );
            seen.push((ts, tl));
            tl < ts * 24 + Duration::from_millis(5)
        });
        assert!(linear, "{unit:?}: (16 KiB, 128 KiB) {seen:?}");
    }
}

fn min_of_5(e: &Engine, v: &[u8]) -> Duration {
    (0..5).map(|_| timed(e, v)).min().unwrap_or_default()
}
