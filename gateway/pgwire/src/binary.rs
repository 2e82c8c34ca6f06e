//! Binary-format result values, walked for masking.
//!
//! A client may ask for any result column in binary format (a `Bind` result format code of 1,
//! a `BINARY CURSOR`). Text hides in those values at places only the type's send function
//! knows: the elements of a `text[]`, the fields of a `record`, a `jsonb` after its version
//! byte. [`rewrite`] walks a binary value by its type OID and hands every piece of text in it
//! to a visitor, rebuilding the value (lengths included) when the visitor replaced a piece.
//!
//! Types whose binary form is not text (numbers, network addresses, UUIDs) are rendered as
//! PostgreSQL would print them and shown to the visitor too: a card number stored as `int8`
//! or a client address as `inet` must be found in binary as it is in text. Such a value cannot
//! hold a replacement, so a visitor that replaces one makes the walk fail with
//! [`BinaryError::NotRepresentable`]. A type the walker does not know — a domain or enum
//! inside an array or record, an extension type, a named composite — fails with
//! [`BinaryError::UnknownType`]: the caller refuses the value rather than pass it unseen.
//!
//! Pure and panic-free on any input; nesting is bounded by [`MAX_DEPTH`].

use std::fmt::Write as _;

/// Deepest nesting of arrays and records walked.
pub const MAX_DEPTH: usize = 16;

/// Called with each piece of text in a value and the type it belongs to (for a rendered
/// number or address: that type); `Some(bytes)` replaces it.
pub type Visitor<'a, E> = dyn FnMut(u32, &[u8]) -> Result<Option<Vec<u8>>, E> + 'a;

/// Why a binary value could not be walked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BinaryError<E> {
    /// The type (OID) has no binary layout known to Gatehouse.
    #[error("binary values of type oid {0} cannot be inspected")]
    UnknownType(u32),
    /// The bytes do not have the type's layout.
    #[error("malformed binary value of type oid {0}")]
    Malformed(u32),
    /// A value of a non-text type matched a masking rule; it cannot hold a replacement.
    #[error("a binary value of type {0} matched a masking rule and cannot hold a replacement")]
    NotRepresentable(&'static str),
    /// Arrays or records nested deeper than [`MAX_DEPTH`].
    #[error("binary value nested too deeply")]
    TooDeep,
    /// The visitor failed.
    #[error("{0}")]
    Visitor(E),
}

/// How the walker treats a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// The binary form is the text (or raw bytes) itself.
    Text,
    /// A version byte (1), then the text (`jsonb`, `jsonpath`).
    VersionedText,
    /// Rendered and shown to the visitor; cannot hold a replacement.
    Rendered(Render),
    /// Cannot hold text of any kind (booleans, dates and times).
    Opaque,
    /// `array_send` layout; the element type is in the header.
    Array,
    /// `record_send` layout; each field carries its type.
    Record,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Render {
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    Money,
    Inet,
    Uuid,
}

fn layout(oid: u32) -> Option<Layout> {
    use Layout::*;
    Some(match oid {
        // text, varchar, bpchar, name, json, xml, unknown, "char", bytea, regtype-like names
        // are not included: reg* types are sent as OIDs (below).
        25 | 1043 | 1042 | 19 | 114 | 142 | 705 | 18 | 17 => Text,
        3802 | 4072 => VersionedText,
        21 => Rendered(Render::Int2),
        23 => Rendered(Render::Int4),
        20 => Rendered(Render::Int8),
        // oid, xid, cid, regproc, regprocedure, regoper, regoperator, regclass, regtype,
        // regconfig, regdictionary, regnamespace, regrole, regcollation: 4-byte unsigned.
        26 | 28 | 29 | 24 | 2202 | 2203 | 2204 | 2205 | 2206 | 3734 | 3769 | 4089 | 4096 | 4191 => {
            Rendered(Render::Oid)
        }
        700 => Rendered(Render::Float4),
        701 => Rendered(Render::Float8),
        1700 => Rendered(Render::Numeric),
        790 => Rendered(Render::Money),
        869 | 650 => Rendered(Render::Inet),
        2950 => Rendered(Render::Uuid),
        // bool, date, time, timestamp, timestamptz, interval, timetz, void
        16 | 1082 | 1083 | 1114 | 1184 | 1186 | 1266 | 2278 => Opaque,
        2249 => Record,
        // Arrays of the types above (and of record).
        1009 | 1015 | 1014 | 1003 | 199 | 143 | 1002 | 1001 | 3807 | 4073 | 1005 | 1007 | 1016
        | 1028 | 1011 | 1012 | 1010 | 1008 | 2207 | 2208 | 2209 | 2210 | 2211 | 3735 | 3770
        | 4090 | 4097 | 4192 | 1021 | 1022 | 1231 | 791 | 1041 | 651 | 2951 | 1000 | 1182
        | 1183 | 1115 | 1185 | 1187 | 1270 | 2287 => Array,
        _ => return None,
    })
}

