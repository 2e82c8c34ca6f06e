//! Every TPM command the key store sends, through `tss-esapi`. Nothing outside this module
//! names a TSS type in its signatures except the blob types it stores.
//!
//! Handle discipline: a [`Tpm`] is one connection (one ESYS context) used for one key-store
//! operation and then dropped. Every transient object and session it creates is flushed
//! explicitly before the operation returns, on success and on error ([`Tpm::flushing`]);
//! dropping the context flushes anything still tracked as a second line of defence. No TPM
//! resource outlives an operation, so a TPM without a resource manager (swtpm over TCP,
//! `/dev/tpm0`) never runs out of object slots (`TPM_RC_OBJECT_MEMORY`, 0x902).
//!
//! Parameter encryption: secrets cross the bus only inside salted sessions bound to the
//! primary key: the data key going into `TPM2_Create` (decrypt attribute) and coming out of
//! `TPM2_Unseal` (encrypt attribute) are AES-128-CFB encrypted with a session key that only
//! this TPM can derive.

use std::str::FromStr;

use ring::rand::SecureRandom;
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::constants::{PropertyTag, SessionType};
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, EccParameter, EccPoint, EccScheme, HashScheme, HashcheckTicket, KeyedHashScheme,
    PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Private, Public, PublicBuilder,
    PublicEccParametersBuilder, PublicKeyedHashParameters, SensitiveData, Signature,
    SignatureScheme, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::Context;
use zeroize::Zeroizing;

use crate::der;
use crate::error::TpmError;
use crate::TpmInfo;
use gatehouse_board::DATA_KEY_LEN;

/// An open connection to the TPM for one key-store operation.
pub(crate) struct Tpm {
    ctx: Context,
}

/// The primary storage key, loaded for the duration of one operation.
#[derive(Clone, Copy)]
pub(crate) struct Primary {
    handle: KeyHandle,
}

/// A TPM-wrapped object as stored on disk: its public area and its private area encrypted
/// under the primary key.
pub(crate) struct Blob {
    pub(crate) public: Public,
    pub(crate) private: Private,
}

impl Tpm {
    /// Opens a connection through `tcti` (for example `device:/dev/tpmrm0` or
    /// `swtpm:host=127.0.0.1,port=2321`).
    pub(crate) fn connect(tcti: &str) -> Result<Tpm, TpmError> {
        let connect_err = |source| TpmError::Connect {
            tcti: tcti.to_owned(),
            source,
        };
        let conf = TctiNameConf::from_str(tcti).map_err(connect_err)?;
        let ctx = Context::new(conf).map_err(connect_err)?;
        Ok(Tpm { ctx })
    }

    /// Reads the manufacturer, vendor strings and firmware version.
    pub(crate) fn info(&mut self) -> Result<TpmInfo, TpmError> {
        let mut prop = |tag| {
            self.ctx
                .get_tpm_property(tag)
                .map_err(TpmError::tpm("get capability (TPM properties)"))
        };
        let manufacturer = prop(PropertyTag::Manufacturer)?.unwrap_or(0);
        let mut vendor = String::new();
        for tag in [
            PropertyTag::VendorString1,
            PropertyTag::VendorString2,
            PropertyTag::VendorString3,
            PropertyTag::VendorString4,
        ] {
            if let Some(v) = prop(tag)? {
                vendor.push_str(&ascii(v));
            }
        }
        let fw1 = prop(PropertyTag::FirmwareVersion1)?.unwrap_or(0);
        let fw2 = prop(PropertyTag::FirmwareVersion2)?.unwrap_or(0);
        let revision = prop(PropertyTag::Revision)?.unwrap_or(0);
        Ok(TpmInfo {
            manufacturer: ascii(manufacturer).trim().to_owned(),
            manufacturer_id: manufacturer,
            vendor: vendor.trim().to_owned(),
            firmware_version: format!(
                "{}.{}.{}.{}",
                fw1 >> 16,
                fw1 & 0xffff,
                fw2 >> 16,
                fw2 & 0xffff
            ),
            firmware_version_raw: [fw1, fw2],
            spec_revision: format!("{}.{:02}", revision / 100, revision % 100),
        })
    }

