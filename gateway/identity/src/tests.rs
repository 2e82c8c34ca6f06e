//! In-crate tests against a real (tiny) HTTP issuer on 127.0.0.1 with keys made in the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde_json::{json, Value};

use crate::{
    AuthError, ConfigError, DevIssuer, DevIssuerError, IssuerConfig, Verifier, VerifierOptions,
    DEV_ISSUER, MAX_TOKEN_LEN,
};

const DISCOVERY: &str = "/.well-known/openid-configuration";
const JWKS: &str = "/jwks.json";
const AUD: &str = "gatehouse";

// ---------------------------------------------------------------------------------------------
// A tiny OIDC issuer: discovery + JWKS over HTTP/1.1 on 127.0.0.1, counting requests per path.

struct IdpState {
    base: String,
    discovery_issuer: String,
    jwks: Value,
    fail: bool,
    jwks_delay: Duration,
    hits: HashMap<String, usize>,
}

struct Idp {
    issuer: String,
    state: Arc<Mutex<IdpState>>,
}

impl Idp {
    fn start(keys: &[&TestKey]) -> Idp {
        Idp::start_with(keys, "", None)
    }

    /// `suffix` is appended to `http://127.0.0.1:PORT` to form the issuer (e.g. "/"); with
    /// `tls`, the server speaks https.
    fn start_with(keys: &[&TestKey], suffix: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", listener.local_addr().unwrap());
        let issuer = format!("{base}{suffix}");
        let state = Arc::new(Mutex::new(IdpState {
            base,
            discovery_issuer: issuer.clone(),
            jwks: jwks(keys),
            fail: false,
            jwks_delay: Duration::ZERO,
            hits: HashMap::new(),
        }));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let state = Arc::clone(&shared);
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    None => serve(stream, &state),
                    Some(config) => {
                        let conn = rustls::ServerConnection::new(config).unwrap();
                        let mut tls = rustls::StreamOwned::new(conn, stream);
                        serve(&mut tls, &state);
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                });
            }
        });
        Idp { issuer, state }
    }

    fn set_keys(&self, keys: &[&TestKey]) {
        self.state.lock().unwrap().jwks = jwks(keys);
    }

    fn set_fail(&self, fail: bool) {
        self.state.lock().unwrap().fail = fail;
    }

    fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn serve(mut stream: impl Read + Write, state: &Mutex<IdpState>) {
    // Read the request head (we only serve GET without a body).
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let request_line = head.lines().next().unwrap_or("");
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_owned();
    let (status, body, delay) = {
        let mut st = state.lock().unwrap();
        *st.hits.entry(path.clone()).or_default() += 1;
        if st.fail {
            (500, "{}".to_owned(), Duration::ZERO)
        } else if path == DISCOVERY {
            let doc = json!({
                "issuer": st.discovery_issuer,
                "jwks_uri": format!("{}{JWKS}", st.base),
                "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
            });
            (200, doc.to_string(), Duration::ZERO)
        } else if path == JWKS {
            (200, st.jwks.to_string(), st.jwks_delay)
        } else {
            (404, "{}".to_owned(), Duration::ZERO)
        }
    };
    std::thread::sleep(delay);
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

// ---------------------------------------------------------------------------------------------
// Keys made in the test.

struct TestKey {
    kid: String,
    alg: Algorithm,
    enc: EncodingKey,
    jwk: Value,
}

fn jwks(keys: &[&TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn ed_key(kid: &str) -> TestKey {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    TestKey {
        kid: kid.to_owned(),
        alg: Algorithm::EdDSA,
        enc: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
            "kid": kid, "x": b64(kp.public_key().as_ref()),
        }),
    }
}

fn ec_key(kid: &str) -> TestKey {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let kp =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = kp.public_key().as_ref();
    assert_eq!(public.len(), 65);
    TestKey {
        kid: kid.to_owned(),
        alg: Algorithm::ES256,
        enc: EncodingKey::from_ec_der(pkcs8.as_ref()),
        // No "alg": the key type and curve decide.
        jwk: json!({
            "kty": "EC", "crv": "P-256", "kid": kid,
            "x": b64(&public[1..33]), "y": b64(&public[33..65]),
        }),
    }
}

struct RsaMaterial {
    private_pem: Vec<u8>,
    public_pem: Vec<u8>,
    public_der: Vec<u8>,
    modulus: Vec<u8>,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the RSA tests need the openssl command-line tool");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// One 2048-bit RSA key for the whole test run (generation is slow).
fn rsa_material() -> &'static RsaMaterial {
    static RSA: OnceLock<RsaMaterial> = OnceLock::new();
    RSA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let key = key.to_str().unwrap();
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            key,
        ]);
        let modulus =
            String::from_utf8(openssl(&["rsa", "-in", key, "-noout", "-modulus"])).unwrap();
        let hex = modulus.trim().strip_prefix("Modulus=").unwrap();
        let modulus = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        RsaMaterial {
            private_pem: std::fs::read(key).unwrap(),
            public_pem: openssl(&["rsa", "-in", key, "-pubout"]),
            public_der: openssl(&["rsa", "-in", key, "-pubout", "-outform", "DER"]),
            modulus,
        }
    })
}

