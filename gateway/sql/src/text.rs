//! The statement text exactly as the server's parser will read it.
//!
//! A Query or Parse message carries bytes in the session's `client_encoding`. PostgreSQL converts
//! them to the database's `server_encoding` before its parser sees them
//! (`pg_client_to_server` → `pg_any_to_server`, `src/backend/utils/mb/mbutils.c`), and its lexer
//! then reads backslashes in `'...'` by `standard_conforming_strings`. A gateway that parses the
//! raw bytes as UTF-8 with the default settings can disagree with the server about where a string
//! literal ends: in GBK, `e4 b8 ad 5c` is two characters whose second ends in `0x5c`, so a `\`
//! that the gateway sees escaping a quote does not exist for the server.
//!
//! [`decode_statement`] reproduces the server's reading: no conversion when the encodings are
//! equal or either is `SQL_ASCII`, otherwise the bytes are cut into characters with PostgreSQL's
//! own `mblen` rules for the client encoding (`src/common/wchar.c`) and each character is
//! decoded on its own. A character is accepted only if it decodes to exactly one non-ASCII
//! character, so every ASCII character of the result is one the server's lexer sees, at the same
//! place in the sequence, and no other. Anything else is an error: the caller must refuse the
//! statement (fail closed), never guess.
//!
//! # Invariants
//! - Pure: no I/O, no global state.
//! - Exact in structure, or an error: the ASCII characters of [`decode_statement`]'s output are
//!   exactly the ASCII characters the server's parser reads, in order.
//! - Text for which [`depends_on_settings`] is false decodes to itself under every setting.

use std::borrow::Cow;

/// A PostgreSQL encoding as named in `ParameterStatus` (`client_encoding`, `server_encoding`).
///
/// The variants are PostgreSQL's `pg_enc` (`src/include/mb/pg_wchar.h`), PostgreSQL 9.x–18.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Encoding {
    SqlAscii,
    EucJp,
    EucCn,
    EucKr,
    EucTw,
    EucJis2004,
    Utf8,
    MuleInternal,
    Latin1,
    Latin2,
    Latin3,
    Latin4,
    Latin5,
    Latin6,
    Latin7,
    Latin8,
    Latin9,
    Latin10,
    Win1256,
    Win1258,
    Win866,
    Win874,
    Koi8r,
    Win1251,
    Win1252,
    Iso8859_5,
    Iso8859_6,
    Iso8859_7,
    Iso8859_8,
    Win1250,
    Win1253,
    Win1254,
    Win1255,
    Win1257,
    Koi8u,
    // Client-only encodings: bytes below 0x80 can be the second byte of a character.
    Sjis,
    Big5,
    Gbk,
    Uhc,
    Gb18030,
    Johab,
    ShiftJis2004,
}

/// Every encoding, in PostgreSQL's `pg_enc` order.
pub const ALL_ENCODINGS: &[Encoding] = &[
    Encoding::SqlAscii,
    Encoding::EucJp,
    Encoding::EucCn,
    Encoding::EucKr,
    Encoding::EucTw,
    Encoding::EucJis2004,
    Encoding::Utf8,
    Encoding::MuleInternal,
    Encoding::Latin1,
    Encoding::Latin2,
    Encoding::Latin3,
    Encoding::Latin4,
    Encoding::Latin5,
    Encoding::Latin6,
    Encoding::Latin7,
    Encoding::Latin8,
    Encoding::Latin9,
    Encoding::Latin10,
    Encoding::Win1256,
    Encoding::Win1258,
    Encoding::Win866,
    Encoding::Win874,
    Encoding::Koi8r,
    Encoding::Win1251,
    Encoding::Win1252,
    Encoding::Iso8859_5,
    Encoding::Iso8859_6,
    Encoding::Iso8859_7,
    Encoding::Iso8859_8,
    Encoding::Win1250,
    Encoding::Win1253,
    Encoding::Win1254,
    Encoding::Win1255,
    Encoding::Win1257,
    Encoding::Koi8u,
    Encoding::Sjis,
    Encoding::Big5,
    Encoding::Gbk,
    Encoding::Uhc,
    Encoding::Gb18030,
    Encoding::Johab,
    Encoding::ShiftJis2004,
];

