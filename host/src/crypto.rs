//! Cryptography of archive format v1: key derivation, data-key wrapping, the chunked
//! AES-256-GCM STREAM construction and the metadata MAC. See docs/FORMAT.md.
//!
//! All of it is `ring` (one audited crate, already a dependency of the TLS stack): the system
//! random source, HKDF-SHA256, HMAC-SHA256, the engine's SHA-256 (SHA-NI) and AES-256-GCM,
//! whose AES-NI/VAES + CLMUL assembly seals 4.7x faster than RustCrypto's `aes-gcm` 0.10 on
//! this machine (docs/PERFORMANCE.md, issue 18).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

pub const KEY_LEN: usize = 32;
pub const TAG_LEN: usize = 16;
pub const NONCE_PREFIX_LEN: usize = 7;

const INFO_WRAP: &[u8] = b"couchvault/v1/wrap";
const INFO_MAC: &[u8] = b"couchvault/v1/metadata-mac";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the system random number generator failed")]
    Random,
    #[error(
        "cannot unwrap the backup's data key with tenant key '{key_id}': the key ring holds a \
         different key under that id, or the metadata was altered"
    )]
    Unwrap { key_id: String },
    #[error(
        "chunk {index} of the data stream failed authentication: the backup is corrupt, \
         truncated, reordered or tampered with"
    )]
    ChunkAuth { index: u64 },
    #[error("the data stream has more than 2^32 chunks; use a larger chunk size")]
    TooManyChunks,
}

/// A 256-bit secret. Never printed: Debug is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub [u8; KEY_LEN]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    pub fn random() -> Result<Self, CryptoError> {
        let mut k = [0u8; KEY_LEN];
        fill_random(&mut k)?;
        Ok(SecretKey(k))
    }

    /// HKDF-SHA256 with an empty salt and `info` naming the purpose.
    fn derive(&self, info: &[u8]) -> SecretKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(&self.0);
        let mut out = [0u8; KEY_LEN];
        // Expanding 32 bytes of SHA-256 output cannot fail.
        prk.expand(&[info], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out))
            .expect("HKDF-SHA256 expand of 32 bytes");
        SecretKey(out)
    }
}

pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| CryptoError::Random)
}

fn aead_key(key: &SecretKey) -> LessSafeKey {
    // A 32-byte key is what AES-256-GCM takes: this cannot fail.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key.0).expect("AES-256 key of 32 bytes"))
}

/// The associated data that binds a wrapped data key to its backup.
fn wrap_aad(tenant: &str, key_id: &str, backup_id: &str) -> Vec<u8> {
    format!("couchvault/v1/wrap|{tenant}|{key_id}|{backup_id}").into_bytes()
}

/// A data key sealed under a tenant key: AES-256-GCM, key = HKDF(tenant key, "couchvault/v1/wrap").
pub struct WrappedKey {
    pub nonce: [u8; 12],
    pub ciphertext: Vec<u8>,
}

pub fn wrap_data_key(
    tenant_key: &SecretKey,
    data_key: &SecretKey,
    tenant: &str,
    key_id: &str,
    backup_id: &str,
) -> Result<WrappedKey, CryptoError> {
    let kek = aead_key(&tenant_key.derive(INFO_WRAP));
    let mut nonce = [0u8; 12];
    fill_random(&mut nonce)?;
    let mut buf = data_key.0.to_vec();
    kek.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(wrap_aad(tenant, key_id, backup_id)),
        &mut buf,
    )
    .map_err(|_| CryptoError::Random)?;
    Ok(WrappedKey {
        nonce,
        ciphertext: buf,
    })
}

pub fn unwrap_data_key(
    tenant_key: &SecretKey,
    wrapped: &WrappedKey,
    tenant: &str,
    key_id: &str,
    backup_id: &str,
) -> Result<SecretKey, CryptoError> {
    let kek = aead_key(&tenant_key.derive(INFO_WRAP));
    let mut buf = wrapped.ciphertext.clone();
    let plain = kek
        .open_in_place(
            Nonce::assume_unique_for_key(wrapped.nonce),
            Aad::from(wrap_aad(tenant, key_id, backup_id)),
            &mut buf,
        )
        .map_err(|_| CryptoError::Unwrap {
            key_id: key_id.to_string(),
        })?;
    let key: [u8; KEY_LEN] = (&*plain).try_into().map_err(|_| CryptoError::Unwrap {
        key_id: key_id.to_string(),
    })?;
    Ok(SecretKey(key))
}

/// HMAC-SHA256 of the metadata document, keyed by HKDF(tenant key, "couchvault/v1/metadata-mac").
pub fn metadata_mac(tenant_key: &SecretKey, document: &[u8]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &tenant_key.derive(INFO_MAC).0);
    let tag = hmac::sign(&key, document);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

