//! Real-time masking of sensitive data in flight: the pure engine behind Gatehouse's response
//! masking, for PostgreSQL values and HTTP bodies alike. No I/O, no protocol knowledge.
//!
//! An [`Engine`] is compiled once from a [`MaskingConfig`] (produced by the policy layer per
//! connection and group), the set of vaulted credentials and a hash key, then shared (`Arc`)
//! by every session that uses that configuration. [`Engine::mask`] takes one value (a column
//! value, a header, a body chunk that is a complete value) and returns it unchanged and
//! borrowed when nothing is sensitive, or a masked copy; [`Engine::mask_json`] does the same
//! for string values inside a JSON document using field names for field rules.
//!
//! What is found: payment cards (Luhn, IIN range, length per network), US SSNs, e-mail
//! addresses, phone numbers (per-country digit counts), IBANs (mod-97, per-country length),
//! IPv4/IPv6 addresses, AWS / GitHub / Stripe / Slack / Google / OpenAI-style keys, PEM private
//! keys, JWTs, bearer and basic credentials, values assigned to secret-looking names, and exact
//! occurrences of vaulted credentials (one Aho–Corasick automaton). Column / JSON-field rules
//! mask whole values by name (exact or glob, case-insensitive). See [`Entity`] and [`Strategy`].
//!
//! ```
//! use gatehouse_masking::{Counts, Engine, Entity, MaskingConfig, Strategy};
//!
//! let mut cfg = MaskingConfig::default();
//! cfg.entities.insert(Entity::Card, Strategy::Partial { keep_last: 4 });
//! let vaulted: &[&[u8]] = &[b"pg-Pa55word"];
//! let engine = Engine::new(&cfg, vaulted, [7; 32])?;
//!
//! let mut counts = Counts::new();
//! let out = engine.mask(Some("note"), b"card 4242 4242 4242 4242, pw pg-Pa55word", &mut counts)?;
//! assert_eq!(&*out, b"card **** **** **** 4242, pw [REDACTED:VAULTED_SECRET]");
//! assert_eq!(counts.vaulted_hits(), 1);
//! # Ok::<(), gatehouse_masking::MaskError>(())
//! ```
//!
//! # Invariants
//! - **Fail closed.** Anything the engine cannot process (over-long value, malformed JSON,
//!   excessive nesting) is a [`MaskError`]; the unmasked value is never returned instead.
//! - **Linear time.** Detectors are hand-written scanners that never backtrack over unbounded
//!   input; the vaulted-secret automaton is linear; there is no regex.
//! - **No secret leaves through the engine.** Vaulted secrets and the hash key appear in no
//!   `Debug`, `Display`, error or count; [`Counts`] holds numbers only. Vaulted-secret hits are
//!   always redacted whole, and secret entities never accept `partial`.
//! - **Zero copy when clean.** A value with no finding comes back as `Cow::Borrowed`.
//! - **Deterministic.** `keyed_hash` and `format_preserving` depend only on the key and the
//!   value, so joins over masked values still work within one key.
#![forbid(unsafe_code)]

mod config;
mod detect;
mod engine;
mod entity;
mod error;
pub mod json;
mod strategy;

pub use config::{
    ColumnRule, MaskingConfig, Strategy, DEFAULT_MAX_VALUE_BYTES, KEYED_HASH_LENGTH, MAX_KEEP_LAST,
    MAX_REPLACEMENT_LEN,
};
pub use detect::Finding;
pub use engine::{ColumnPlan, Engine};
pub use entity::{CountKey, Counts, Entity};
pub use error::MaskError;