    /// Creates the primary storage key from the fixed template (the TCG "ECC P-256 SRK"
    /// template: restricted decryption key, AES-128-CFB, all-zero unique), runs `f` with
    /// it and flushes it. The same TPM always derives the same key from its owner seed, so
    /// nothing needs to be persisted in the TPM. `f` also receives the key's TPM name.
    pub(crate) fn with_primary<T>(
        &mut self,
        f: impl FnOnce(&mut Tpm, Primary, &[u8]) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let template = primary_template()?;
        let created = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(TpmError::tpm("create primary key"))?;
        let handle = created.key_handle;
        self.flushing(handle.into(), |tpm| {
            let name = tpm
                .ctx
                .tr_get_name(handle.into())
                .map_err(TpmError::tpm("read primary key name"))?;
            f(tpm, Primary { handle }, name.value())
        })
    }

    /// The policy digest of "these PCRs (SHA-256 bank) have their current values",
    /// computed by the TPM in a trial session.
    pub(crate) fn pcr_policy_digest(&mut self, pcrs: &[u8]) -> Result<Digest, TpmError> {
        let selection = pcr_selection(pcrs)?;
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Trial,
                SymmetricDefinition::Null,
                HashingAlgorithm::Sha256,
            )
            .map_err(TpmError::tpm("start trial session"))?
            .ok_or(TpmError::UnexpectedResponse("session handle"))?;
        self.flushing_session(session, |tpm| {
            let policy =
                PolicySession::try_from(session).map_err(TpmError::tpm("start trial session"))?;
            tpm.ctx
                .policy_pcr(policy, Digest::default(), selection)
                .map_err(TpmError::tpm("policy PCR (trial)"))?;
            tpm.ctx
                .policy_get_digest(policy)
                .map_err(TpmError::tpm("policy get digest"))
        })
    }

    /// 32 random bytes: the TPM's generator XOR the operating system's, so the key is
    /// good if either source is.
    pub(crate) fn random_key(&mut self) -> Result<Zeroizing<[u8; DATA_KEY_LEN]>, TpmError> {
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        ring::rand::SystemRandom::new()
            .fill(&mut key[..])
            .map_err(|_| TpmError::Random)?;
        let tpm_bytes = self
            .ctx
            .execute_without_session(|ctx| ctx.get_random(DATA_KEY_LEN))
            .map_err(TpmError::tpm("get random"))?;
        if tpm_bytes.len() != DATA_KEY_LEN {
            return Err(TpmError::UnexpectedResponse("random length"));
        }
        for (k, t) in key.iter_mut().zip(tpm_bytes.value()) {
            *k ^= t;
        }
        Ok(key)
    }

    /// Seals `key` into a keyed-hash data object under `primary`. With `policy`, the object
    /// can only be unsealed through that policy (PCR binding); without, by empty auth.
    pub(crate) fn seal(
        &mut self,
        primary: Primary,
        key: &[u8; DATA_KEY_LEN],
        policy: Option<&Digest>,
    ) -> Result<Blob, TpmError> {
        let mut attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_no_da(true)
            .with_user_with_auth(policy.is_none());
        // The data is ours, not the TPM's: sensitiveDataOrigin must be clear for a seal.
        attributes = attributes.with_sensitive_data_origin(false);
        let mut template = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::KeyedHash)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(
                attributes
                    .build()
                    .map_err(TpmError::tpm("build seal attributes"))?,
            )
            .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
            .with_keyed_hash_unique_identifier(Digest::default());
        if let Some(policy) = policy {
            template = template.with_auth_policy(policy.clone());
        }
        let template = template
            .build()
            .map_err(TpmError::tpm("build seal template"))?;
        let data = SensitiveData::try_from(key.to_vec())
            .map_err(TpmError::tpm("wrap data key for sealing"))?;
        let session = self.salted_session(primary, SessionType::Hmac, false, true)?;
        let created = self.flushing_session(session, |tpm| {
            tpm.ctx
                .execute_with_session(Some(session), |ctx| {
                    ctx.create(primary.handle, template, None, Some(data), None, None)
                })
                .map_err(TpmError::tpm("create sealed object"))
        })?;
        Ok(Blob {
            public: created.out_public,
            private: created.out_private,
        })
    }

    /// Creates the ECDSA P-256 / SHA-256 signing key under `primary`. Its private part is
    /// generated inside the TPM and only ever leaves it wrapped.
    pub(crate) fn create_signing_key(
        &mut self,
        primary: Primary,
        policy: Option<&Digest>,
    ) -> Result<Blob, TpmError> {
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_no_da(true)
            .with_user_with_auth(policy.is_none())
            .with_sign_encrypt(true)
            .with_decrypt(false)
            .with_restricted(false)
            .build()
            .map_err(TpmError::tpm("build signing-key attributes"))?;
        let mut template = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_ecc_parameters(
                PublicEccParametersBuilder::new_unrestricted_signing_key(
                    EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                    EccCurve::NistP256,
                )
                .build()
                .map_err(TpmError::tpm("build signing-key parameters"))?,
            )
            .with_ecc_unique_identifier(EccPoint::default());
        if let Some(policy) = policy {
            template = template.with_auth_policy(policy.clone());
        }
        let template = template
            .build()
            .map_err(TpmError::tpm("build signing-key template"))?;
        let created = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create(primary.handle, template, None, None, None, None)
            })
            .map_err(TpmError::tpm("create signing key"))?;
        Ok(Blob {
            public: created.out_public,
            private: created.out_private,
        })
    }

    /// Loads `blob` under `primary` and unseals it; `pcrs` non-empty means the object is
    /// bound to a PCR policy over them.
    pub(crate) fn unseal(
        &mut self,
        primary: Primary,
        blob: &Blob,
        pcrs: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let handle = self.load(primary, blob)?;
        self.flushing(handle.into(), |tpm| {
            let session = tpm.object_session(primary, pcrs, true)?;
            tpm.flushing_session(session, |tpm| {
                let data = tpm
                    .ctx
                    .execute_with_session(Some(session), |ctx| ctx.unseal(handle.into()))
                    .map_err(TpmError::tpm("unseal"))?;
                Ok(Zeroizing::new(data.value().to_vec()))
            })
        })
    }

    /// Loads the signing key and signs the SHA-256 `digest`; returns the DER
    /// `Ecdsa-Sig-Value`.
    pub(crate) fn sign(
        &mut self,
        primary: Primary,
        blob: &Blob,
        pcrs: &[u8],
        digest: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        let digest =
            Digest::try_from(digest.to_vec()).map_err(TpmError::tpm("wrap digest for signing"))?;
        // An unrestricted key needs no proof the TPM hashed the message: the NULL ticket.
        let validation = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .map_err(TpmError::tpm("build hashcheck ticket"))?;
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
        };
        let handle = self.load(primary, blob)?;
        let signature = self.flushing(handle.into(), |tpm| {
            if pcrs.is_empty() {
                return tpm
                    .ctx
                    .execute_with_session(Some(AuthSession::Password), |ctx| {
                        ctx.sign(handle, digest, scheme, validation)
                    })
                    .map_err(TpmError::tpm("sign"));
            }
            let session = tpm.object_session(primary, pcrs, false)?;
            tpm.flushing_session(session, |tpm| {
                tpm.ctx
                    .execute_with_session(Some(session), |ctx| {
                        ctx.sign(handle, digest, scheme, validation)
                    })
                    .map_err(TpmError::tpm("sign"))
            })
        })?;
        match signature {
            Signature::EcDsa(sig) => {
                der::ecdsa_signature(sig.signature_r().value(), sig.signature_s().value())
                    .ok_or(TpmError::UnexpectedResponse("signature size"))
            }
            _ => Err(TpmError::UnexpectedResponse("signature algorithm")),
        }
    }

    fn load(&mut self, primary: Primary, blob: &Blob) -> Result<KeyHandle, TpmError> {
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.load(primary.handle, blob.private.clone(), blob.public.clone())
            })
            .map_err(TpmError::tpm("load object"))
    }

    /// The session that authorises use of a loaded object: a salted HMAC session (empty
    /// auth) or, with PCRs, a salted policy session that has passed `PolicyPCR`.
    /// `encrypt` asks for the response parameter to be encrypted (for `Unseal`).
    fn object_session(
        &mut self,
        primary: Primary,
        pcrs: &[u8],
        encrypt: bool,
    ) -> Result<AuthSession, TpmError> {
        if pcrs.is_empty() {
            return self.salted_session(primary, SessionType::Hmac, encrypt, false);
        }
        let selection = pcr_selection(pcrs)?;
        let session = self.salted_session(primary, SessionType::Policy, encrypt, false)?;
        let passed = PolicySession::try_from(session)
            .map_err(TpmError::tpm("start policy session"))
            .and_then(|policy| {
                self.ctx
                    .policy_pcr(policy, Digest::default(), selection)
                    .map_err(TpmError::tpm("policy PCR"))
            });
        match passed {
            Ok(()) => Ok(session),
            Err(e) => {
                // Best effort: the original error is the one worth reporting.
                let _ = self.ctx.flush_context(SessionHandle::from(session).into());
                Err(e)
            }
        }
    }

    /// Starts a session salted with the primary key (so only this TPM can derive its key)
    /// with AES-128-CFB parameter encryption as asked.
    fn salted_session(
        &mut self,
        primary: Primary,
        kind: SessionType,
        encrypt: bool,
        decrypt: bool,
    ) -> Result<AuthSession, TpmError> {
        let session = self
            .ctx
            .start_auth_session(
                Some(primary.handle),
                None,
                None,
                kind,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(TpmError::tpm("start auth session"))?
            .ok_or(TpmError::UnexpectedResponse("session handle"))?;
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_continue_session(true)
            .with_encrypt(encrypt)
            .with_decrypt(decrypt)
            .build();
        if let Err(e) = self.ctx.tr_sess_set_attributes(session, attributes, mask) {
            let _ = self.ctx.flush_context(SessionHandle::from(session).into());
            return Err(TpmError::tpm("set session attributes")(e));
        }
        Ok(session)
    }

    /// Runs `f`, then flushes `handle` whatever `f` returned. The first error wins.
    fn flushing<T>(
        &mut self,
        handle: ObjectHandle,
        f: impl FnOnce(&mut Tpm) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let result = f(self);
        let flushed = self
            .ctx
            .flush_context(handle)
            .map_err(TpmError::tpm("flush context"));
        match (result, flushed) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
            (Ok(v), Ok(())) => Ok(v),
        }
    }

    fn flushing_session<T>(
        &mut self,
        session: AuthSession,
        f: impl FnOnce(&mut Tpm) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        self.flushing(SessionHandle::from(session).into(), f)
    }
}