fn rsa_key(kid: &str) -> TestKey {
    let m = rsa_material();
    TestKey {
        kid: kid.to_owned(),
        alg: Algorithm::RS256,
        enc: EncodingKey::from_rsa_pem(&m.private_pem).unwrap(),
        jwk: json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": b64(&m.modulus), "e": "AQAB",
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens.

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn secs(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

fn claims(iss: &str) -> Value {
    let t = secs(now());
    json!({
        "iss": iss, "aud": AUD, "sub": "u-123", "preferred_username": "alice",
        "email": "alice@example.com", "groups": ["dba", "ops"],
        "iat": t, "nbf": t, "exp": t + 300, "jti": "jti-1",
    })
}

fn sign(key: &TestKey, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.enc).unwrap()
}

/// A token with an arbitrary header and signature bytes.
fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

fn options(refresh_min_interval: Duration) -> VerifierOptions {
    VerifierOptions {
        leeway: Duration::from_secs(30),
        refresh_min_interval,
        jwks_max_age: Duration::from_secs(3600),
        http_timeout: Duration::from_secs(3),
    }
}

fn verifier_for(cfg: IssuerConfig, opts: VerifierOptions) -> Verifier {
    Verifier::new(vec![cfg], None, opts).unwrap()
}

fn verifier(idp: &Idp, opts: VerifierOptions) -> Verifier {
    verifier_for(IssuerConfig::new(&idp.issuer, vec![AUD.to_owned()]), opts)
}

/// An issuer with one Ed25519 key and a verifier for it.
fn setup() -> (Idp, TestKey, Verifier) {
    let key = ed_key("ed-1");
    let idp = Idp::start(&[&key]);
    let v = verifier(&idp, options(Duration::from_secs(10)));
    (idp, key, v)
}

async fn verify_claims(claims: &Value) -> Result<crate::Identity, AuthError> {
    let (idp, key, v) = setup();
    let mut claims = claims.clone();
    claims["iss"] = json!(idp.issuer);
    v.verify(&sign(&key, &claims), now()).await
}

// ---------------------------------------------------------------------------------------------
// Accepted tokens.

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_are_accepted() {
    let (rsa, ec, ed) = (rsa_key("rsa-1"), ec_key("ec-1"), ed_key("ed-1"));
    let idp = Idp::start(&[&rsa, &ec, &ed]);
    let v = verifier(&idp, options(Duration::from_secs(10)));
    for key in [&rsa, &ec, &ed] {
        let id = v
            .verify(&sign(key, &claims(&idp.issuer)), now())
            .await
            .unwrap_or_else(|e| panic!("{:?} token refused: {e}", key.alg));
        assert_eq!(id.issuer, idp.issuer);
        assert_eq!(id.subject, "u-123");
        assert_eq!(id.username, "u-123", "default username claim is sub");
        assert_eq!(id.email.as_deref(), Some("alice@example.com"));
        assert_eq!(id.groups, vec!["dba".to_owned(), "ops".to_owned()]);
        assert_eq!(id.token_id.as_deref(), Some("jti-1"));
        assert_eq!(id.expires_at, now() + Duration::from_secs(300));
    }
    // One discovery and one JWKS fetch served all three.
    assert_eq!(idp.hits(DISCOVERY), 1);
    assert_eq!(idp.hits(JWKS), 1);
}

#[tokio::test]
async fn issuer_with_trailing_slash_is_discovered_without_double_slash() {
    let key = ed_key("ed-1");
    let idp = Idp::start_with(&[&key], "/", None);
    assert!(idp.issuer.ends_with('/'));
    let v = verifier(&idp, options(Duration::from_secs(10)));
    v.verify(&sign(&key, &claims(&idp.issuer)), now())
        .await
        .unwrap();
    assert_eq!(idp.hits(DISCOVERY), 1);
    // The token's iss must equal the configured issuer exactly (with its slash).
    let without = idp.issuer.trim_end_matches('/');
    let err = v
        .verify(&sign(&key, &claims(without)), now())
        .await
        .unwrap_err();
    assert_eq!(err, AuthError::UnknownIssuer);
}

#[tokio::test]
async fn token_without_kid_uses_the_only_fitting_key() {
    let (ec, ed) = (ec_key("ec-1"), ed_key("ed-1"));
    let idp = Idp::start(&[&ec, &ed]);
    let v = verifier(&idp, options(Duration::from_secs(10)));
    let header = Header::new(Algorithm::EdDSA);
    let token = jsonwebtoken::encode(&header, &claims(&idp.issuer), &ed.enc).unwrap();
    v.verify(&token, now()).await.unwrap();

    // Two keys fit: ambiguous, refused.
    let ed2 = ed_key("ed-2");
    let idp = Idp::start(&[&ed, &ed2]);
    let v = verifier(&idp, options(Duration::from_secs(10)));
    let token = jsonwebtoken::encode(&header, &claims(&idp.issuer), &ed.enc).unwrap();
    assert_eq!(v.verify(&token, now()).await, Err(AuthError::UnknownKey));
}

// ---------------------------------------------------------------------------------------------
// Time and audience.

#[tokio::test]
async fn expired_token_is_refused_but_leeway_applies() {
    let t = secs(now());
    let mut c = claims("");
    c["exp"] = json!(t - 120);
    c["iat"] = json!(t - 600);
    c["nbf"] = json!(t - 600);
    let err = verify_claims(&c).await.unwrap_err();
    assert_eq!(err, AuthError::Expired);
    assert_eq!(err.client_message(), "token expired");
    assert!(!err.is_unavailable());

    c["exp"] = json!(t - 10); // within the 30 s leeway
    verify_claims(&c).await.unwrap();

    let obj = c.as_object_mut().unwrap();
    obj.remove("exp");
    assert_eq!(
        verify_claims(&c).await,
        Err(AuthError::MissingClaim("exp".to_owned()))
    );
}

#[tokio::test]
async fn nbf_and_iat_in_the_future_are_refused() {
    let t = secs(now());
    let mut c = claims("");
    c["nbf"] = json!(t + 120);
    assert_eq!(verify_claims(&c).await, Err(AuthError::NotYetValid));
    c["nbf"] = json!(t + 20); // within leeway
    verify_claims(&c).await.unwrap();

    let mut c = claims("");
    c["iat"] = json!(t + 120);
    assert_eq!(verify_claims(&c).await, Err(AuthError::IssuedInFuture));
}

#[tokio::test]
async fn audience_must_match() {
    let mut c = claims("");
    c["aud"] = json!("someone-else");
    let err = verify_claims(&c).await.unwrap_err();
    assert_eq!(err, AuthError::WrongAudience);
    assert_eq!(err.client_message(), "token rejected");

    c["aud"] = json!(["a", "b"]);
    assert_eq!(verify_claims(&c).await, Err(AuthError::WrongAudience));
    c["aud"] = json!(["a", AUD]);
    verify_claims(&c).await.unwrap();
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        verify_claims(&c).await,
        Err(AuthError::MissingClaim("aud".to_owned()))
    );
}

// ---------------------------------------------------------------------------------------------
// Issuer, signature and algorithm attacks.

#[tokio::test]
async fn wrong_issuer_is_refused_without_any_fetch() {
    let (idp, key, v) = setup();
    let token = sign(&key, &claims("https://evil.example.com"));
    let err = v.verify(&token, now()).await.unwrap_err();
    assert_eq!(err, AuthError::UnknownIssuer);
    assert_eq!(idp.hits(DISCOVERY), 0);
    let mut c = claims("");
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(
        v.verify(&sign(&key, &c), now()).await,
        Err(AuthError::MissingClaim("iss".to_owned()))
    );
}

#[tokio::test]
async fn discovery_naming_another_issuer_is_refused() {
    let (idp, key, v) = setup();
    idp.state.lock().unwrap().discovery_issuer = "https://evil.example.com".to_owned();
    let err = v
        .verify(&sign(&key, &claims(&idp.issuer)), now())
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        err.reason().contains("evil.example.com"),
        "{}",
        err.reason()
    );
    assert_eq!(idp.hits(JWKS), 0, "JWKS must not be fetched");
}

