//! Masking inside a JSON document without re-serialising it: the document is walked once,
//! every string value (and number) is unescaped and masked with the plan of its field name,
//! and only changed scalars are rewritten; everything else is copied byte for byte.
//!
//! Rules: a field rule matching a member name masks every scalar below that member (objects
//! and arrays included). Object keys are scanned by the detectors (an e-mail used as a key is
//! masked) but never by rules. A masked number becomes a JSON string. `true`, `false`, `null`
//! are left as they are. Malformed JSON, invalid UTF-8, lone surrogates and nesting deeper than
//! [`MAX_DEPTH`] are errors.

use std::borrow::Cow;

use crate::engine::{ColumnPlan, Engine};
use crate::entity::Counts;
use crate::error::MaskError;

/// Deepest nesting accepted (serde_json's default recursion limit is also 128).
pub const MAX_DEPTH: usize = 128;

pub(crate) fn mask_document<'a>(
    engine: &Engine,
    plan: ColumnPlan,
    doc: &'a [u8],
    counts: &mut Counts,
) -> Result<Cow<'a, [u8]>, MaskError> {
    if let Err(e) = std::str::from_utf8(doc) {
        return Err(err(e.valid_up_to(), "invalid UTF-8"));
    }
    let mut w = Walker {
        engine,
        doc,
        pos: 0,
        out: Vec::new(),
        copied: 0,
        counts,
    };
    w.ws();
    w.value(plan, 0)?;
    w.ws();
    if w.pos != doc.len() {
        return Err(err(w.pos, "trailing characters after the document"));
    }
    if w.copied == 0 && w.out.is_empty() {
        return Ok(Cow::Borrowed(doc));
    }
    let mut out = w.out;
    out.extend_from_slice(&doc[w.copied..]);
    Ok(Cow::Owned(out))
}

fn err(offset: usize, reason: &'static str) -> MaskError {
    MaskError::Json { offset, reason }
}

struct Walker<'d, 'e, 'c> {
    engine: &'e Engine,
    doc: &'d [u8],
    pos: usize,
    out: Vec<u8>,
    copied: usize,
    counts: &'c mut Counts,
}

impl<'d> Walker<'d, '_, '_> {
    fn peek(&self) -> u8 {
        self.doc.get(self.pos).copied().unwrap_or(0)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8, reason: &'static str) -> Result<(), MaskError> {
        if self.peek() != b {
            return Err(err(self.pos, reason));
        }
        self.pos += 1;
        Ok(())
    }

    fn replace(&mut self, start: usize, end: usize, text: &[u8]) {
        self.out.extend_from_slice(&self.doc[self.copied..start]);
        self.out.extend_from_slice(text);
        self.copied = end;
    }