fn render_name(r: Render) -> &'static str {
    match r {
        Render::Int2 => "int2",
        Render::Int4 => "int4",
        Render::Int8 => "int8",
        Render::Oid => "oid",
        Render::Float4 => "float4",
        Render::Float8 => "float8",
        Render::Numeric => "numeric",
        Render::Money => "money",
        Render::Inet => "inet",
        Render::Uuid => "uuid",
    }
}

/// `json` and `jsonb`: documents whose field names are column names for masking rules.
pub fn is_json_type(oid: u32) -> bool {
    matches!(oid, 114 | 3802)
}

/// Whether values of type `oid` are text in binary format too (and can hold a replacement).
pub fn is_text_type(oid: u32) -> bool {
    matches!(layout(oid), Some(Layout::Text | Layout::VersionedText))
}

/// Whether [`rewrite`] can walk values of type `oid` at the top level (nested types are
/// checked as they are met).
pub fn binary_type_known(oid: u32) -> bool {
    layout(oid).is_some()
}

/// Walks the binary value `v` of type `oid`, calling `visit` on every piece of text in it
/// (and on the text rendering of numbers and addresses). `Ok(None)`: nothing was replaced;
/// `Ok(Some(bytes))`: the value rebuilt with the replacements.
pub fn rewrite<E>(
    oid: u32,
    v: &[u8],
    visit: &mut Visitor<'_, E>,
) -> Result<Option<Vec<u8>>, BinaryError<E>> {
    walk(oid, v, visit, 0)
}

fn walk<E>(
    oid: u32,
    v: &[u8],
    visit: &mut Visitor<'_, E>,
    depth: usize,
) -> Result<Option<Vec<u8>>, BinaryError<E>> {
    if depth > MAX_DEPTH {
        return Err(BinaryError::TooDeep);
    }
    let Some(l) = layout(oid) else {
        return Err(BinaryError::UnknownType(oid));
    };
    match l {
        Layout::Text => visit(oid, v).map_err(BinaryError::Visitor),
        Layout::VersionedText => {
            let Some((&ver, text)) = v.split_first() else {
                return Err(BinaryError::Malformed(oid));
            };
            if ver != 1 {
                return Err(BinaryError::Malformed(oid));
            }
            Ok(visit(oid, text).map_err(BinaryError::Visitor)?.map(|t| {
                let mut o = Vec::with_capacity(t.len() + 1);
                o.push(ver);
                o.extend_from_slice(&t);
                o
            }))
        }
        Layout::Opaque => Ok(None),
        Layout::Rendered(r) => {
            let text = render(r, v).ok_or(BinaryError::Malformed(oid))?;
            match visit(oid, text.as_bytes()).map_err(BinaryError::Visitor)? {
                None => Ok(None),
                Some(_) => Err(BinaryError::NotRepresentable(render_name(r))),
            }
        }
        Layout::Array => array(oid, v, visit, depth),
        Layout::Record => record(oid, v, visit, depth),
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    /// One length-prefixed element: `None` inside for NULL.
    fn element(&mut self) -> Option<Option<&'a [u8]>> {
        match self.i32()? {
            -1 => Some(None),
            n if n < 0 => None,
            n => Some(Some(self.take(n as usize)?)),
        }
    }
}

