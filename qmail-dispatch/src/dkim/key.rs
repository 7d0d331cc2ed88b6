//! DKIM private keys: read from PEM files (PKCS#8 `PRIVATE KEY`, or PKCS#1 `RSA PRIVATE KEY`
//! for RSA), checked for strength and file permissions, never logged.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pkcs8::der::Decode;
use rsa::traits::PublicKeyParts;

use super::{DkimAlgorithm, DkimError};

/// RSA keys shorter than this are refused (RFC 8301 §3.2: verifiers must not accept less).
pub const RSA_MIN_BITS: usize = 1024;

/// Key files larger than this are not PEM keys (a 16384-bit RSA key is ~13 KiB of PEM).
const MAX_KEY_FILE: u64 = 64 * 1024;

const OID_RSA: pkcs8::ObjectIdentifier =
    pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_ED25519: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.3.101.112");

/// A loaded private key. Its `Debug` shows the algorithm and size only.
pub enum PrivateKey {
    /// RSASSA-PKCS1-v1_5 (RFC 8017 §8.2) with SHA-256: `rsa-sha256` (RFC 6376 §3.3.1).
    Rsa(Box<RsaKey>),
    /// PureEdDSA Ed25519 (RFC 8032) over the SHA-256 of the header data: `ed25519-sha256`
    /// (RFC 8463 §3).
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

/// An RSA key: signed with ring (BoringSSL's constant-time assembly, ~3x faster than the
/// RustCrypto crate here: 0.75 against 2.5 ms of CPU per 2048-bit signature) when it has 2048 bits or more, the sizes ring signs with; with the
/// RustCrypto `rsa` crate (blinded) for the 1024..2047-bit keys RFC 8301 still allows.
pub struct RsaKey {
    bits: usize,
    /// The DER SubjectPublicKeyInfo (the `p=` of the DNS record).
    public: Vec<u8>,
    signer: RsaSigner,
}

enum RsaSigner {
    Ring(ring::rsa::KeyPair),
    RustCrypto(rsa::PrivateKey),
}

impl RsaKey {
    /// The modulus size in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrivateKey::Rsa(k) => write!(f, "PrivateKey::Rsa({} bits)", k.bits),
            PrivateKey::Ed25519(_) => f.write_str("PrivateKey::Ed25519"),
        }
    }
}

impl PrivateKey {
    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> DkimAlgorithm {
        match self {
            PrivateKey::Rsa(_) => DkimAlgorithm::RsaSha256,
            PrivateKey::Ed25519(_) => DkimAlgorithm::Ed25519Sha256,
        }
    }

    /// Signs the header data (`data`, whose SHA-256 is `digest`): the `b=` value, raw.
    ///
    /// # Errors
    /// The RSA private operation failed (a text without key material).
    pub fn sign(&self, data: &[u8], digest: &[u8; 32]) -> Result<Vec<u8>, String> {
        match self {
            PrivateKey::Rsa(k) => match &k.signer {
                RsaSigner::Ring(kp) => {
                    // ring hashes `data` itself (SHA-256, the same digest)
                    let mut sig = vec![0u8; kp.public().modulus_len()];
                    kp.sign(
                        &ring::signature::RSA_PKCS1_SHA256,
                        &ring::rand::SystemRandom::new(),
                        data,
                        &mut sig,
                    )
                    .map_err(|_| "RSA signature failed".to_owned())?;
                    Ok(sig)
                }
                RsaSigner::RustCrypto(pk) => pk
                    .sign(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), digest)
                    .map_err(|e| format!("RSA signature failed: {e}")),
            },
            PrivateKey::Ed25519(k) => {
                use ed25519_dalek::Signer;
                Ok(k.sign(digest).to_bytes().to_vec())
            }
        }
    }

    /// The public key as published in the `p=` tag of the DNS record (RFC 6376 §3.6.1): the
    /// DER SubjectPublicKeyInfo for RSA, the 32 raw bytes for Ed25519 (RFC 8463 §4.2).
    pub fn public_key_bytes(&self) -> Vec<u8> {
        match self {
            PrivateKey::Rsa(k) => k.public.clone(),
            PrivateKey::Ed25519(k) => k.verifying_key().to_bytes().to_vec(),
        }
    }
}

