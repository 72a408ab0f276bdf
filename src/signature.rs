//! `Cx-Signature`: the RSA-SHA256 signature Carerix puts on each delivery, over the raw body, with
//! the private key of the webhook application. Used by the receiver (every delivery) and the sync
//! (the key it keeps for its registration); neither depends on the other for it.

use base64::Engine as _;
use rsa::{
    RsaPublicKey,
    pkcs1::DecodeRsaPublicKey,
    pkcs1v15::{Signature, VerifyingKey},
    pkcs8::DecodePublicKey,
    signature::Verifier,
};
use sha2::Sha256;

/// Parses a PEM public key (SPKI `PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY`) into a verifier.
pub fn parse_public_key(pem: &str) -> Option<VerifyingKey<Sha256>> {
    let key = RsaPublicKey::from_public_key_pem(pem.trim())
        .ok()
        .or_else(|| RsaPublicKey::from_pkcs1_pem(pem.trim()).ok())?;
    Some(VerifyingKey::<Sha256>::new(key))
}

/// Whether `signature` (base64) is a valid RSASSA-PKCS1-v1_5 SHA-256 signature of `body`.
pub fn verify_signature(key: &VerifyingKey<Sha256>, body: &[u8], signature: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let Ok(sig) = Signature::try_from(raw.as_slice()) else {
        return false;
    };
    key.verify(body, &sig).is_ok()
}