/// Rebuilds `v` from `starts` (offsets of length prefixes) when any element was replaced.
fn rebuild(v: &[u8], replaced: Vec<(usize, usize, Vec<u8>)>) -> Vec<u8> {
    // (offset of the length prefix, old element length, new bytes)
    let mut out = Vec::with_capacity(v.len() + 64);
    let mut at = 0usize;
    for (prefix, old_len, new) in replaced {
        out.extend_from_slice(&v[at..prefix]);
        out.extend_from_slice(&(new.len() as i32).to_be_bytes());
        out.extend_from_slice(&new);
        at = prefix + 4 + old_len;
    }
    out.extend_from_slice(&v[at..]);
    out
}

fn array<E>(
    oid: u32,
    v: &[u8],
    visit: &mut Visitor<'_, E>,
    depth: usize,
) -> Result<Option<Vec<u8>>, BinaryError<E>> {
    let bad = || BinaryError::Malformed(oid);
    let mut c = Cursor { buf: v, pos: 0 };
    let ndim = c.i32().ok_or_else(bad)?;
    let _flags = c.i32().ok_or_else(bad)?;
    let elem = c.i32().ok_or_else(bad)? as u32;
    if !(0..=6).contains(&ndim) {
        return Err(bad());
    }
    let mut count: usize = if ndim == 0 { 0 } else { 1 };
    for _ in 0..ndim {
        let dim = c.i32().ok_or_else(bad)?;
        let _lbound = c.i32().ok_or_else(bad)?;
        if dim < 0 {
            return Err(bad());
        }
        count = count.checked_mul(dim as usize).ok_or_else(bad)?;
    }
    // Every element needs at least its 4-byte length: bounds the loop by the input.
    if count > (v.len() - c.pos) / 4 {
        return Err(bad());
    }
    elements(oid, c, count, |_| Some(elem), visit, depth)
}

fn record<E>(
    oid: u32,
    v: &[u8],
    visit: &mut Visitor<'_, E>,
    depth: usize,
) -> Result<Option<Vec<u8>>, BinaryError<E>> {
    let bad = || BinaryError::Malformed(oid);
    let mut c = Cursor { buf: v, pos: 0 };
    let n = c.i32().ok_or_else(bad)?;
    if n < 0 || n as usize > (v.len() - c.pos) / 8 {
        return Err(bad());
    }
    // Each field: its type OID, then the length-prefixed value.
    elements(
        oid,
        c,
        n as usize,
        |c| c.i32().map(|o| o as u32),
        visit,
        depth,
    )
}

/// The `count` length-prefixed elements from `c` to the end of the value, each of the type
/// `type_of` reads (or knows), walked and rebuilt when any was replaced.
fn elements<'a, E>(
    oid: u32,
    mut c: Cursor<'a>,
    count: usize,
    mut type_of: impl FnMut(&mut Cursor<'a>) -> Option<u32>,
    visit: &mut Visitor<'_, E>,
    depth: usize,
) -> Result<Option<Vec<u8>>, BinaryError<E>> {
    let bad = || BinaryError::Malformed(oid);
    let v = c.buf;
    let mut replaced = Vec::new();
    for _ in 0..count {
        let elem = type_of(&mut c).ok_or_else(bad)?;
        let prefix = c.pos;
        let Some(e) = c.element().ok_or_else(bad)? else {
            continue;
        };
        if let Some(new) = walk(elem, e, visit, depth + 1)? {
            replaced.push((prefix, e.len(), new));
        }
    }
    if c.pos != v.len() {
        return Err(bad());
    }
    Ok((!replaced.is_empty()).then(|| rebuild(v, replaced)))
}