/// The fixed primary template: TCG EK/SRK credential profile "ECC NIST P-256 storage key"
/// (restricted decrypt, AES-128-CFB, SHA-256 name, noDA, unique = two 32-byte zero
/// strings). Same template, same TPM, same owner seed → same key, every time.
fn primary_template() -> Result<Public, TpmError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .with_sign_encrypt(false)
        .build()
        .map_err(TpmError::tpm("build primary attributes"))?;
    let zero = || {
        EccParameter::try_from(vec![0u8; der::P256_SCALAR_LEN])
            .map_err(TpmError::tpm("build primary unique"))
    };
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()
            .map_err(TpmError::tpm("build primary parameters"))?,
        )
        .with_ecc_unique_identifier(EccPoint::new(zero()?, zero()?))
        .build()
        .map_err(TpmError::tpm("build primary template"))
}

/// The uncompressed SEC1 public key of an ECC object's public area.
pub(crate) fn ecc_public_sec1(public: &Public) -> Result<Vec<u8>, TpmError> {
    match public {
        Public::Ecc { unique, .. } => {
            der::sec1_uncompressed(unique.x().value(), unique.y().value())
                .ok_or(TpmError::UnexpectedResponse("public key size"))
        }
        _ => Err(TpmError::UnexpectedResponse("public key type")),
    }
}