pub fn metadata_mac_verify(tenant_key: &SecretKey, document: &[u8], mac: &[u8]) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &tenant_key.derive(INFO_MAC).0);
    hmac::verify(&key, document, mac).is_ok()
}

/// STREAM nonce: 7-byte random prefix, 32-bit big-endian chunk counter, 1-byte last-chunk flag.
fn stream_nonce(prefix: &[u8; NONCE_PREFIX_LEN], counter: u32, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..NONCE_PREFIX_LEN].copy_from_slice(prefix);
    n[NONCE_PREFIX_LEN..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// Seals consecutive chunks of one data stream. The stream header is the AAD of every chunk.
pub struct StreamSealer {
    key: LessSafeKey,
    prefix: [u8; NONCE_PREFIX_LEN],
    aad: Vec<u8>,
    counter: u64,
}

impl StreamSealer {
    pub fn new(data_key: &SecretKey, prefix: [u8; NONCE_PREFIX_LEN], aad: Vec<u8>) -> Self {
        StreamSealer {
            key: aead_key(data_key),
            prefix,
            aad,
            counter: 0,
        }
    }

    /// Encrypts `buf` in place and appends the 16-byte tag.
    pub fn seal(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<(), CryptoError> {
        let counter = u32::try_from(self.counter).map_err(|_| CryptoError::TooManyChunks)?;
        let nonce = stream_nonce(&self.prefix, counter, last);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&self.aad),
                buf,
            )
            .map_err(|_| CryptoError::TooManyChunks)?;
        self.counter += 1;
        Ok(())
    }
}

/// Opens consecutive chunks of one data stream; the inverse of [`StreamSealer`].
pub struct StreamOpener {
    key: LessSafeKey,
    prefix: [u8; NONCE_PREFIX_LEN],
    aad: Vec<u8>,
    counter: u64,
}

impl StreamOpener {
    pub fn new(data_key: &SecretKey, prefix: [u8; NONCE_PREFIX_LEN], aad: Vec<u8>) -> Self {
        StreamOpener {
            key: aead_key(data_key),
            prefix,
            aad,
            counter: 0,
        }
    }

    /// Decrypts a frame (ciphertext + tag) in place; returns the plaintext length.
    pub fn open(&mut self, frame: &mut [u8], last: bool) -> Result<usize, CryptoError> {
        let index = self.counter;
        let counter = u32::try_from(index).map_err(|_| CryptoError::TooManyChunks)?;
        let nonce = stream_nonce(&self.prefix, counter, last);
        let failed = || CryptoError::ChunkAuth { index };
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&self.aad),
                frame,
            )
            .map_err(|_| failed())?
            .len();
        self.counter += 1;
        Ok(plain)
    }

    pub fn chunks_opened(&self) -> u64 {
        self.counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_roundtrip_and_binding() {
        let tk = SecretKey::random().unwrap();
        let dk = SecretKey::random().unwrap();
        let w = wrap_data_key(&tk, &dk, "t", "k1", "b1").unwrap();
        assert_eq!(unwrap_data_key(&tk, &w, "t", "k1", "b1").unwrap(), dk);
        assert!(unwrap_data_key(&tk, &w, "t", "k1", "b2").is_err());
        let other = SecretKey::random().unwrap();
        assert!(unwrap_data_key(&other, &w, "t", "k1", "b1").is_err());
    }

    #[test]
    fn stream_detects_reorder_and_truncation() {
        let dk = SecretKey::random().unwrap();
        let mut s = StreamSealer::new(&dk, [7; 7], b"hdr".to_vec());
        let mut a = b"first".to_vec();
        let mut b = b"second".to_vec();
        s.seal(&mut a, false).unwrap();
        s.seal(&mut b, true).unwrap();

        let mut o = StreamOpener::new(&dk, [7; 7], b"hdr".to_vec());
        assert_eq!(o.open(&mut a.clone(), false).unwrap(), 5);
        assert!(o.open(&mut b.clone(), false).is_err(), "last flag is bound");
        let mut o = StreamOpener::new(&dk, [7; 7], b"hdr".to_vec());
        assert!(o.open(&mut b.clone(), true).is_err(), "position is bound");
        let mut o = StreamOpener::new(&dk, [7; 7], b"hdr".to_vec());
        assert!(
            o.open(&mut a.clone(), true).is_err(),
            "truncation after chunk 0"
        );
        let mut o = StreamOpener::new(&dk, [7; 7], b"other".to_vec());
        assert!(o.open(&mut a, false).is_err(), "header is bound");
    }

    #[test]
    fn mac_verifies() {
        let tk = SecretKey::random().unwrap();
        let mac = metadata_mac(&tk, b"doc");
        assert!(metadata_mac_verify(&tk, b"doc", &mac));
        assert!(!metadata_mac_verify(&tk, b"doc2", &mac));
    }
}
