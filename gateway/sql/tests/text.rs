//! The statement as the server reads it: client_encoding, server_encoding and
//! standard_conforming_strings. Each case is bytes + settings → the kinds of the statements the
//! server would run, or the error class.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_sql::{
    classify_bytes, classify_with, decode_statement, depends_on_settings, ClassifyError, Encoding,
    ParseOptions, StatementKind, TextError, TextSettings, ALL_ENCODINGS,
};

fn settings(client: &str, server: &str, scs: bool) -> TextSettings {
    TextSettings {
        standard_conforming_strings: scs,
        client_encoding: Encoding::from_pg_name(client).expect(client),
        server_encoding: Encoding::from_pg_name(server).expect(server),
    }
}

/// `select,delete` for two statements; `text:<sqlstate>` for a decoding refusal; `parse` for a
/// parser refusal.
fn render(bytes: &[u8], s: &TextSettings) -> String {
    match classify_bytes(bytes, s) {
        Ok((_, stmts)) => stmts
            .iter()
            .map(|s| s.kind.name())
            .collect::<Vec<_>>()
            .join(","),
        Err(ClassifyError::Text(e)) => format!("text:{}", e.sqlstate()),
        Err(ClassifyError::Parse(_)) => "parse".into(),
        Err(e) => format!("other: {e}"),
    }
}

/// `SELECT E'<prefix><char>'; DELETE FROM t; --'` where `<char>` is a two-byte character whose
/// second byte is 0x5c (`\`).
fn backslash_attack(ch: &[u8]) -> Vec<u8> {
    let mut q = b"SELECT E'".to_vec();
    q.extend_from_slice(ch);
    q.extend_from_slice(b"'; DELETE FROM t; --'");
    q
}

#[test]
fn multibyte_characters_ending_in_backslash_split_the_statement() {
    // (client encoding, characters of it, the last ending in 0x5c)
    let cases: &[(&str, &[u8])] = &[
        // The issue's bytes: UTF-8 "中" + "\", GBK two characters.
        ("GBK", &[0xe4, 0xb8, 0xad, 0x5c]),
        ("GBK", &[0x81, 0x5c]),
        ("SJIS", &[0x95, 0x5c]),
        ("Shift_JIS", &[0x83, 0x5c]),
        ("BIG5", &[0xa5, 0x5c]),
        ("GB18030", &[0x81, 0x5c]),
        ("GB18030", &[0xe4, 0xb8, 0xad, 0x5c]),
    ];
    for &(client, ch) in cases {
        let q = backslash_attack(ch);
        for scs in [true, false] {
            assert_eq!(
                render(&q, &settings(client, "UTF8", scs)),
                "select,delete",
                "{client} scs={scs}: the server reads a closed string, then DELETE"
            );
        }
    }
    // The bytes that are valid UTF-8 ("中\") are one string under UTF-8: the gateway of
    // yesterday saw this, the server under GBK did not.
    let q = backslash_attack(&[0xe4, 0xb8, 0xad, 0x5c]);
    assert_eq!(render(&q, &settings("UTF8", "UTF8", true)), "select");
}

#[test]
fn the_decoded_text_names_the_characters() {
    for (client, bytes, want) in [
        ("SJIS", &[0x95u8, 0x5c][..], "表"),
        ("BIG5", &[0xa5, 0x5c], "功"),
        ("GBK", &[0xd6, 0xd0], "中"),
        ("GB18030", &[0x81, 0x30, 0x81, 0x30], "\u{80}"),
        ("EUC_JP", &[0xc9, 0xbd], "表"),
        ("EUC_JP", &[0x8e, 0xb1], "ｱ"),
        ("SJIS", &[0xb1], "ｱ"),
        ("LATIN1", &[0xe9], "é"),
        ("LATIN1", &[0x80], "\u{80}"),
        ("LATIN5", &[0xfd], "ı"),
        ("WIN1252", &[0x80], "€"),
        ("KOI8R", &[0xc1], "а"),
        ("WIN1251", &[0xe0], "а"),
        ("ISO_8859_5", &[0xd0], "а"),
        ("WIN866", &[0xa0], "а"),
    ] {
        let mut q = b"SELECT '".to_vec();
        q.extend_from_slice(bytes);
        q.push(b'\'');
        let got = decode_statement(&q, &settings(client, "UTF8", true)).unwrap();
        assert_eq!(got, format!("SELECT '{want}'"), "{client} {bytes:02x?}");
    }
}