fn pcr_selection(pcrs: &[u8]) -> Result<PcrSelectionList, TpmError> {
    let slots = pcrs
        .iter()
        .map(|&i| {
            1u32.checked_shl(u32::from(i))
                .and_then(|bit| PcrSlot::try_from(bit).ok())
                .ok_or_else(|| TpmError::InvalidPcrSelection(pcrs.to_vec()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(TpmError::tpm("build PCR selection"))
}

/// A TPM property word as the four ASCII characters it packs (vendor strings,
/// manufacturer), NULs dropped.
fn ascii(word: u32) -> String {
    word.to_be_bytes()
        .iter()
        .filter(|b| **b != 0)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn property_words_decode_as_ascii() {
        assert_eq!(ascii(u32::from_be_bytes(*b"IBM ")), "IBM ");
        assert_eq!(ascii(u32::from_be_bytes([b'S', b'W', 0, 0])), "SW");
        assert_eq!(ascii(u32::from_be_bytes([b'A', 0x01, b'B', 0])), "A?B");
    }

    #[test]
    fn pcr_selection_accepts_only_real_indices() {
        assert!(pcr_selection(&[0, 7, 16, 23]).is_ok());
        assert!(matches!(
            pcr_selection(&[32]),
            Err(TpmError::InvalidPcrSelection(_))
        ));
    }
}
