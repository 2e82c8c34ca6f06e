//! JWK Sets (RFC 7517): parsing into usable verification keys and choosing the key for a token.

use jsonwebtoken::DecodingKey;
use serde_json::Value;

use crate::jwt::Alg;

/// One usable verification key.
pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    /// The only algorithm this key may verify: from its type and curve, and equal to the JWK's
    /// `alg` when it has one.
    pub(crate) alg: Alg,
    pub(crate) decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The usable keys of one issuer.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    pub(crate) keys: Vec<Key>,
    /// Entries of the JWKS that were skipped (other use, unsupported type or algorithm, broken).
    pub(crate) skipped: usize,
}

/// The outcome of looking up the key for a token.
#[derive(Debug)]
pub(crate) enum Lookup<'a> {
    Found(&'a Key),
    /// No key has the token's `kid` (or, without `kid`, no key fits the algorithm).
    NotFound,
    /// Without `kid`, several keys fit: the token does not say which one.
    Ambiguous,
    /// A key has the token's `kid` but not the token's algorithm.
    Mismatch(String),
}

impl KeySet {
    /// Parses a JWKS document. Entries that cannot be used are skipped, not fatal: an issuer may
    /// publish encryption keys or algorithms we do not accept next to its signing keys.
    pub(crate) fn parse(body: &[u8]) -> Result<KeySet, String> {
        let doc: Value =
            serde_json::from_slice(body).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let entries = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| "JWKS has no \"keys\" array".to_owned())?;
        let mut set = KeySet::default();
        for entry in entries {
            match parse_key(entry) {
                Some(key) => set.keys.push(key),
                None => set.skipped += 1,
            }
        }
        Ok(set)
    }

    /// Chooses the key for a token with header `alg` and `kid`.
    pub(crate) fn select(&self, kid: Option<&str>, alg: Alg) -> Lookup<'_> {
        match kid {
            Some(kid) => {
                let mut named = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
                let Some(first) = named.next() else {
                    return Lookup::NotFound;
                };
                if first.alg == alg {
                    return Lookup::Found(first);
                }
                if let Some(k) = named.find(|k| k.alg == alg) {
                    return Lookup::Found(k);
                }
                Lookup::Mismatch(format!(
                    "token alg {} but key {:?} is for {}",
                    alg.name(),
                    crate::error::sanitize(kid, 64),
                    first.alg.name()
                ))
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.alg == alg);
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Lookup::Found(k),
                    (None, _) => Lookup::NotFound,
                    (Some(_), Some(_)) => Lookup::Ambiguous,
                }
            }
        }
    }

    /// The key ids, for logs.
    pub(crate) fn kids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("-"))
            .collect()
    }
}

fn str_field<'a>(entry: &'a Value, name: &str) -> Option<&'a str> {
    entry.get(name).and_then(Value::as_str)
}

/// One JWK → a key, or `None` when it is not a signing key we can use.
fn parse_key(entry: &Value) -> Option<Key> {
    if let Some(usage) = entry.get("use") {
        if usage.as_str() != Some("sig") {
            return None;
        }
    }
    let kid = match entry.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return None,
    };
    let (alg, decoding) = match str_field(entry, "kty")? {
        "RSA" => (
            Alg::Rs256,
            DecodingKey::from_rsa_components(str_field(entry, "n")?, str_field(entry, "e")?)
                .ok()?,
        ),
        "EC" if str_field(entry, "crv")? == "P-256" => {
            let x = str_field(entry, "x")?;
            let y = str_field(entry, "y")?;
            // P-256 coordinates are 32 bytes: 43 base64url characters.
            if x.len() != 43 || y.len() != 43 {
                return None;
            }
            (Alg::Es256, DecodingKey::from_ec_components(x, y).ok()?)
        }
        "OKP" if str_field(entry, "crv")? == "Ed25519" => {
            let x = str_field(entry, "x")?;
            if x.len() != 43 {
                return None;
            }
            (Alg::EdDsa, DecodingKey::from_ed_components(x).ok()?)
        }
        _ => return None,
    };
    // A JWK `alg` pins the key to one algorithm; it must be ours and fit the key type.
    match entry.get("alg") {
        None => {}
        Some(Value::String(a)) if a == alg.name() => {}
        Some(_) => return None,
    }
    Some(Key { kid, alg, decoding })
}
