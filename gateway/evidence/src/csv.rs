//! CSV (RFC 4180) with spreadsheet formula-injection neutralised.

/// Quotes a field per RFC 4180 (always quoted: commas, quotes, CR/LF are safe) and, when the
/// value begins with `=`, `+`, `-`, `@`, TAB or CR, prefixes a `'` so spreadsheet programs
/// show it as text instead of evaluating it (OWASP "CSV injection").
pub fn field(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    out.push('"');
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        out.push('\'');
    }
    for ch in value.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// One CSV line (fields joined by commas, CRLF-terminated as RFC 4180 says).
pub fn line<'a>(fields: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = fields.into_iter().map(field).collect::<Vec<_>>().join(",");
    out.push_str("\r\n");
    out
}

/// Parses RFC 4180 text into rows (for round-trip checks and auditors' tooling). Returns
/// `None` on malformed quoting. The formula-guard `'` is left in place.
pub fn parse(text: &str) -> Option<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    let mut in_quotes = false;
    let mut field_started = false;
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                cur.push(c);
            }
            continue;
        }
        match c {
            '"' if !field_started => {
                in_quotes = true;
                field_started = true;
            }
            ',' => {
                row.push(std::mem::take(&mut cur));
                field_started = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {
                chars.next();
                row.push(std::mem::take(&mut cur));
                rows.push(std::mem::take(&mut row));
                field_started = false;
            }
            '"' => return None,
            other => {
                cur.push(other);
                field_started = true;
            }
        }
    }
    if in_quotes {
        return None;
    }
    if field_started || !row.is_empty() {
        row.push(cur);
        rows.push(row);
    }
    Some(rows)
}

/// Removes the formula guard added by [`field`] (for round-trip checks).
pub fn unguard(value: &str) -> &str {
    match value.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '+', '-', '@', '\t', '\r']) => rest,
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quoting_and_formula_guard() {
        assert_eq!(field("plain"), "\"plain\"");
        assert_eq!(field("a\"b,c\r\nd"), "\"a\"\"b,c\r\nd\"");
        for bad in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            let f = field(bad);
            assert!(f.starts_with("\"'"), "{bad:?} -> {f:?}");
        }
        let text = line(["=HYPERLINK(\"x\")", "ok", "", "multi\r\nline"]);
        let rows = parse(&text).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0][0], "'=HYPERLINK(\"x\")");
        assert_eq!(unguard(&rows[0][0]), "=HYPERLINK(\"x\")");
        assert_eq!(rows[0][1..], ["ok", "", "multi\r\nline"]);
        assert!(parse("\"unterminated").is_none());
        assert_eq!(unguard("'plain"), "'plain");
    }
}