#[tokio::test]
async fn tampered_payload_is_refused() {
    let (idp, key, v) = setup();
    let token = sign(&key, &claims(&idp.issuer));
    v.verify(&token, now()).await.unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let mut c = claims(&idp.issuer);
    c["sub"] = json!("admin");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(c.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(v.verify(&forged, now()).await, Err(AuthError::BadSignature));

    // A signature by a different key with the same kid.
    let impostor = ed_key("ed-1");
    let err = v
        .verify(&sign(&impostor, &claims(&idp.issuer)), now())
        .await
        .unwrap_err();
    assert_eq!(err, AuthError::BadSignature);
}

#[tokio::test]
async fn alg_none_is_refused() {
    let (idp, key, v) = setup();
    for alg in ["none", "None", "NONE"] {
        let header = json!({ "alg": alg, "typ": "JWT", "kid": key.kid });
        let token = raw_token(&header, &claims(&idp.issuer), b"");
        let token = token.trim_end_matches('.').to_owned() + ".";
        assert_eq!(
            v.verify(&token, now()).await,
            Err(AuthError::UnsupportedAlgorithm(alg.to_owned()))
        );
    }
    assert_eq!(idp.hits(JWKS), 0);
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let rsa = rsa_key("rsa-1");
    let idp = Idp::start(&[&rsa]);
    let v = verifier(&idp, options(Duration::from_secs(10)));
    // The verifier has the RSA key loaded.
    v.verify(&sign(&rsa, &claims(&idp.issuer)), now())
        .await
        .unwrap();
    let m = rsa_material();
    let n_b64 = b64(&m.modulus);
    let secrets: [&[u8]; 3] = [&m.public_pem, &m.public_der, n_b64.as_bytes()];
    for alg in ["HS256", "HS384", "HS512"] {
        for secret in secrets {
            let header = json!({ "alg": alg, "typ": "JWT", "kid": rsa.kid });
            let c = claims(&idp.issuer);
            let input = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(c.to_string().as_bytes())
            );
            let hmac_alg = match alg {
                "HS256" => ring::hmac::HMAC_SHA256,
                "HS384" => ring::hmac::HMAC_SHA384,
                _ => ring::hmac::HMAC_SHA512,
            };
            let tag = ring::hmac::sign(&ring::hmac::Key::new(hmac_alg, secret), input.as_bytes());
            let token = format!("{input}.{}", b64(tag.as_ref()));
            assert_eq!(
                v.verify(&token, now()).await,
                Err(AuthError::UnsupportedAlgorithm(alg.to_owned()))
            );
        }
    }
    assert_eq!(idp.hits(JWKS), 1);
}