#[test]
fn no_conversion_reads_in_the_server_encoding() {
    // SQL_ASCII on either side: no conversion. The bytes must be valid in the server encoding.
    let utf8 = "SELECT 'é'".as_bytes();
    assert_eq!(
        decode_statement(utf8, &settings("SQL_ASCII", "UTF8", true)).unwrap(),
        "SELECT 'é'"
    );
    assert_eq!(
        decode_statement(utf8, &settings("UTF8", "SQL_ASCII", true)).unwrap(),
        "SELECT 'é'"
    );
    assert_eq!(
        decode_statement(utf8, &settings("SQL_ASCII", "SQL_ASCII", true)).unwrap(),
        "SELECT 'é'"
    );
    // Client SQL_ASCII, server LATIN1: the server reads LATIN1 (0xc3 0xa9 is "Ã©").
    assert_eq!(
        decode_statement(utf8, &settings("SQL_ASCII", "LATIN1", true)).unwrap(),
        "SELECT 'Ã©'"
    );
    // Client == server == EUC_JP: read in EUC_JP.
    assert_eq!(
        decode_statement(
            &[b'\'', 0xc9, 0xbd, b'\''],
            &settings("EUC_JP", "EUC_JP", true)
        )
        .unwrap(),
        "'表'"
    );
    // Server SQL_ASCII, client LATIN1: checked (and read) as LATIN1.
    assert_eq!(
        decode_statement(b"'\xe9'", &settings("LATIN1", "SQL_ASCII", true)).unwrap(),
        "'é'"
    );
    // Server SQL_ASCII, client GBK (not ASCII-safe): PostgreSQL refuses every byte >= 0x80, so
    // the GBK attack cannot work there, and we refuse it too.
    let q = backslash_attack(&[0x95, 0x5c]);
    assert_eq!(
        render(&q, &settings("GBK", "SQL_ASCII", true)),
        "text:22021"
    );
    // Client SQL_ASCII with a UTF8 server is a UTF-8 check: "\x95\x5c" is not UTF-8.
    assert_eq!(
        render(&q, &settings("SQL_ASCII", "UTF8", true)),
        "text:22021"
    );
}

#[test]
fn invalid_sequences_are_refused() {
    for (client, server, bytes) in [
        // Not UTF-8.
        ("UTF8", "UTF8", &b"SELECT '\xe4\xb8'"[..]),
        ("UTF8", "UTF8", b"SELECT '\xed\xa0\x80'"),
        ("SQL_ASCII", "SQL_ASCII", b"SELECT '\xff'"),
        // A lead byte whose second byte is ASCII: PostgreSQL takes two bytes as one character,
        // no decoder maps it to one non-ASCII character.
        ("GBK", "UTF8", b"SELECT '\xe4'' ; DELETE FROM t"),
        ("SJIS", "UTF8", b"SELECT '\x95'' ; DELETE FROM t"),
        ("BIG5", "UTF8", b"SELECT '\xa5'' ; DELETE FROM t"),
        // Truncated at the end.
        ("GBK", "UTF8", b"SELECT 1 \xe4"),
        ("GB18030", "UTF8", b"SELECT 1 \x81\x30\x81"),
        ("EUC_JP", "UTF8", b"SELECT 1 \x8f\xa1"),
        // Undefined in the encoding.
        ("LATIN3", "UTF8", b"SELECT '\xa5'"),
        ("SJIS", "UTF8", b"SELECT '\x80'"),
    ] {
        let s = settings(client, server, true);
        let e = decode_statement(bytes, &s).expect_err(client);
        assert!(
            matches!(e, TextError::InvalidSequence { .. }),
            "{client}/{server}: {e}"
        );
        assert_eq!(e.sqlstate(), "22021");
    }
}