/// PostgreSQL's names and aliases, already cleaned (`pg_encname_tbl`, `src/common/encnames.c`).
const ALIASES: &[(&str, Encoding)] = &[
    ("abc", Encoding::Win1258),
    ("alt", Encoding::Win866),
    ("big5", Encoding::Big5),
    ("euccn", Encoding::EucCn),
    ("eucjis2004", Encoding::EucJis2004),
    ("eucjp", Encoding::EucJp),
    ("euckr", Encoding::EucKr),
    ("euctw", Encoding::EucTw),
    ("gb18030", Encoding::Gb18030),
    ("gbk", Encoding::Gbk),
    ("iso88591", Encoding::Latin1),
    ("iso885910", Encoding::Latin6),
    ("iso885913", Encoding::Latin7),
    ("iso885914", Encoding::Latin8),
    ("iso885915", Encoding::Latin9),
    ("iso885916", Encoding::Latin10),
    ("iso88592", Encoding::Latin2),
    ("iso88593", Encoding::Latin3),
    ("iso88594", Encoding::Latin4),
    ("iso88595", Encoding::Iso8859_5),
    ("iso88596", Encoding::Iso8859_6),
    ("iso88597", Encoding::Iso8859_7),
    ("iso88598", Encoding::Iso8859_8),
    ("iso88599", Encoding::Latin5),
    ("johab", Encoding::Johab),
    ("koi8", Encoding::Koi8r),
    ("koi8r", Encoding::Koi8r),
    ("koi8u", Encoding::Koi8u),
    ("latin1", Encoding::Latin1),
    ("latin10", Encoding::Latin10),
    ("latin2", Encoding::Latin2),
    ("latin3", Encoding::Latin3),
    ("latin4", Encoding::Latin4),
    ("latin5", Encoding::Latin5),
    ("latin6", Encoding::Latin6),
    ("latin7", Encoding::Latin7),
    ("latin8", Encoding::Latin8),
    ("latin9", Encoding::Latin9),
    ("mskanji", Encoding::Sjis),
    ("muleinternal", Encoding::MuleInternal),
    ("shiftjis", Encoding::Sjis),
    ("shiftjis2004", Encoding::ShiftJis2004),
    ("sjis", Encoding::Sjis),
    ("sqlascii", Encoding::SqlAscii),
    ("tcvn", Encoding::Win1258),
    ("tcvn5712", Encoding::Win1258),
    ("uhc", Encoding::Uhc),
    ("unicode", Encoding::Utf8),
    ("utf8", Encoding::Utf8),
    ("vscii", Encoding::Win1258),
    ("win", Encoding::Win1251),
    ("win1250", Encoding::Win1250),
    ("win1251", Encoding::Win1251),
    ("win1252", Encoding::Win1252),
    ("win1253", Encoding::Win1253),
    ("win1254", Encoding::Win1254),
    ("win1255", Encoding::Win1255),
    ("win1256", Encoding::Win1256),
    ("win1257", Encoding::Win1257),
    ("win1258", Encoding::Win1258),
    ("win866", Encoding::Win866),
    ("win874", Encoding::Win874),
    ("win932", Encoding::Sjis),
    ("win936", Encoding::Gbk),
    ("win949", Encoding::Uhc),
    ("win950", Encoding::Big5),
    ("windows1250", Encoding::Win1250),
    ("windows1251", Encoding::Win1251),
    ("windows1252", Encoding::Win1252),
    ("windows1253", Encoding::Win1253),
    ("windows1254", Encoding::Win1254),
    ("windows1255", Encoding::Win1255),
    ("windows1256", Encoding::Win1256),
    ("windows1257", Encoding::Win1257),
    ("windows1258", Encoding::Win1258),
    ("windows866", Encoding::Win866),
    ("windows874", Encoding::Win874),
    ("windows932", Encoding::Sjis),
    ("windows936", Encoding::Gbk),
    ("windows949", Encoding::Uhc),
    ("windows950", Encoding::Big5),
];

/// PostgreSQL's `NAMEDATALEN`: `pg_char_to_encoding` rejects longer names.
const NAMEDATALEN: usize = 64;

impl Encoding {
    /// PostgreSQL's name or one of its aliases, as `pg_char_to_encoding` reads it: only ASCII
    /// letters and digits count, case-insensitively (`ISO-8859-1`, `iso_8859_1` and `Iso88591`
    /// are all LATIN1). `None` if PostgreSQL would not know the name.
    pub fn from_pg_name(name: &str) -> Option<Encoding> {
        if name.is_empty() || name.len() >= NAMEDATALEN {
            return None;
        }
        let key: String = name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        ALIASES
            .binary_search_by(|(alias, _)| alias.cmp(&key.as_str()))
            .ok()
            .and_then(|i| ALIASES.get(i))
            .map(|&(_, e)| e)
    }