#[tokio::test]
async fn header_alg_must_fit_the_key_named_by_kid() {
    let (rsa, ec) = (rsa_key("rsa-1"), ec_key("ec-1"));
    let idp = Idp::start(&[&rsa, &ec]);
    let v = verifier(&idp, options(Duration::from_secs(10)));
    // An ES256 token claiming the RSA key's kid.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(rsa.kid.clone());
    let token = jsonwebtoken::encode(&header, &claims(&idp.issuer), &ec.enc).unwrap();
    assert!(matches!(
        v.verify(&token, now()).await,
        Err(AuthError::AlgorithmMismatch(_))
    ));
    // A JWK whose `alg` is outside the allow-list is not usable at all.
    let mut odd = ed_key("ed-odd");
    odd.jwk["alg"] = json!("ES512");
    idp.set_keys(&[&odd]);
    let v = verifier(&idp, options(Duration::from_secs(10)));
    assert_eq!(
        v.verify(&sign(&odd, &claims(&idp.issuer)), now()).await,
        Err(AuthError::UnknownKey)
    );
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let (idp, key, v) = setup();
    let good = sign(&key, &claims(&idp.issuer));
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        String::new(),
        "abc".to_owned(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.extra"),
        format!("{}.!!!.{}", parts[0], parts[2]),
        format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
        format!("{}.{}.{}", b64(b"{\"typ\":\"JWT\"}"), parts[1], parts[2]),
        format!("{}.{}.", parts[0], parts[1]),
        format!("{}.{}.{}", parts[0], b64(b"[1,2]"), parts[2]),
        format!("{}={}", good, "=".repeat(MAX_TOKEN_LEN)),
    ];
    for token in &cases {
        let err = v.verify(token, now()).await.unwrap_err();
        assert_eq!(err, AuthError::Malformed, "token {:.40}", token);
        assert_eq!(err.client_message(), "malformed token");
    }
    // A long but otherwise valid token is still refused by the length cap.
    let mut c = claims(&idp.issuer);
    c["pad"] = json!("x".repeat(MAX_TOKEN_LEN));
    assert_eq!(
        v.verify(&sign(&key, &c), now()).await,
        Err(AuthError::Malformed)
    );
    // A `crit` header we do not understand.
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    let mut h = serde_json::to_value(&header).unwrap();
    h["crit"] = json!(["exp"]);
    let token = raw_token(&h, &claims(&idp.issuer), &[0; 64]);
    assert_eq!(v.verify(&token, now()).await, Err(AuthError::Malformed));
}

// ---------------------------------------------------------------------------------------------
// Key cache, refresh and rotation.

