//! PLACEHOLDER (lead's stub; replaced by the full module from the wip-text branch).
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Encoding {
    Utf8,
    SqlAscii,
    Other,
}

impl Encoding {
    pub fn from_pg_name(name: &str) -> Option<Encoding> {
        let n: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        Some(match n.as_str() {
            "utf8" | "unicode" => Encoding::Utf8,
            "sqlascii" => Encoding::SqlAscii,
            _ => Encoding::Other,
        })
    }
    pub fn pg_name(self) -> &'static str {
        match self {
            Encoding::Utf8 => "UTF8",
            Encoding::SqlAscii => "SQL_ASCII",
            Encoding::Other => "OTHER",
        }
    }
    pub fn ascii_safe(self) -> bool {
        !matches!(self, Encoding::Other)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextSettings {
    pub standard_conforming_strings: bool,
    pub client_encoding: Encoding,
    pub server_encoding: Encoding,
}

impl Default for TextSettings {
    fn default() -> Self {
        TextSettings {
            standard_conforming_strings: true,
            client_encoding: Encoding::Utf8,
            server_encoding: Encoding::Utf8,
        }
    }
}

pub fn depends_on_settings(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| b == b'\\' || b >= 0x80)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TextError {
    #[error("invalid byte sequence for encoding {encoding} at offset {offset}")]
    InvalidBytes {
        encoding: &'static str,
        offset: usize,
    },
    #[error("non-ASCII statement text in client encoding {0} cannot be judged")]
    Unsupported(&'static str),
}

impl TextError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            TextError::InvalidBytes { .. } => "22021",
            TextError::Unsupported(_) => "0A000",
        }
    }
}

pub fn decode_statement<'a>(bytes: &'a [u8], s: &TextSettings) -> Result<Cow<'a, str>, TextError> {
    if bytes.iter().all(|b| b.is_ascii() && *b != 0) {
        return Ok(Cow::Borrowed(
            std::str::from_utf8(bytes).unwrap_or_default(),
        ));
    }
    match s.client_encoding {
        Encoding::Utf8 | Encoding::SqlAscii => std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|e| TextError::InvalidBytes {
                encoding: s.client_encoding.pg_name(),
                offset: e.valid_up_to(),
            }),
        other => Err(TextError::Unsupported(other.pg_name())),
    }
}