    /// PostgreSQL's canonical name (`pg_enc2name_tbl`), as the server reports it.
    pub fn pg_name(self) -> &'static str {
        match self {
            Encoding::SqlAscii => "SQL_ASCII",
            Encoding::EucJp => "EUC_JP",
            Encoding::EucCn => "EUC_CN",
            Encoding::EucKr => "EUC_KR",
            Encoding::EucTw => "EUC_TW",
            Encoding::EucJis2004 => "EUC_JIS_2004",
            Encoding::Utf8 => "UTF8",
            Encoding::MuleInternal => "MULE_INTERNAL",
            Encoding::Latin1 => "LATIN1",
            Encoding::Latin2 => "LATIN2",
            Encoding::Latin3 => "LATIN3",
            Encoding::Latin4 => "LATIN4",
            Encoding::Latin5 => "LATIN5",
            Encoding::Latin6 => "LATIN6",
            Encoding::Latin7 => "LATIN7",
            Encoding::Latin8 => "LATIN8",
            Encoding::Latin9 => "LATIN9",
            Encoding::Latin10 => "LATIN10",
            Encoding::Win1256 => "WIN1256",
            Encoding::Win1258 => "WIN1258",
            Encoding::Win866 => "WIN866",
            Encoding::Win874 => "WIN874",
            Encoding::Koi8r => "KOI8R",
            Encoding::Win1251 => "WIN1251",
            Encoding::Win1252 => "WIN1252",
            Encoding::Iso8859_5 => "ISO_8859_5",
            Encoding::Iso8859_6 => "ISO_8859_6",
            Encoding::Iso8859_7 => "ISO_8859_7",
            Encoding::Iso8859_8 => "ISO_8859_8",
            Encoding::Win1250 => "WIN1250",
            Encoding::Win1253 => "WIN1253",
            Encoding::Win1254 => "WIN1254",
            Encoding::Win1255 => "WIN1255",
            Encoding::Win1257 => "WIN1257",
            Encoding::Koi8u => "KOI8U",
            Encoding::Sjis => "SJIS",
            Encoding::Big5 => "BIG5",
            Encoding::Gbk => "GBK",
            Encoding::Uhc => "UHC",
            Encoding::Gb18030 => "GB18030",
            Encoding::Johab => "JOHAB",
            Encoding::ShiftJis2004 => "SHIFT_JIS_2004",
        }
    }

    /// True when every byte below 0x80 is always an ASCII character. False for the client-only
    /// encodings (SJIS, BIG5, GBK, UHC, GB18030, JOHAB, SHIFT_JIS_2004), whose second bytes can
    /// be `\`, `'` and the like; PostgreSQL never uses those as a server encoding
    /// (`PG_VALID_BE_ENCODING`).
    pub fn ascii_safe(self) -> bool {
        !matches!(
            self,
            Encoding::Sjis
                | Encoding::Big5
                | Encoding::Gbk
                | Encoding::Uhc
                | Encoding::Gb18030
                | Encoding::Johab
                | Encoding::ShiftJis2004
        )
    }

    /// The byte length of the character that starts at `s[0]` (which is >= 0x80), by
    /// PostgreSQL's `pg_*_mblen` for this encoding (`src/common/wchar.c`). It may exceed
    /// `s.len()` (a truncated character).
    fn mblen(self, s: &[u8]) -> usize {
        const SS2: u8 = 0x8e;
        const SS3: u8 = 0x8f;
        let first = s.first().copied().unwrap_or(0);
        match self {
            // pg_euc_mblen (EUC_JP, EUC_JIS_2004, EUC_KR, JOHAB)
            Encoding::EucJp | Encoding::EucJis2004 | Encoding::EucKr | Encoding::Johab => {
                match first {
                    SS2 => 2,
                    SS3 => 3,
                    _ => 2,
                }
            }
            // pg_euctw_mblen
            Encoding::EucTw => match first {
                SS2 => 4,
                SS3 => 3,
                _ => 2,
            },
            // pg_euccn_mblen, pg_big5_mblen, pg_gbk_mblen, pg_uhc_mblen
            Encoding::EucCn | Encoding::Big5 | Encoding::Gbk | Encoding::Uhc => 2,
            // pg_sjis_mblen: 0xa1..0xdf are one-byte half-width katakana.
            Encoding::Sjis | Encoding::ShiftJis2004 => {
                if (0xa1..=0xdf).contains(&first) {
                    1
                } else {
                    2
                }
            }
            // pg_gb18030_mblen: the second byte decides between 2 and 4.
            Encoding::Gb18030 => match s.get(1) {
                Some(0x30..=0x39) => 4,
                _ => 2,
            },
            // pg_mule_mblen: IS_LC1, IS_LCPRV1, IS_LC2, IS_LCPRV2.
            Encoding::MuleInternal => match first {
                0x81..=0x8d => 2,
                0x9a | 0x9b => 3,
                0x90..=0x99 => 3,
                0x9c | 0x9d => 4,
                _ => 1,
            },
            // pg_utf_mblen
            Encoding::Utf8 => match first {
                b if b & 0xe0 == 0xc0 => 2,
                b if b & 0xf0 == 0xe0 => 3,
                b if b & 0xf8 == 0xf0 => 4,
                _ => 1,
            },
            // SQL_ASCII and the single-byte encodings.
            _ => 1,
        }
    }

    /// How one character of this encoding becomes Unicode, if we can decode it at all.
    fn decoder(self) -> Decoder {
        use encoding_rs as e;
        match self {
            Encoding::Utf8 => Decoder::Utf8,
            // ISO-8859-1 is the first 256 code points (PostgreSQL's iso8859_1_to_utf8 too);
            // WHATWG (and encoding_rs) read the label as windows-1252, which differs.
            Encoding::Latin1 => Decoder::Latin1,
            // ISO-8859-9: windows-1254 from 0xa0 up, C1 controls below (WHATWG reads the label
            // as windows-1254).
            Encoding::Latin5 => Decoder::C1Then(e::WINDOWS_1254),
            Encoding::Latin2 => Decoder::Rs(e::ISO_8859_2),
            Encoding::Latin3 => Decoder::Rs(e::ISO_8859_3),
            Encoding::Latin4 => Decoder::Rs(e::ISO_8859_4),
            Encoding::Latin6 => Decoder::Rs(e::ISO_8859_10),
            Encoding::Latin7 => Decoder::Rs(e::ISO_8859_13),
            Encoding::Latin8 => Decoder::Rs(e::ISO_8859_14),
            Encoding::Latin9 => Decoder::Rs(e::ISO_8859_15),
            Encoding::Latin10 => Decoder::Rs(e::ISO_8859_16),
            Encoding::Iso8859_5 => Decoder::Rs(e::ISO_8859_5),
            Encoding::Iso8859_6 => Decoder::Rs(e::ISO_8859_6),
            Encoding::Iso8859_7 => Decoder::Rs(e::ISO_8859_7),
            Encoding::Iso8859_8 => Decoder::Rs(e::ISO_8859_8),
            Encoding::Win1250 => Decoder::Rs(e::WINDOWS_1250),
            Encoding::Win1251 => Decoder::Rs(e::WINDOWS_1251),
            Encoding::Win1252 => Decoder::Rs(e::WINDOWS_1252),
            Encoding::Win1253 => Decoder::Rs(e::WINDOWS_1253),
            Encoding::Win1254 => Decoder::Rs(e::WINDOWS_1254),
            Encoding::Win1255 => Decoder::Rs(e::WINDOWS_1255),
            Encoding::Win1256 => Decoder::Rs(e::WINDOWS_1256),
            Encoding::Win1257 => Decoder::Rs(e::WINDOWS_1257),
            Encoding::Win1258 => Decoder::Rs(e::WINDOWS_1258),
            Encoding::Win866 => Decoder::Rs(e::IBM866),
            Encoding::Win874 => Decoder::Rs(e::WINDOWS_874),
            Encoding::Koi8r => Decoder::Rs(e::KOI8_R),
            Encoding::Koi8u => Decoder::Rs(e::KOI8_U),
            Encoding::EucJp => Decoder::Rs(e::EUC_JP),
            // GB2312 in EUC form is a subset of GBK with the same byte values.
            Encoding::EucCn | Encoding::Gbk => Decoder::Rs(e::GBK),
            Encoding::Gb18030 => Decoder::Rs(e::GB18030),
            Encoding::Big5 => Decoder::Rs(e::BIG5),
            Encoding::Sjis => Decoder::Rs(e::SHIFT_JIS),
            // encoding_rs's EUC-KR is windows-949, which is UHC (a superset of EUC-KR).
            Encoding::EucKr | Encoding::Uhc => Decoder::Rs(e::EUC_KR),
            Encoding::SqlAscii
            | Encoding::EucTw
            | Encoding::EucJis2004
            | Encoding::MuleInternal
            | Encoding::Johab
            | Encoding::ShiftJis2004 => Decoder::None,
        }
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.pg_name())
    }
}