#[tokio::test]
async fn unknown_kid_is_refused_after_one_refresh() {
    let key = ed_key("ed-1");
    let idp = Idp::start(&[&key]);
    let v = verifier(&idp, options(Duration::ZERO));
    let stranger = ed_key("nobody");
    let err = v
        .verify(&sign(&stranger, &claims(&idp.issuer)), now())
        .await
        .unwrap_err();
    assert_eq!(err, AuthError::UnknownKey);
    // First use fetched discovery + JWKS, the unknown kid refetched the JWKS once.
    assert_eq!(idp.hits(DISCOVERY), 1);
    assert_eq!(idp.hits(JWKS), 2);
}

#[tokio::test]
async fn key_rotation_is_followed() {
    let (old, new) = (ed_key("key-old"), rsa_key("key-new"));
    let idp = Idp::start(&[&old]);
    let v = verifier(&idp, options(Duration::ZERO));
    v.verify(&sign(&old, &claims(&idp.issuer)), now())
        .await
        .unwrap();
    assert_eq!(idp.hits(JWKS), 1);

    idp.set_keys(&[&new]);
    let id = v
        .verify(&sign(&new, &claims(&idp.issuer)), now())
        .await
        .unwrap();
    assert_eq!(id.subject, "u-123");
    assert_eq!(idp.hits(JWKS), 2);
    assert_eq!(idp.hits(DISCOVERY), 1, "jwks_uri is cached");

    // The removed key is no longer trusted.
    assert_eq!(
        v.verify(&sign(&old, &claims(&idp.issuer)), now()).await,
        Err(AuthError::UnknownKey)
    );
    assert_eq!(idp.hits(JWKS), 3);
}