fn format_err(path: &Path, reason: impl Into<String>) -> DkimError {
    DkimError::KeyFormat {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Reads and checks one key file.
///
/// The file must be a regular file, neither world-readable nor group- or world-writable
/// (`chmod 600` or `640`), and hold one unencrypted PEM private key: RSA of at least
/// [`RSA_MIN_BITS`] bits or Ed25519. `expected` is the configured algorithm, if any.
///
/// # Errors
/// [`DkimError::KeyUnreadable`], [`DkimError::KeyPermissions`], [`DkimError::KeyFormat`],
/// [`DkimError::KeyTooWeak`], [`DkimError::AlgorithmMismatch`]; each names the file and none
/// carries key material.
pub fn load(path: &Path, expected: Option<DkimAlgorithm>) -> Result<PrivateKey, DkimError> {
    let unreadable = |e: std::io::Error| DkimError::KeyUnreadable {
        path: path.to_owned(),
        source: e,
    };
    let mut f = File::open(path).map_err(unreadable)?;
    // the mode of the file opened, not of a name that could change in between
    let meta = f.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(format_err(path, "not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o026 != 0 {
        // world-readable, or writable by others than the owner
        return Err(DkimError::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(format_err(
            path,
            format!("{} bytes: too large for a PEM key", meta.len()),
        ));
    }
    let mut text = pkcs8::der::zeroize::Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    (&mut f)
        .take(MAX_KEY_FILE + 1)
        .read_to_end(&mut text)
        .map_err(unreadable)?;
    let (label, der) = pkcs8::der::pem::decode_vec(&text)
        .map_err(|e| format_err(path, format!("not a PEM private key ({e})")))?;
    let der = pkcs8::der::zeroize::Zeroizing::new(der);
    let key = match label {
        "PRIVATE KEY" => {
            let info = pkcs8::PrivateKeyInfoRef::from_der(&der)
                .map_err(|e| format_err(path, format!("bad PKCS#8 private key ({e})")))?;
            match info.algorithm.oid {
                OID_RSA => rsa_key(
                    path,
                    rsa::PrivateKey::try_from(info)
                        .map_err(|e| format_err(path, format!("bad RSA private key ({e})")))?,
                    || ring::rsa::KeyPair::from_pkcs8(&der),
                )?,
                OID_ED25519 => PrivateKey::Ed25519(Box::new(
                    ed25519_dalek::SigningKey::try_from(info)
                        .map_err(|e| format_err(path, format!("bad Ed25519 private key ({e})")))?,
                )),
                oid => {
                    return Err(format_err(
                        path,
                        format!(
                            "a key of algorithm {oid}; DKIM signs with RSA or Ed25519 (RFC 8463)"
                        ),
                    ));
                }
            }
        }
        "RSA PRIVATE KEY" => {
            let k = pkcs1_private_key(&der)
                .map_err(|e| format_err(path, format!("bad PKCS#1 RSA private key ({e})")))?;
            rsa_key(path, k, || ring::rsa::KeyPair::from_der(&der))?
        }
        "ENCRYPTED PRIVATE KEY" => {
            return Err(format_err(
                path,
                "an encrypted key; the dispatcher needs it unencrypted (protect it by its file mode)",
            ));
        }
        other => {
            return Err(format_err(
                path,
                format!("a PEM {other:?} block, not a private key"),
            ));
        }
    };
    if let Some(want) = expected
        && want != key.algorithm()
    {
        return Err(DkimError::AlgorithmMismatch {
            path: path.to_owned(),
            configured: want,
            found: key.algorithm(),
        });
    }
    Ok(key)
}

/// Checks the size and picks the implementation of an RSA key parsed by the `rsa` crate
/// (`ring_key`: the same DER for ring).
fn rsa_key(
    path: &Path,
    k: rsa::PrivateKey,
    ring_key: impl FnOnce() -> Result<ring::rsa::KeyPair, ring::error::KeyRejected>,
) -> Result<PrivateKey, DkimError> {
    use pkcs8::EncodePublicKey;
    let bits = k.n().bit_width() as usize;
    if bits < RSA_MIN_BITS {
        return Err(DkimError::KeyTooWeak {
            path: path.to_owned(),
            bits,
        });
    }
    let public = rsa::PublicKey::from(k.clone())
        .to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .map_err(|e| format_err(path, format!("bad RSA public key ({e})")))?;
    let signer = if bits >= 2048 {
        RsaSigner::Ring(
            ring_key().map_err(|e| format_err(path, format!("RSA key refused by ring ({e})")))?,
        )
    } else {
        RsaSigner::RustCrypto(k)
    };
    Ok(PrivateKey::Rsa(Box::new(RsaKey {
        bits,
        public,
        signer,
    })))
}

fn pkcs1_private_key(der: &[u8]) -> Result<rsa::PrivateKey, rsa::pkcs1::Error> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    rsa::PrivateKey::from_pkcs1_der(der)
}
