//! TLS for both sides, with rustls on the ring provider: the listener's server config (a
//! configured certificate, or a self-signed one made on first start) and per-connection client
//! configs toward upstreams.
//!
//! Listener private keys can be kept sealed by the key store (the TPM on an appliance): the
//! self-signed key Gatehouse makes is always written sealed (`data_dir/tls/key.sealed`), and a
//! configured `tls_key` may be a file made by `gatehouse board seal-tls-key`. A sealed file is
//!
//! ```text
//! gatehouse-sealed-tls-key/v1 <data key id>
//! <base64: 12-byte nonce || AES-256-GCM(vault data key, nonce, aad, PEM private key)>
//! ```
//!
//! with `aad = "gatehouse-sealed-tls-key/v1" || key id`; the key id names the key store's
//! vault data key used (older keys stay readable after rotation).

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use base64::Engine as _;
use gatehouse_board::{KeyId, KeyPurpose, KeyStore};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom as _, SystemRandom};
use zeroize::Zeroizing;

use crate::config::{ConnectionConfig, ListenerConfig, UpstreamTls};

/// First line of a sealed private-key file.
const SEALED_MAGIC: &str = "gatehouse-sealed-tls-key/v1";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listener's TLS server config.
pub fn server_config(
    listener: &ListenerConfig,
    data_dir: &Path,
    keys: &dyn KeyStore,
) -> anyhow::Result<Arc<ServerConfig>> {
    let (cert_path, key_path) = match (&listener.tls_cert, &listener.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => ensure_self_signed(&data_dir.join("tls"), keys)?,
    };
    let certs = read_certs(&cert_path)?;
    let key = read_key(&key_path, keys)?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("listener certificate and key do not match")?;
    Ok(Arc::new(cfg))
}

/// Makes (once) a self-signed certificate for development and first boot; its private key is
/// stored sealed by the key store, never in the clear.
fn ensure_self_signed(dir: &Path, keys: &dyn KeyStore) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.sealed");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    // A clear key left by an older version: seal it and remove the clear copy.
    let legacy = dir.join("key.pem");
    if cert.exists() && legacy.exists() {
        let pem = Zeroizing::new(std::fs::read(&legacy)?);
        write_private(&key, seal_private_key(keys, &pem)?.as_bytes())?;
        std::fs::remove_file(&legacy)?;
        tracing::info!(key = %key.display(), "sealed the self-signed TLS key with the key store");
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir)?;
    let host = hostname();
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), host];
    let signed = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed certificate")?;
    let pem = Zeroizing::new(signed.signing_key.serialize_pem());
    write_private(&key, seal_private_key(keys, pem.as_bytes())?.as_bytes())?;
    std::fs::write(&cert, signed.cert.pem())?;
    tracing::warn!(cert = %cert.display(), "generated a self-signed TLS certificate; configure tls_cert/tls_key for production");
    Ok((cert, key))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "gatehouse".into())
}

pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut BufReader::new(f)).collect();
    let certs = certs.with_context(|| format!("reading certificates from {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

/// Reads a PEM private key, or a sealed one (opened with the key store).
fn read_key(path: &Path, keys: &dyn KeyStore) -> anyhow::Result<PrivateKeyDer<'static>> {
    let bytes =
        Zeroizing::new(std::fs::read(path).with_context(|| format!("opening {}", path.display()))?);
    let pem = if bytes.starts_with(SEALED_MAGIC.as_bytes()) {
        unseal_private_key(keys, &bytes)
            .with_context(|| format!("opening the sealed private key {}", path.display()))?
    } else {
        bytes
    };
    rustls_pemfile::private_key(&mut BufReader::new(&pem[..]))
        .with_context(|| format!("reading the private key from {}", path.display()))?
        .with_context(|| format!("no private key in {}", path.display()))
}

fn aead_key(bytes: &[u8; 32]) -> anyhow::Result<LessSafeKey> {
    let k = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| anyhow::anyhow!("AES key"))?;
    Ok(LessSafeKey::new(k))
}

fn sealed_aad(key_id: &KeyId) -> Vec<u8> {
    let mut a = SEALED_MAGIC.as_bytes().to_vec();
    a.extend_from_slice(key_id.as_str().as_bytes());
    a
}

/// Seals a PEM private key under the key store's current vault data key.
pub fn seal_private_key(keys: &dyn KeyStore, pem: &[u8]) -> anyhow::Result<String> {
    let dk = keys.data_key(KeyPurpose::Vault)?;
    let key = aead_key(dk.bytes())?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let mut buf = pem.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(sealed_aad(&dk.id())),
        &mut buf,
    )
    .map_err(|_| anyhow::anyhow!("sealing the private key failed"))?;
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&buf);
    Ok(format!(
        "{SEALED_MAGIC} {}\n{}\n",
        dk.id().as_str(),
        base64::engine::general_purpose::STANDARD.encode(blob)
    ))
}

fn unseal_private_key(keys: &dyn KeyStore, file: &[u8]) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let text = std::str::from_utf8(file).context("not a sealed key file")?;
    let mut lines = text.lines();
    let head = lines.next().unwrap_or_default();
    let id = head
        .strip_prefix(SEALED_MAGIC)
        .map(str::trim)
        .context("not a sealed key file")?;
    let id = KeyId::parse(id).context("bad key id in the sealed key file")?;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(lines.next().unwrap_or_default().trim())
        .context("bad base64 in the sealed key file")?;
    if blob.len() < NONCE_LEN + 16 {
        bail!("the sealed key file is truncated");
    }
    let dk = keys.data_key_by_id(KeyPurpose::Vault, &id)?;
    let key = aead_key(dk.bytes())?;
    let (nonce, ct) = blob.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("nonce"))?;
    let mut buf = Zeroizing::new(ct.to_vec());
    let n = key
        .open_in_place(nonce, Aad::from(sealed_aad(&id)), &mut buf)
        .map_err(|_| {
            anyhow::anyhow!(
                "the sealed key does not open with this key store (another TPM, or edited)"
            )
        })?
        .len();
    buf.truncate(n);
    Ok(buf)
}

/// The TLS client config toward one upstream, or `None` for `tls = "disable"`.
pub fn upstream_config(conn: &ConnectionConfig) -> anyhow::Result<Option<Arc<ClientConfig>>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let cfg = match conn.tls {
        UpstreamTls::Disable => return Ok(None),
        UpstreamTls::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth(),
        UpstreamTls::VerifyFull => {
            let mut roots = RootCertStore::empty();
            let bundle = conn
                .ca_file
                .clone()
                .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
            for c in read_certs(&bundle)? {
                roots.add(c).context("adding a CA certificate")?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(cfg)))
}

pub fn server_name(host: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(host.to_string()).context("upstream host is not a valid TLS server name")
}

/// `tls = "require"`: encrypt, but accept any certificate (libpq's `sslmode=require`).
/// Handshake signatures are still checked, so the session key is bound to the presented key.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