#[tokio::test]
async fn unknown_kid_refresh_is_rate_limited() {
    let (a, b) = (ed_key("a"), ed_key("b"));
    let idp = Idp::start(&[&a]);
    let v = verifier(&idp, options(Duration::from_secs(60)));
    v.verify(&sign(&a, &claims(&idp.issuer)), now())
        .await
        .unwrap();
    idp.set_keys(&[&a, &b]);
    for i in 0..5 {
        assert_eq!(
            v.verify(&sign(&b, &claims(&idp.issuer)), now()).await,
            Err(AuthError::UnknownKey),
            "attempt {i}"
        );
        let random = ed_key(&format!("random-{i}"));
        assert_eq!(
            v.verify(&sign(&random, &claims(&idp.issuer)), now()).await,
            Err(AuthError::UnknownKey)
        );
    }
    assert_eq!(idp.hits(JWKS), 1, "no refetch within refresh_min_interval");

    // With a short interval, the refetch happens once the interval has passed.
    let before = idp.hits(JWKS);
    idp.set_keys(&[&a]);
    let v = verifier(&idp, options(Duration::from_millis(200)));
    v.verify(&sign(&a, &claims(&idp.issuer)), now())
        .await
        .unwrap();
    idp.set_keys(&[&a, &b]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    v.verify(&sign(&b, &claims(&idp.issuer)), now())
        .await
        .unwrap();
    assert_eq!(idp.hits(JWKS), before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_unknown_kid_logins_share_one_fetch() {
    let (a, c) = (ed_key("a"), ec_key("c"));
    let idp = Idp::start(&[&a]);
    let v = Arc::new(verifier(&idp, options(Duration::ZERO)));
    v.verify(&sign(&a, &claims(&idp.issuer)), now())
        .await
        .unwrap();
    assert_eq!(idp.hits(JWKS), 1);
    {
        let mut st = idp.state.lock().unwrap();
        st.jwks = jwks(&[&a, &c]);
        st.jwks_delay = Duration::from_millis(300);
    }
    let token = sign(&c, &claims(&idp.issuer));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let v = Arc::clone(&v);
            let token = token.clone();
            tokio::spawn(async move { v.verify(&token, now()).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(idp.hits(JWKS), 2, "16 waiting logins, one fetch");
}

#[tokio::test]
async fn stale_keys_are_kept_when_the_refetch_fails() {
    let key = ed_key("ed-1");
    let idp = Idp::start(&[&key]);
    let mut opts = options(Duration::ZERO);
    opts.jwks_max_age = Duration::ZERO; // always stale
    let v = verifier(&idp, opts);
    v.verify(&sign(&key, &claims(&idp.issuer)), now())
        .await
        .unwrap();
    assert_eq!(idp.hits(JWKS), 1);
    v.verify(&sign(&key, &claims(&idp.issuer)), now())
        .await
        .unwrap();
    assert_eq!(idp.hits(JWKS), 2, "a stale JWKS is refetched");

    idp.set_fail(true);
    v.verify(&sign(&key, &claims(&idp.issuer)), now())
        .await
        .unwrap();
    assert_eq!(idp.hits(JWKS), 3, "the refetch was tried and failed");

    // An unknown kid while the IdP fails: the refresh fails, so the IdP is reported unavailable.
    let err = v
        .verify(&sign(&ed_key("new"), &claims(&idp.issuer)), now())
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    // The failed fetch forgot the jwks_uri: discovery is tried again.
    assert!(idp.hits(DISCOVERY) >= 2);

    idp.set_fail(false);
    v.verify(&sign(&key, &claims(&idp.issuer)), now())
        .await
        .unwrap();
}

#[tokio::test]
async fn issuer_down_is_reported_unavailable() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let issuer = format!("http://127.0.0.1:{port}");
    let v = verifier_for(
        IssuerConfig::new(&issuer, vec![AUD.to_owned()]),
        options(Duration::from_secs(10)),
    );
    let token = sign(&ed_key("k"), &claims(&issuer));
    let err = v.verify(&token, now()).await.unwrap_err();
    assert!(
        matches!(&err, AuthError::IssuerUnavailable(r) if r.contains(&issuer)),
        "{err:?}"
    );
    assert!(err.is_unavailable());
    assert_eq!(err.client_message(), "identity provider unavailable");
    assert!(!err.reason().contains(&token));
    // Within the rate-limit interval the failure is reported again without a new attempt.
    assert!(v.verify(&token, now()).await.unwrap_err().is_unavailable());

    let report = v.prefetch().await;
    assert_eq!(report.len(), 1);
    assert_eq!(report[0].0, issuer);
    assert!(report[0].1.as_ref().unwrap_err().is_unavailable());
}

#[tokio::test]
async fn prefetch_warms_the_cache() {
    let (idp, key, v) = setup();
    let report = v.prefetch().await;
    assert_eq!(report, vec![(idp.issuer.clone(), Ok(()))]);
    assert_eq!((idp.hits(DISCOVERY), idp.hits(JWKS)), (1, 1));
    v.verify(&sign(&key, &claims(&idp.issuer)), now())
        .await
        .unwrap();
    assert_eq!(idp.hits(JWKS), 1);
}

// ---------------------------------------------------------------------------------------------
// Claims.

#[tokio::test]
async fn username_claim_must_be_a_non_empty_string() {
    let key = ed_key("ed-1");
    let idp = Idp::start(&[&key]);
    let mut cfg = IssuerConfig::new(&idp.issuer, vec![AUD.to_owned()]);
    cfg.username_claim = "preferred_username".to_owned();
    let v = verifier_for(cfg, options(Duration::from_secs(10)));

    let id = v
        .verify(&sign(&key, &claims(&idp.issuer)), now())
        .await
        .unwrap();
    assert_eq!(id.username, "alice");
    assert_eq!(id.subject, "u-123");

    let missing = AuthError::MissingClaim("preferred_username".to_owned());
    let mut c = claims(&idp.issuer);
    c.as_object_mut().unwrap().remove("preferred_username");
    assert_eq!(v.verify(&sign(&key, &c), now()).await, Err(missing.clone()));
    for bad in [json!(""), json!(42), json!(["alice"]), Value::Null] {
        c["preferred_username"] = bad;
        assert_eq!(v.verify(&sign(&key, &c), now()).await, Err(missing.clone()));
    }
}

#[tokio::test]
async fn groups_may_be_an_array_a_string_or_absent() {
    let key = ed_key("ed-1");
    let idp = Idp::start(&[&key]);
    let mut cfg = IssuerConfig::new(&idp.issuer, vec![AUD.to_owned()]);
    cfg.groups_claim = "roles".to_owned();
    cfg.email_claim = "mail".to_owned();
    let v = verifier_for(cfg, options(Duration::from_secs(10)));

    let mut c = claims(&idp.issuer);
    c["roles"] = json!(["readers", "writers"]);
    c["mail"] = json!("a@example.org");
    let id = v.verify(&sign(&key, &c), now()).await.unwrap();
    assert_eq!(id.groups, vec!["readers".to_owned(), "writers".to_owned()]);
    assert_eq!(id.email.as_deref(), Some("a@example.org"));

    c["roles"] = json!("readers");
    let id = v.verify(&sign(&key, &c), now()).await.unwrap();
    assert_eq!(id.groups, vec!["readers".to_owned()]);

    c.as_object_mut().unwrap().remove("roles");
    c.as_object_mut().unwrap().remove("mail");
    let id = v.verify(&sign(&key, &c), now()).await.unwrap();
    assert!(id.groups.is_empty());
    assert_eq!(id.email, None);

    c["roles"] = json!(["ok", 7]);
    assert_eq!(
        v.verify(&sign(&key, &c), now()).await,
        Err(AuthError::InvalidClaim("roles".to_owned()))
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration.

#[test]
fn verifier_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Verifier>();
}

#[test]
fn issuer_urls_are_checked() {
    let opts = VerifierOptions::default();
    let build = |issuer: &str| {
        Verifier::new(
            vec![IssuerConfig::new(issuer, vec![AUD.to_owned()])],
            None,
            opts,
        )
    };
    for ok in [
        "http://127.0.0.1:9000",
        "http://127.3.4.5",
        "http://localhost:8080/realms/x",
        "http://[::1]:9000",
        "https://idp.example.com",
        "https://idp.example.com/tenant/",
    ] {
        build(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for insecure in ["http://idp.example.com", "http://10.0.0.1", "http://[::2]"] {
        assert!(
            matches!(build(insecure), Err(ConfigError::InsecureIssuer(_))),
            "{insecure}"
        );
    }
    for invalid in ["ftp://x", "not a url", "https://x/?q=1", "https://u:p@x"] {
        assert!(
            matches!(build(invalid), Err(ConfigError::InvalidIssuer { .. })),
            "{invalid}"
        );
    }
    assert!(matches!(
        Verifier::new(vec![], None, opts),
        Err(ConfigError::NoIssuers)
    ));
    let mut cfg = IssuerConfig::new("https://a", vec![]);
    assert!(matches!(
        Verifier::new(vec![cfg.clone()], None, opts),
        Err(ConfigError::EmptyAudience(_))
    ));
    cfg.audience = vec![AUD.to_owned()];
    assert!(matches!(
        Verifier::new(vec![cfg.clone(), cfg.clone()], None, opts),
        Err(ConfigError::DuplicateIssuer(_))
    ));
    cfg.groups_claim = String::new();
    assert!(matches!(
        Verifier::new(vec![cfg], None, opts),
        Err(ConfigError::EmptyClaimName {
            field: "groups_claim",
            ..
        })
    ));
}

#[test]
fn ca_file_must_hold_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let opts = VerifierOptions::default();
    let with_ca = |path: &Path| {
        let mut cfg = IssuerConfig::new("https://idp.example.com", vec![AUD.to_owned()]);
        cfg.ca_file = Some(path.to_owned());
        Verifier::new(vec![cfg], None, opts)
    };
    assert!(matches!(
        with_ca(&dir.path().join("missing.pem")),
        Err(ConfigError::CaFile { .. })
    ));
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    assert!(matches!(with_ca(&garbage), Err(ConfigError::CaFile { .. })));

    let key = dir.path().join("ca.key");
    let cert = dir.path().join("ca.pem");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=test-ca",
        "-days",
        "1",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    with_ca(&cert).unwrap();
}

/// A test CA (PEM) and a rustls server config whose certificate for 127.0.0.1 it signed.
fn tls_material() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "gatehouse test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    (ca_cert.pem(), Arc::new(config))
}

#[tokio::test]
async fn https_issuer_is_trusted_through_its_ca_file() {
    let key = ec_key("ec-1");
    let (ca_pem, server) = tls_material();
    let idp = Idp::start_with(&[&key], "", Some(server));
    assert!(idp.issuer.starts_with("https://127.0.0.1:"));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();

    let mut cfg = IssuerConfig::new(&idp.issuer, vec![AUD.to_owned()]);
    cfg.ca_file = Some(ca_file);
    let v = verifier_for(cfg, options(Duration::from_secs(10)));
    let token = sign(&key, &claims(&idp.issuer));
    v.verify(&token, now()).await.unwrap();
    assert_eq!((idp.hits(DISCOVERY), idp.hits(JWKS)), (1, 1));

    // With the built-in web PKI roots the test CA is not trusted: no request gets through.
    let v = verifier(&idp, options(Duration::from_secs(10)));
    let err = v.verify(&token, now()).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(idp.hits(DISCOVERY), 1);
}

// ---------------------------------------------------------------------------------------------
// Development issuer.

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn dev_issuer_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let key_dir = dir.path().join("dev-issuer");
    let dev = DevIssuer::load_or_create(&key_dir, AUD).unwrap();
    assert_eq!(mode(&key_dir), 0o700);
    assert_eq!(mode(&key_dir.join("ed25519.pk8")), 0o600);
    assert_eq!(dev.issuer(), DEV_ISSUER);

    let groups = vec!["dba".to_owned()];
    let token = dev
        .mint("alice", &groups, Duration::from_secs(600), now())
        .unwrap();
    let kid = dev.kid().to_owned();
    let v = Verifier::new(vec![], Some(dev), VerifierOptions::default()).unwrap();
    assert!(v.dev_issuer_enabled());
    let id = v.verify(&token, now()).await.unwrap();
    assert_eq!(id.issuer, DEV_ISSUER);
    assert_eq!(id.subject, "alice");
    assert_eq!(id.username, "alice");
    assert_eq!(id.groups, groups);
    assert!(id.token_id.is_some());
    assert_eq!(id.expires_at, now() + Duration::from_secs(600));

    // Expired later on.
    assert_eq!(
        v.verify(&token, now() + Duration::from_secs(3600)).await,
        Err(AuthError::Expired)
    );
    // jti is random.
    let dev = DevIssuer::load_or_create(&key_dir, AUD).unwrap();
    assert_eq!(dev.kid(), kid, "the key is persisted");
    let again = dev
        .mint("alice", &groups, Duration::from_secs(600), now())
        .unwrap();
    let id2 = v.verify(&again, now()).await.unwrap();
    assert_ne!(id.token_id, id2.token_id);
}

#[tokio::test]
async fn dev_token_is_refused_without_the_dev_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevIssuer::load_or_create(dir.path(), AUD).unwrap();
    let token = dev
        .mint("alice", &[], Duration::from_secs(60), now())
        .unwrap();

    let v = verifier_for(
        IssuerConfig::new("http://127.0.0.1:1", vec![AUD.to_owned()]),
        options(Duration::from_secs(10)),
    );
    assert_eq!(v.verify(&token, now()).await, Err(AuthError::UnknownIssuer));

    // Another development key is not this one.
    let other_dir = tempfile::tempdir().unwrap();
    let other = DevIssuer::load_or_create(other_dir.path(), AUD).unwrap();
    assert_ne!(other.kid(), dev.kid());
    let v = Verifier::new(vec![], Some(other), VerifierOptions::default()).unwrap();
    assert_eq!(v.verify(&token, now()).await, Err(AuthError::UnknownKey));

    // Same key, other audience.
    let v = Verifier::new(
        vec![],
        Some(DevIssuer::load_or_create(dir.path(), "elsewhere").unwrap()),
        VerifierOptions::default(),
    )
    .unwrap();
    assert_eq!(v.verify(&token, now()).await, Err(AuthError::WrongAudience));

    // Tampered dev token.
    let kid = dev.kid().to_owned();
    let v = Verifier::new(vec![], Some(dev), VerifierOptions::default()).unwrap();
    // An ES256 token naming the development key.
    let ec = ec_key(&kid);
    let mut c = claims(DEV_ISSUER);
    c["sub"] = json!("alice");
    assert!(matches!(
        v.verify(&sign(&ec, &c), now()).await,
        Err(AuthError::AlgorithmMismatch(_))
    ));
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["sub"] = json!("root");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(payload.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(v.verify(&forged, now()).await, Err(AuthError::BadSignature));
}

#[test]
fn dev_issuer_refuses_loose_key_permissions_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevIssuer::load_or_create(dir.path(), AUD).unwrap();
    assert!(matches!(
        dev.mint("", &[], Duration::from_secs(60), now()),
        Err(DevIssuerError::EmptyUser)
    ));
    assert!(matches!(
        dev.mint("a", &[], Duration::from_millis(500), now()),
        Err(DevIssuerError::InvalidTtl)
    ));
    assert!(matches!(
        DevIssuer::load_or_create(dir.path(), ""),
        Err(DevIssuerError::EmptyAudience)
    ));

    let key_file = dir.path().join("ed25519.pk8");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        DevIssuer::load_or_create(dir.path(), AUD),
        Err(DevIssuerError::KeyFilePermissions { .. })
    ));
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&key_file, b"garbage").unwrap();
    assert!(matches!(
        DevIssuer::load_or_create(dir.path(), AUD),
        Err(DevIssuerError::InvalidKey { .. })
    ));
}

#[tokio::test]
async fn debug_output_shows_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevIssuer::load_or_create(dir.path(), AUD).unwrap();
    let pkcs8 = std::fs::read(dir.path().join("ed25519.pk8")).unwrap();
    let seed = &pkcs8[16..48]; // the private key bytes in ring's PKCS#8 v2 layout
    let token = dev
        .mint("alice", &[], Duration::from_secs(60), now())
        .unwrap();
    let dev_debug = format!("{dev:?}");
    for needle in [
        b64(seed),
        b64(&pkcs8),
        format!("{seed:?}"),
        format!("{:?}", &pkcs8[..]),
    ] {
        assert!(!dev_debug.contains(&needle), "{dev_debug}");
    }
    assert!(dev_debug.contains(dev.kid()));

    let v = Verifier::new(vec![], Some(dev), VerifierOptions::default()).unwrap();
    let mut bad = token.clone();
    bad.push('x');
    let err = v.verify(&bad, now()).await.unwrap_err();
    let signature = token.rsplit('.').next().unwrap();
    for text in [
        format!("{v:?}"),
        format!("{err:?}"),
        err.reason(),
        err.to_string(),
    ] {
        assert!(!text.contains(signature), "{text}");
    }
}