fn render(r: Render, v: &[u8]) -> Option<String> {
    let arr = |n: usize| -> Option<&[u8]> { (v.len() == n).then_some(v) };
    Some(match r {
        Render::Int2 => i16::from_be_bytes(arr(2)?.try_into().ok()?).to_string(),
        Render::Int4 => i32::from_be_bytes(arr(4)?.try_into().ok()?).to_string(),
        Render::Int8 => i64::from_be_bytes(arr(8)?.try_into().ok()?).to_string(),
        Render::Oid => u32::from_be_bytes(arr(4)?.try_into().ok()?).to_string(),
        Render::Float4 => f32::from_be_bytes(arr(4)?.try_into().ok()?).to_string(),
        Render::Float8 => f64::from_be_bytes(arr(8)?.try_into().ok()?).to_string(),
        Render::Money => {
            // Cents in an int8; the text adds a currency symbol and separators, but the digits
            // are what a detector reads.
            let c = i64::from_be_bytes(arr(8)?.try_into().ok()?);
            format!("{}.{:02}", c / 100, (c % 100).abs())
        }
        Render::Numeric => numeric(v)?,
        Render::Inet => inet(v)?,
        Render::Uuid => {
            let b = arr(16)?;
            let h = |r: std::ops::Range<usize>| {
                b[r].iter().fold(String::new(), |mut s, x| {
                    let _ = write!(s, "{x:02x}");
                    s
                })
            };
            format!(
                "{}-{}-{}-{}-{}",
                h(0..4),
                h(4..6),
                h(6..8),
                h(8..10),
                h(10..16)
            )
        }
    })
}

/// `numeric_send`: ndigits, weight, sign, dscale, then base-10000 digits.
fn numeric(v: &[u8]) -> Option<String> {
    let mut c = Cursor { buf: v, pos: 0 };
    let i16_ = |c: &mut Cursor<'_>| -> Option<i16> {
        Some(i16::from_be_bytes(c.take(2)?.try_into().ok()?))
    };
    let ndigits = i16_(&mut c)?;
    let weight = i16_(&mut c)? as i32;
    let sign = i16_(&mut c)? as u16;
    let dscale = i16_(&mut c)?;
    if ndigits < 0 || dscale < 0 || v.len() != 8 + 2 * ndigits as usize {
        return None;
    }
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    let mut digits = Vec::with_capacity(ndigits as usize);
    for _ in 0..ndigits {
        let d = i16_(&mut c)?;
        if !(0..10000).contains(&d) {
            return None;
        }
        digits.push(d);
    }
    let digit = |i: i32| -> i16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                let _ = write!(s, "{}", digit(i));
            } else {
                let _ = write!(s, "{:04}", digit(i));
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let mut frac = String::new();
        let mut i = weight + 1;
        while frac.len() < dscale as usize {
            let _ = write!(frac, "{:04}", digit(i));
            i += 1;
        }
        frac.truncate(dscale as usize);
        s.push_str(&frac);
    }
    Some(s)
}