    fn value(&mut self, plan: ColumnPlan, depth: usize) -> Result<(), MaskError> {
        if depth >= MAX_DEPTH {
            return Err(MaskError::JsonTooDeep { limit: MAX_DEPTH });
        }
        match self.peek() {
            b'{' => self.object(plan, depth),
            b'[' => self.array(plan, depth),
            b'"' => {
                let (start, content) = self.string()?;
                self.mask_scalar(plan, start, &content)
            }
            b'-' | b'0'..=b'9' => {
                let start = self.pos;
                self.number()?;
                let text = &self.doc[start..self.pos];
                self.mask_scalar(plan, start, text)
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => Err(err(self.pos, "expected a value")),
        }
    }

    fn mask_scalar(
        &mut self,
        plan: ColumnPlan,
        start: usize,
        content: &[u8],
    ) -> Result<(), MaskError> {
        let end = self.pos;
        if let Cow::Owned(masked) = self.engine.mask_planned(plan, content, self.counts)? {
            let encoded = encode_string(&masked);
            self.replace(start, end, &encoded);
        }
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), MaskError> {
        if !self.doc[self.pos..].starts_with(word) {
            return Err(err(self.pos, "invalid literal"));
        }
        self.pos += word.len();
        Ok(())
    }

    fn object(&mut self, plan: ColumnPlan, depth: usize) -> Result<(), MaskError> {
        self.pos += 1;
        self.ws();
        if self.peek() == b'}' {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.peek() != b'"' {
                return Err(err(self.pos, "expected a member name"));
            }
            let (kstart, key) = self.string()?;
            // Keys are data too: detectors only, never rules.
            self.mask_scalar(ColumnPlan::default(), kstart, &key)?;
            let member_plan = if plan.masks_whole_value() {
                plan
            } else {
                // `key` came from a validated UTF-8 document and valid escapes.
                let name = String::from_utf8_lossy(&key);
                self.engine.plan(Some(&name))
            };
            self.ws();
            self.expect(b':', "expected ':'")?;
            self.ws();
            self.value(member_plan, depth + 1)?;
            self.ws();
            match self.peek() {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(err(self.pos, "expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, plan: ColumnPlan, depth: usize) -> Result<(), MaskError> {
        self.pos += 1;
        self.ws();
        if self.peek() == b']' {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.value(plan, depth + 1)?;
            self.ws();
            match self.peek() {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(err(self.pos, "expected ',' or ']'")),
            }
        }
    }

    fn number(&mut self) -> Result<(), MaskError> {
        let start = self.pos;
        if self.peek() == b'-' {
            self.pos += 1;
        }
        match self.peek() {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return Err(err(start, "invalid number")),
        }
        if self.peek() == b'.' {
            self.pos += 1;
            if !self.peek().is_ascii_digit() {
                return Err(err(self.pos, "invalid number"));
            }
            self.digits();
        }
        if matches!(self.peek(), b'e' | b'E') {
            self.pos += 1;
            if matches!(self.peek(), b'+' | b'-') {
                self.pos += 1;
            }
            if !self.peek().is_ascii_digit() {
                return Err(err(self.pos, "invalid number"));
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_ascii_digit() {
            self.pos += 1;
        }
    }

    /// A string starting at `self.pos`: returns its start offset and unescaped content.
    fn string(&mut self) -> Result<(usize, Cow<'d, [u8]>), MaskError> {
        let start = self.pos;
        self.pos += 1;
        let body = self.pos;
        let doc = self.doc;
        let mut escaped = false;
        loop {
            match doc.get(self.pos) {
                None => return Err(err(start, "unterminated string")),
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    self.pos += 2;
                }
                Some(&c) if c < 0x20 => return Err(err(self.pos, "control character in string")),
                Some(_) => self.pos += 1,
            }
        }
        if self.pos >= doc.len() {
            return Err(err(start, "unterminated string"));
        }
        let raw = &doc[body..self.pos];
        self.pos += 1;
        if !escaped {
            return Ok((start, Cow::Borrowed(raw)));
        }
        unescape(raw, body).map(|v| (start, Cow::Owned(v)))
    }
}

fn hex4(raw: &[u8], i: usize, base: usize) -> Result<u32, MaskError> {
    let h = raw
        .get(i..i + 4)
        .ok_or_else(|| err(base + i, "short \\u escape"))?;
    let mut v = 0u32;
    for &c in h {
        let d = (c as char)
            .to_digit(16)
            .ok_or_else(|| err(base + i, "bad \\u escape"))?;
        v = v * 16 + d;
    }
    Ok(v)
}

fn unescape(raw: &[u8], base: usize) -> Result<Vec<u8>, MaskError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = raw.get(i + 1).copied().unwrap_or(0);
        i += 2;
        let simple = match e {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'u' => None,
            _ => return Err(err(base + i - 2, "bad escape")),
        };
        if let Some(b) = simple {
            out.push(b);
            continue;
        }
        let hi = hex4(raw, i, base)?;
        i += 4;
        let code = if (0xD800..0xDC00).contains(&hi) {
            if raw.get(i) != Some(&b'\\') || raw.get(i + 1) != Some(&b'u') {
                return Err(err(base + i, "lone surrogate"));
            }
            let lo = hex4(raw, i + 2, base)?;
            if !(0xDC00..0xE000).contains(&lo) {
                return Err(err(base + i, "lone surrogate"));
            }
            i += 6;
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        } else {
            hi
        };
        let ch = char::from_u32(code).ok_or_else(|| err(base + i, "lone surrogate"))?;
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    Ok(out)
}

/// A JSON string literal for `v` (masked output: UTF-8 where the input was).
fn encode_string(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() + 2);
    out.push(b'"');
    for &c in v {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            c if c < 0x20 || c == 0x7f => {
                out.extend_from_slice(format!("\\u{c:04x}").as_bytes());
            }
            c => out.push(c),
        }
    }
    out.push(b'"');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::config::{ColumnRule, MaskingConfig, Strategy};
    use crate::entity::{Counts, Entity};
    use crate::error::MaskError;
    use crate::Engine;
    use std::borrow::Cow;

    fn engine() -> Engine {
        let mut cfg = MaskingConfig::default();
        cfg.rules.push(ColumnRule {
            name: "pii".into(),
            columns: vec!["ssn".into(), "*card*".into()],
            strategy: Strategy::Redact {
                replacement: Some("****".into()),
            },
        });
        Engine::new(&cfg, &[b"vault-Secret-1"], [1; 32]).unwrap()
    }

    fn mask(doc: &str) -> (String, Counts) {
        let mut c = Counts::new();
        let out = engine().mask_json(doc.as_bytes(), &mut c).unwrap();
        let s = String::from_utf8(out.into_owned()).unwrap();
        serde_json::from_str::<serde_json::Value>(&s).unwrap();
        (s, c)
    }

    #[test]
    fn clean_document_is_borrowed() {
        let doc = br#"{"id": 7, "name": "Alice", "tags": ["a", "b"], "ok": true, "x": null}"#;
        let mut c = Counts::new();
        assert!(matches!(
            engine().mask_json(doc, &mut c).unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn masks_values_by_detector_and_by_field_rule() {
        let (s, c) = mask(
            r#"{"email":"bob@example.com","ssn":"n/a","creditCard":{"no":"x","exp":[12,2030]},"note":"call +1 415 555 0132","n":4111111111111111}"#,
        );
        assert_eq!(
            s,
            r#"{"email":"[REDACTED:EMAIL]","ssn":"****","creditCard":{"no":"****","exp":["****","****"]},"note":"call [REDACTED:PHONE]","n":"[REDACTED:CARD]"}"#
        );
        assert_eq!(c.rule("pii"), 4);
        assert_eq!(c.get(Entity::Card), 1);
    }

    #[test]
    fn escapes_cannot_hide_values() {
        // bob\u0040example.com is bob@example.com; the vaulted secret is split by an escape.
        let (s, c) = mask(r#"["bob\u0040example.com", "vault-\u0053ecret-1", "a\"b"]"#);
        assert_eq!(
            s,
            r#"["[REDACTED:EMAIL]", "[REDACTED:VAULTED_SECRET]", "a\"b"]"#
        );
        assert_eq!(c.vaulted_hits(), 1);
    }

    #[test]
    fn keys_are_scanned_by_detectors() {
        let (s, _) = mask(r#"{"bob@example.com": 1}"#);
        assert_eq!(s, r#"{"[REDACTED:EMAIL]": 1}"#);
    }

    #[test]
    fn column_rule_on_the_document() {
        let mut c = Counts::new();
        let out = engine()
            .mask_json_in(
                Some("card_data"),
                br#"{"a":"x","b":[1,"y"],"c":null}"#,
                &mut c,
            )
            .unwrap();
        assert_eq!(&*out, br#"{"a":"****","b":["****","****"],"c":null}"#);
    }

    #[test]
    fn malformed_documents_fail_closed() {
        let e = engine();
        for bad in [
            &b""[..],
            b"{",
            b"{\"a\" 1}",
            b"[1,]",
            b"\"abc",
            b"{\"a\":1} x",
            b"\"\\x\"",
            b"\"\\ud800\"",
            b"\"\\ud800\\u0041\"",
            b"01",
            b"-",
            b"1.",
            b"tru",
            b"\"a\nb\"",
            b"\"\xff\"",
            b"{\"a\":\"4111111111111111\"",
        ] {
            let mut c = Counts::new();
            assert!(
                matches!(e.mask_json(bad, &mut c), Err(MaskError::Json { .. })),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        let mut c = Counts::new();
        assert_eq!(
            e.mask_json(deep.as_bytes(), &mut c),
            Err(MaskError::JsonTooDeep { limit: 128 })
        );
    }
}
