//! Noise's ChaChaPoly (RFC 8439 with the Noise nonce layout: 32 zero bits, then the 64-bit
//! counter little-endian) computed by aws-lc-rs, the project's AEAD library, instead of
//! snow's default RustCrypto backend: every frame after the handshake passes through it
//! (SPEC §11), and aws-lc's assembly is faster on small messages, which is what replicas
//! mostly send. The handshake's DH and hash stay snow's defaults. The wire format is
//! unchanged; a test checks both backends give the same bytes.

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{BoxedCryptoResolver, CryptoResolver, DefaultResolver, FallbackResolver};
use snow::types::{Cipher, Dh, Hash, Random};

/// AEAD tag length.
const TAG: usize = 16;

/// snow's resolver with ChaChaPoly from aws-lc-rs.
pub(crate) fn resolver() -> BoxedCryptoResolver {
    Box::new(FallbackResolver::new(Box::new(AwsLc), Box::new(DefaultResolver)))
}

struct AwsLc;

impl CryptoResolver for AwsLc {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        None
    }

    fn resolve_dh(&self, _: &DHChoice) -> Option<Box<dyn Dh>> {
        None
    }

    fn resolve_hash(&self, _: &HashChoice) -> Option<Box<dyn Hash>> {
        None
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        match choice {
            CipherChoice::ChaChaPoly => Some(Box::new(ChaChaPoly { key: None })),
            _ => None,
        }
    }
}

/// One direction's key; snow sets it before it encrypts or decrypts anything.
struct ChaChaPoly {
    key: Option<LessSafeKey>,
}

impl ChaChaPoly {
    fn key(&self) -> &LessSafeKey {
        self.key.as_ref().expect("snow sets a cipher's key before using it")
    }
}

fn nonce(n: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&n.to_le_bytes());
    Nonce::assume_unique_for_key(bytes)
}

impl Cipher for ChaChaPoly {
    fn name(&self) -> &'static str {
        "ChaChaPoly"
    }

    fn set(&mut self, key: &[u8; 32]) {
        let key = UnboundKey::new(&CHACHA20_POLY1305, key).expect("ChaCha20-Poly1305 takes a 32-byte key");
        self.key = Some(LessSafeKey::new(key));
    }

    fn encrypt(&self, n: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        let len = plaintext.len();
        out[..len].copy_from_slice(plaintext);
        let tag = self
            .key()
            .seal_in_place_separate_tag(nonce(n), Aad::from(authtext), &mut out[..len])
            .expect("ChaCha20-Poly1305 seals any Noise message");
        out[len..len + TAG].copy_from_slice(tag.as_ref());
        len + TAG
    }

    fn decrypt(&self, n: u64, authtext: &[u8], ciphertext: &[u8], out: &mut [u8]) -> Result<usize, snow::Error> {
        // snow checks `ciphertext.len() >= TAG` and the room in `out` before calling.
        let len = ciphertext.len() - TAG;
        let (body, tag) = ciphertext.split_at(len);
        self.key()
            .open_separate_gather(nonce(n), Aad::from(authtext), body, tag, &mut out[..len])
            .map_err(|_| snow::Error::Decrypt)?;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The same bytes as snow's own ChaChaPoly, both ways, and a flipped bit is refused.
    #[test]
    fn agrees_with_snows_default_backend() {
        let ours = AwsLc.resolve_cipher(&CipherChoice::ChaChaPoly);
        let theirs = DefaultResolver.resolve_cipher(&CipherChoice::ChaChaPoly);
        let (mut ours, mut theirs) = (ours.unwrap(), theirs.unwrap());
        ours.set(&[7; 32]);
        theirs.set(&[7; 32]);
        for (n, len) in [(0u64, 0usize), (1, 1), (u64::MAX - 1, 300), (1 << 40, 65_519)] {
            let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (mut a, mut b) = (vec![0; len + TAG], vec![0; len + TAG]);
            assert_eq!(ours.encrypt(n, b"ad", &plaintext, &mut a), len + TAG);
            theirs.encrypt(n, b"ad", &plaintext, &mut b);
            assert_eq!(a, b, "nonce {n}, {len} bytes");
            let mut opened = vec![0; len];
            assert_eq!(ours.decrypt(n, b"ad", &b, &mut opened).unwrap(), len);
            assert_eq!(opened, plaintext);
            a[len / 2] ^= 1;
            assert!(ours.decrypt(n, b"ad", &a, &mut opened).is_err());
            assert!(ours.decrypt(n + 1, b"ad", &b, &mut opened).is_err());
        }
    }
}