#[derive(Clone, Copy)]
enum Decoder {
    Utf8,
    Latin1,
    /// 0x80..0x9f are C1 controls (U+0080..U+009F), the rest as the encoding_rs encoding.
    C1Then(&'static encoding_rs::Encoding),
    Rs(&'static encoding_rs::Encoding),
    None,
}

/// Session settings that decide how the server reads SQL text. The server reports all three
/// in `ParameterStatus` (`standard_conforming_strings` and `client_encoding` on every change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextSettings {
    pub standard_conforming_strings: bool,
    pub client_encoding: Encoding,
    pub server_encoding: Encoding,
}

impl Default for TextSettings {
    /// PostgreSQL's defaults with a UTF-8 database: `standard_conforming_strings = on`,
    /// `client_encoding = UTF8`, `server_encoding = UTF8`.
    fn default() -> Self {
        Self {
            standard_conforming_strings: true,
            client_encoding: Encoding::Utf8,
            server_encoding: Encoding::Utf8,
        }
    }
}

/// Whether the reading of these bytes can depend on the settings at all.
///
/// True if they contain a backslash, a byte >= 0x80, or `&'` (the lexer refuses `U&'...'`
/// strings when `standard_conforming_strings` is off, `scan.l` `{xusstart}`). Otherwise the text
/// is ASCII and reads the same under every encoding and both `standard_conforming_strings`
/// values: a `false` answer lets a caller reuse a judgement made under other settings.
pub fn depends_on_settings(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| b == b'\\' || b >= 0x80) || bytes.windows(2).any(|w| w == b"&'")
}

