//! The built-in development issuer: an Ed25519 key on local disk that mints EdDSA tokens which a
//! [`Verifier`](crate::Verifier) built with it trusts without any HTTP. Development only.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::json;

use crate::jwt::unix_seconds;

/// The `iss` of development tokens.
pub const DEV_ISSUER: &str = "gatehouse-dev";

/// File name of the PKCS#8 Ed25519 key inside the development issuer's directory.
const KEY_FILE: &str = "ed25519.pk8";

/// Largest key file read (an Ed25519 PKCS#8 v2 document is 83 bytes).
const MAX_KEY_FILE: u64 = 4096;

/// Errors of the development issuer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevIssuerError {
    /// Reading or writing the key directory or file failed.
    #[error("development issuer: {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The key file is readable or writable by group or others.
    #[error("development issuer: key file {} has mode {mode:o}; it must be 0600", path.display())]
    KeyFilePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not hold an Ed25519 PKCS#8 key.
    #[error("development issuer: key file {} is not an Ed25519 PKCS#8 key", path.display())]
    InvalidKey {
        /// The key file.
        path: PathBuf,
    },
    /// The audience is empty.
    #[error("development issuer: audience must not be empty")]
    EmptyAudience,
    /// `mint` was asked for an empty user name.
    #[error("development issuer: user must not be empty")]
    EmptyUser,
    /// `mint` was asked for a lifetime under one second.
    #[error("development issuer: token lifetime must be at least one second")]
    InvalidTtl,
    /// The system random generator or the signer failed.
    #[error("development issuer: cryptographic operation failed")]
    Crypto,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DevIssuerError + '_ {
    move |source| DevIssuerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A development-only token issuer with a persistent Ed25519 key.
pub struct DevIssuer {
    key_pair: Ed25519KeyPair,
    kid: String,
    audience: String,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("issuer", &DEV_ISSUER)
            .field("kid", &self.kid)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl DevIssuer {
    /// Loads the key in `dir/ed25519.pk8`, or creates it (directory mode 0700, file mode 0600).
    /// A key file readable by group or others is refused.
    pub fn load_or_create(dir: &Path, audience: &str) -> Result<DevIssuer, DevIssuerError> {
        if audience.is_empty() {
            return Err(DevIssuerError::EmptyAudience);
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        let path = dir.join(KEY_FILE);
        let pkcs8 = match read_key_file(&path)? {
            Some(bytes) => bytes,
            None => create_key_file(dir, &path)?,
        };
        let key_pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
            .map_err(|_| DevIssuerError::InvalidKey { path: path.clone() })?;
        Ok(DevIssuer::from_key_pair(key_pair, audience))
    }

    fn from_key_pair(key_pair: Ed25519KeyPair, audience: &str) -> DevIssuer {
        let digest = ring::digest::digest(&ring::digest::SHA256, key_pair.public_key().as_ref());
        let kid = format!(
            "dev-{}",
            URL_SAFE_NO_PAD.encode(digest.as_ref().get(..12).unwrap_or_default())
        );
        DevIssuer {
            key_pair,
            kid,
            audience: audience.to_owned(),
        }
    }

    /// The issuer string, [`DEV_ISSUER`].
    pub fn issuer(&self) -> &'static str {
        DEV_ISSUER
    }

    /// The key id put into minted tokens (derived from the public key).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The audience of minted tokens.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> &[u8] {
        self.key_pair.public_key().as_ref()
    }

    /// Mints an EdDSA JWT for `user`, valid from `now` for `ttl` (whole seconds).
    pub fn mint(
        &self,
        user: &str,
        groups: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, DevIssuerError> {
        if user.is_empty() {
            return Err(DevIssuerError::EmptyUser);
        }
        let ttl = i64::try_from(ttl.as_secs()).map_err(|_| DevIssuerError::InvalidTtl)?;
        if ttl == 0 {
            return Err(DevIssuerError::InvalidTtl);
        }
        let iat = unix_seconds(now);
        let exp = iat.checked_add(ttl).ok_or(DevIssuerError::InvalidTtl)?;
        let mut jti = [0u8; 16];
        SystemRandom::new()
            .fill(&mut jti)
            .map_err(|_| DevIssuerError::Crypto)?;

        let header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": self.kid });
        let claims = json!({
            "iss": DEV_ISSUER,
            "aud": self.audience,
            "sub": user,
            "preferred_username": user,
            "groups": groups,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": URL_SAFE_NO_PAD.encode(jti),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.key_pair.sign(signing_input.as_bytes());
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

/// Reads an existing key file (refusing loose permissions); `None` when it does not exist.
fn read_key_file(path: &Path) -> Result<Option<Vec<u8>>, DevIssuerError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mode = file.metadata().map_err(io_err(path))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(DevIssuerError::KeyFilePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    Ok(Some(bytes))
}

/// Generates a key and publishes it at `path` atomically without overwriting: written to a
/// private temporary file, then hard-linked into place. If another process won the race, its
/// key is used.
fn create_key_file(dir: &Path, path: &Path) -> Result<Vec<u8>, DevIssuerError> {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| DevIssuerError::Crypto)?;
    let mut suffix = [0u8; 8];
    rng.fill(&mut suffix).map_err(|_| DevIssuerError::Crypto)?;
    let tmp = dir.join(format!(
        ".{KEY_FILE}.{}.tmp",
        URL_SAFE_NO_PAD.encode(suffix)
    ));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(pkcs8.as_ref())?;
        f.sync_all()
    };
    let linked = write().and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            tracing::info!(path = %path.display(), "created development issuer key");
            Ok(pkcs8.as_ref().to_vec())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_key_file(path)?
            .ok_or_else(|| io_err(path)(io::Error::from(io::ErrorKind::NotFound))),
        Err(e) => Err(io_err(path)(e)),
    }
}
