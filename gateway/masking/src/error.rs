//! The crate's one error type. Messages name limits and positions, never data.

/// Why a value could not be masked or an engine could not be built.
///
/// Callers must treat every error as "do not forward the value" (fail closed). No variant carries
/// any part of the value being masked or of a vaulted secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MaskError {
    /// The configuration is invalid; the text says which key and why.
    #[error("invalid masking configuration: {0}")]
    Config(String),
    /// The vaulted-secret automaton could not be built.
    #[error("cannot build the vaulted-secret matcher: {0}")]
    Automaton(String),
    /// The value is longer than `max_value_bytes`.
    #[error("value of {len} bytes exceeds the masking limit of {limit} bytes")]
    TooLarge {
        /// Length of the refused value.
        len: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The JSON document is malformed at the given byte offset.
    #[error("malformed JSON at byte {offset}: {reason}")]
    Json {
        /// Byte offset of the problem.
        offset: usize,
        /// What was wrong (static text, no document content).
        reason: &'static str,
    },
    /// The JSON document nests deeper than the limit.
    #[error("JSON nesting deeper than {limit} levels")]
    JsonTooDeep {
        /// The nesting limit.
        limit: usize,
    },
}