/// Text that cannot be read the way the server will read it. Refuse the statement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TextError {
    /// The bytes are not valid in the encoding the server reads them in, or a character does
    /// not decode to exactly one non-ASCII character.
    #[error("invalid byte sequence for encoding \"{encoding}\" at byte offset {offset}")]
    InvalidSequence { encoding: Encoding, offset: usize },
    /// Non-ASCII text in an encoding the gateway cannot decode.
    #[error(
        "encoding \"{encoding}\" is not supported by the gateway for non-ASCII text \
         (byte offset {offset})"
    )]
    UnsupportedEncoding { encoding: Encoding, offset: usize },
    /// A NUL byte: PostgreSQL never accepts one in SQL text.
    #[error("statement contains a NUL byte at byte offset {offset}")]
    NulByte { offset: usize },
}

impl TextError {
    /// The SQLSTATE for the client: `22021` (character_not_in_repertoire) for bytes the server
    /// would not accept either, `0A000` (feature_not_supported) for an encoding the gateway
    /// cannot mirror.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            TextError::InvalidSequence { .. } | TextError::NulByte { .. } => "22021",
            TextError::UnsupportedEncoding { .. } => "0A000",
        }
    }
}

/// The text as the server's parser will see it, as UTF-8, exact in structure (see the module
/// docs).
///
/// As PostgreSQL's `pg_any_to_server`:
/// - client and server encodings equal, or the client's is `SQL_ASCII`: no conversion; the
///   server checks the bytes against the server encoding, and so do we (decoding in it).
/// - server `SQL_ASCII`: no conversion; an ASCII-safe client encoding is checked (we decode in
///   it), any other has every byte >= 0x80 refused.
/// - otherwise: converted from the client encoding, character by character.
///
/// Two `SQL_ASCII` ends: the bytes reach the parser unchanged, and we require UTF-8.
pub fn decode_statement<'a>(bytes: &'a [u8], s: &TextSettings) -> Result<Cow<'a, str>, TextError> {
    if let Some(offset) = bytes.iter().position(|&b| b == 0) {
        return Err(TextError::NulByte { offset });
    }
    if bytes.is_ascii() {
        // ASCII reads the same in every encoding PostgreSQL has (a byte below 0x80 can only be a
        // second byte after a byte >= 0x80).
        return std::str::from_utf8(bytes).map(Cow::Borrowed).map_err(|e| {
            TextError::InvalidSequence {
                encoding: s.client_encoding,
                offset: e.valid_up_to(),
            }
        });
    }
    let (client, server) = (s.client_encoding, s.server_encoding);
    let read_as = if client == server || client == Encoding::SqlAscii {
        if server == Encoding::SqlAscii {
            Encoding::Utf8
        } else {
            server
        }
    } else if server == Encoding::SqlAscii {
        if !client.ascii_safe() {
            let offset = bytes.iter().position(|&b| b >= 0x80).unwrap_or(0);
            return Err(TextError::InvalidSequence {
                encoding: Encoding::SqlAscii,
                offset,
            });
        }
        client
    } else {
        client
    };
    decode_in(bytes, read_as)
}