#[test]
fn nul_bytes_are_refused_everywhere() {
    for &c in ALL_ENCODINGS {
        let s = TextSettings {
            client_encoding: c,
            ..TextSettings::default()
        };
        let e = decode_statement(b"SELECT 1\0; DELETE FROM t", &s).unwrap_err();
        assert_eq!(e, TextError::NulByte { offset: 8 }, "{c}");
    }
}

#[test]
fn encodings_without_a_decoder_pass_ascii_and_refuse_the_rest() {
    for client in [
        "EUC_TW",
        "JOHAB",
        "SHIFT_JIS_2004",
        "EUC_JIS_2004",
        "MULE_INTERNAL",
    ] {
        let s = settings(client, "UTF8", true);
        assert_eq!(render(b"SELECT 1; DELETE FROM t", &s), "select,delete");
        let e = decode_statement(b"SELECT '\xa4\xa2'", &s).unwrap_err();
        assert!(
            matches!(e, TextError::UnsupportedEncoding { offset: 8, .. }),
            "{client}: {e}"
        );
        assert_eq!(e.sqlstate(), "0A000");
    }
}

#[test]
fn standard_conforming_strings_off_reads_backslash_escapes() {
    let q = br"SELECT '\', $$'; DELETE FROM t; --$$";
    assert_eq!(render(q, &settings("UTF8", "UTF8", false)), "select,delete");
    assert_eq!(render(q, &settings("UTF8", "UTF8", true)), "select");
    // classify_with itself passes the option to the parser.
    let sql = std::str::from_utf8(q).unwrap();
    let off = classify_with(
        sql,
        ParseOptions {
            standard_conforming_strings: false,
        },
    )
    .unwrap();
    assert_eq!(
        off.iter().map(|s| s.kind.clone()).collect::<Vec<_>>(),
        [StatementKind::Select, StatementKind::Delete]
    );
    assert_eq!(
        classify_with(sql, ParseOptions::default()).unwrap().len(),
        1
    );
}

#[test]
fn what_depends_on_settings() {
    for (bytes, depends) in [
        (&b"SELECT 1; DELETE FROM t"[..], false),
        (b"SELECT 'a''b', $$x$$, E'y'", false),
        (br"SELECT 'a\'", true),
        (b"SELECT '\xe9'", true),
        // The lexer refuses U&'...' with standard_conforming_strings off.
        (b"SELECT U&'d\\0061'", true),
        (b"SELECT u&'a'", true),
        (b"SELECT U&\"a\"", false),
    ] {
        assert_eq!(depends_on_settings(bytes), depends, "{bytes:?}");
    }
    // Why U&'...' counts: the same ASCII text parses under one setting only.
    let u = "SELECT U&'a'";
    assert!(classify_with(u, ParseOptions::default()).is_ok());
    assert!(classify_with(
        u,
        ParseOptions {
            standard_conforming_strings: false
        }
    )
    .is_err());
}

#[test]
fn text_that_does_not_depend_on_settings_reads_the_same_everywhere() {
    let texts: &[&[u8]] = &[
        b"SELECT 1; DELETE FROM t",
        b"SELECT 'a''b'; DROP TABLE x",
        b"SELECT $$a'$$, E'b', \"q\"\"\"",
        b"SELECT U&\"a\" FROM t",
        b"SELECT 'unterminated",
    ];
    for &t in texts {
        assert!(!depends_on_settings(t));
        let want = render(t, &TextSettings::default());
        for &c in ALL_ENCODINGS {
            for &s in ALL_ENCODINGS {
                for scs in [true, false] {
                    let st = TextSettings {
                        standard_conforming_strings: scs,
                        client_encoding: c,
                        server_encoding: s,
                    };
                    assert_eq!(render(t, &st), want, "{t:?} {st:?}");
                }
            }
        }
    }
}