/// `inet_send`: family (2 = IPv4, 3 = IPv6), bits, is_cidr, address length, address.
fn inet(v: &[u8]) -> Option<String> {
    let (&family, rest) = v.split_first()?;
    let (&bits, rest) = rest.split_first()?;
    let (_, rest) = rest.split_first()?;
    let (&nb, addr) = rest.split_first()?;
    if addr.len() != nb as usize {
        return None;
    }
    let ip: std::net::IpAddr = match (family, addr.len()) {
        (2, 4) => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(addr).ok()?).into(),
        (3, 16) => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(addr).ok()?).into(),
        _ => return None,
    };
    let full = if ip.is_ipv4() { 32 } else { 128 };
    Some(if bits == full {
        ip.to_string()
    } else {
        format!("{ip}/{bits}")
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn text_array(elem: u32, items: &[Option<&[u8]>]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&1i32.to_be_bytes());
        v.extend_from_slice(&(items.iter().any(Option::is_none) as i32).to_be_bytes());
        v.extend_from_slice(&(elem as i32).to_be_bytes());
        v.extend_from_slice(&(items.len() as i32).to_be_bytes());
        v.extend_from_slice(&1i32.to_be_bytes());
        for i in items {
            match i {
                Some(b) => {
                    v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    v.extend_from_slice(b);
                }
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        v
    }

    /// Replaces "SECRET" by "[x]".
    fn redact(_oid: u32, t: &[u8]) -> Result<Option<Vec<u8>>, ()> {
        let s = String::from_utf8_lossy(t);
        Ok(s.contains("SECRET")
            .then(|| s.replace("SECRET", "[x]").into_bytes()))
    }

    #[test]
    fn text_array_elements_are_visited_and_lengths_rewritten() {
        let v = text_array(25, &[Some(b"a"), None, Some(b"my SECRET here")]);
        let out = rewrite(1009, &v, &mut redact).unwrap().unwrap();
        assert_eq!(
            out,
            text_array(25, &[Some(b"a"), None, Some(b"my [x] here")])
        );
        let clean = text_array(25, &[Some(b"a")]);
        assert_eq!(rewrite(1009, &clean, &mut redact).unwrap(), None);
    }

    #[test]
    fn records_nest_arrays() {
        let inner = text_array(25, &[Some(b"SECRET")]);
        let mut rec = Vec::new();
        rec.extend_from_slice(&2i32.to_be_bytes());
        rec.extend_from_slice(&23i32.to_be_bytes());
        rec.extend_from_slice(&4i32.to_be_bytes());
        rec.extend_from_slice(&7i32.to_be_bytes());
        rec.extend_from_slice(&1009i32.to_be_bytes());
        rec.extend_from_slice(&(inner.len() as i32).to_be_bytes());
        rec.extend_from_slice(&inner);
        let out = rewrite(2249, &rec, &mut redact).unwrap().unwrap();
        assert!(out.windows(3).any(|w| w == b"[x]"));
        assert!(!out.windows(6).any(|w| w == b"SECRET"));
    }

    #[test]
    fn unknown_types_inside_arrays_are_refused() {
        let v = text_array(16_400, &[Some(b"SECRET")]);
        assert_eq!(
            rewrite(1009, &v, &mut redact),
            Err(BinaryError::UnknownType(16_400))
        );
        assert_eq!(
            rewrite(16_401, b"x", &mut redact),
            Err(BinaryError::UnknownType(16_401))
        );
    }

    #[test]
    fn numbers_are_rendered_and_cannot_hold_a_replacement() {
        let mut seen = Vec::new();
        let mut look = |_oid: u32, t: &[u8]| -> Result<Option<Vec<u8>>, ()> {
            seen.push(String::from_utf8_lossy(t).into_owned());
            Ok(t.starts_with(b"4111").then(Vec::new))
        };
        assert_eq!(
            rewrite(20, &4111111111111111i64.to_be_bytes(), &mut look),
            Err(BinaryError::NotRepresentable("int8"))
        );
        // numeric 12345678.5 = digits [1234, 5678, 5000], weight 1, dscale 1
        let mut n = Vec::new();
        for x in [3i16, 1, 0, 1, 1234, 5678, 5000] {
            n.extend_from_slice(&x.to_be_bytes());
        }
        assert_eq!(rewrite(1700, &n, &mut look), Ok(None));
        let inet = [2u8, 32, 0, 4, 10, 1, 2, 3];
        assert_eq!(rewrite(869, &inet, &mut look), Ok(None));
        assert_eq!(seen, vec!["4111111111111111", "12345678.5", "10.1.2.3"]);
    }

    #[test]
    fn malformed_and_hostile_headers_fail_cleanly() {
        let mut huge = Vec::new();
        for x in [1i32, 0, 25, i32::MAX, 1] {
            huge.extend_from_slice(&x.to_be_bytes());
        }
        assert_eq!(
            rewrite(1009, &huge, &mut redact),
            Err(BinaryError::Malformed(1009))
        );
        assert_eq!(
            rewrite(3802, b"", &mut redact),
            Err(BinaryError::Malformed(3802))
        );
        assert_eq!(
            rewrite(23, b"\0\0", &mut redact),
            Err(BinaryError::Malformed(23))
        );
        // Arrays of arrays of records ... deeper than MAX_DEPTH
        let mut v = text_array(25, &[Some(b"x")]);
        for _ in 0..20 {
            v = text_array(1009, &[Some(&v)]);
        }
        assert!(rewrite(1009, &v, &mut redact).is_err());
    }
}