/// Decode `bytes` (which contain a byte >= 0x80 and no NUL) as `enc`, character by character.
fn decode_in(bytes: &[u8], enc: Encoding) -> Result<Cow<'_, str>, TextError> {
    let decoder = enc.decoder();
    match decoder {
        Decoder::Utf8 => {
            return std::str::from_utf8(bytes).map(Cow::Borrowed).map_err(|e| {
                TextError::InvalidSequence {
                    encoding: enc,
                    offset: e.valid_up_to(),
                }
            })
        }
        Decoder::None => {
            let offset = bytes.iter().position(|&b| b >= 0x80).unwrap_or(0);
            return Err(TextError::UnsupportedEncoding {
                encoding: enc,
                offset,
            });
        }
        _ => {}
    }
    let mut out = String::with_capacity(bytes.len() + bytes.len() / 2);
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b < 0x80 {
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let rest = bytes.get(i..).unwrap_or_default();
        let len = enc.mblen(rest);
        let bad = TextError::InvalidSequence {
            encoding: enc,
            offset: i,
        };
        let Some(ch) = rest.get(..len) else {
            return Err(bad);
        };
        out.push(decode_char(decoder, ch).ok_or(bad)?);
        i += len;
    }
    Ok(Cow::Owned(out))
}

/// One character's bytes to exactly one non-ASCII `char`, or `None`.
fn decode_char(decoder: Decoder, ch: &[u8]) -> Option<char> {
    let single = |c: char| (!c.is_ascii()).then_some(c);
    let rs = |enc: &'static encoding_rs::Encoding| {
        let mut d = enc.new_decoder_without_bom_handling();
        // A character of any of these encodings is at most two code points (Big5-HKSCS), eight
        // bytes of UTF-8.
        let mut buf = [0u8; 16];
        let (result, read, written) = d.decode_to_utf8_without_replacement(ch, &mut buf, true);
        if result != encoding_rs::DecoderResult::InputEmpty || read != ch.len() {
            return None;
        }
        let s = std::str::from_utf8(buf.get(..written)?).ok()?;
        let mut chars = s.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => single(c),
            _ => None,
        }
    };
    match (decoder, ch) {
        (Decoder::Latin1, &[b]) => single(char::from(b)),
        (Decoder::C1Then(_), &[b @ 0x80..=0x9f]) => single(char::from(b)),
        (Decoder::C1Then(enc), _) | (Decoder::Rs(enc), _) => rs(enc),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_table_is_sorted_for_binary_search() {
        assert!(ALIASES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn every_canonical_name_round_trips() {
        for &e in ALL_ENCODINGS {
            assert_eq!(Encoding::from_pg_name(e.pg_name()), Some(e), "{e}");
        }
    }

    #[test]
    fn names_are_cleaned_like_postgres() {
        for (name, want) in [
            ("UTF8", Some(Encoding::Utf8)),
            ("utf-8", Some(Encoding::Utf8)),
            ("Unicode", Some(Encoding::Utf8)),
            ("ISO-8859-1", Some(Encoding::Latin1)),
            ("iso_8859_9", Some(Encoding::Latin5)),
            ("Shift_JIS", Some(Encoding::Sjis)),
            ("SHIFT_JIS_2004", Some(Encoding::ShiftJis2004)),
            ("windows-936", Some(Encoding::Gbk)),
            ("cp936", None),
            ("", None),
            ("utf9", None),
        ] {
            assert_eq!(Encoding::from_pg_name(name), want, "{name}");
        }
    }
}
