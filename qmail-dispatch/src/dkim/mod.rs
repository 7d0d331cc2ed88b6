//! DKIM signing at dispatch (RFC 6376, with Ed25519 per RFC 8463).
//!
//! # Description
//! The dispatcher signs, never the initiators (web hosts hold no private key). Each `[[dkim]]`
//! entry of the configuration ([`DkimConfig`]) names a signing domain (`d=`), a selector
//! (`s=`) and a PEM key file. When a message is sent, the domain of its From address picks the
//! entries: those of exactly that domain, else those of the nearest parent domain that set
//! `subdomains = true`. Every entry picked adds one `DKIM-Signature` field (two entries of one
//! domain, RSA and Ed25519, give the dual signature RFC 8463 §5 suggests). No entry: the message
//! goes unsigned and `qmail_dispatch_dkim_unsigned_total` counts it.
//!
//! The fields are computed per attempt and written before the spooled message inside DATA
//! (the transaction's `prefix`); nothing is rewritten in the spool, and a retry signs again
//! (with a new `t=`).
//!
//! Memory is bounded whatever the message size: [`Signer::sign`] reads the header block
//! (at most [`HEADER_LIMIT`] octets), then streams the body through [`canon::BodyHasher`]
//! (64 KiB reads, 16 KiB of output buffer), then hashes the selected header fields and signs.
//!
//! # Standards
//! - RFC 6376: the signature (§3.5 tags, §3.4 canonicalization, §3.7 hashes, §5.4 header
//!   selection: the last instance first, names listed once more than they occur to
//!   "over-sign" them, so a From field added later breaks the signature).
//! - RFC 8463: `ed25519-sha256` (PureEdDSA over the SHA-256 of the header data).
//! - RFC 8301: `rsa-sha256` only (never SHA-1), RSA keys of at least 1024 bits.
//!
//! # Diagnostics
//! A key file that cannot be read, is not a PEM private key, is RSA shorter than 1024 bits, or
//! that others may read (or its group write) is a configuration error ([`DkimError`]) at start,
//! in `check-config` and at SIGHUP (which reloads the keys); the error names the file and never
//! carries key material.
//!
//! # Configuration
//! See [`DkimConfig`]: `domain`, `selector`, `key_file`, `algorithm` (default: the key's),
//! `headers` ([`DEFAULT_HEADERS`]), `oversign` (`["From"]`), `canonicalization`
//! (`"relaxed/relaxed"`), `expire_secs` (none), `subdomains` (false).

pub mod canon;
mod dispatch;
pub mod header;
pub mod key;

use std::io::{self, Read};
use std::path::PathBuf;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use canon::{BodyHasher, Canon};
pub use key::PrivateKey;

/// The header fields signed by default (RFC 6376 §5.4.1 recommends the ones that carry the
/// message's meaning), each as many times as it occurs.
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Reply-To",
    "In-Reply-To",
    "References",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// A header block larger than this (octets) is not signed (Postfix refuses headers above
/// 100 KiB by default: `header_size_limit`).
pub const HEADER_LIMIT: usize = 256 * 1024;

/// The signing algorithm (`a=` tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DkimAlgorithm {
    /// `rsa-sha256` (RFC 6376 §3.3.1).
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    /// `ed25519-sha256` (RFC 8463 §3).
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl DkimAlgorithm {
    /// The `a=` value.
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// The `k=` value of the DNS record.
    pub fn key_type(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa",
            DkimAlgorithm::Ed25519Sha256 => "ed25519",
        }
    }
}

impl std::fmt::Display for DkimAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Header and body canonicalization (`c=` tag), written as in the tag: `relaxed/relaxed`,
/// `simple/simple`, `relaxed/simple`, `simple/relaxed`, or one name alone, which (RFC 6376
/// §3.5) is the header algorithm with a `simple` body: `relaxed` = `relaxed/simple`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Canonicalization {
    /// For the header fields.
    pub header: Canon,
    /// For the body.
    pub body: Canon,
}

impl Default for Canonicalization {
    fn default() -> Self {
        Canonicalization {
            header: Canon::Relaxed,
            body: Canon::Relaxed,
        }
    }
}

impl TryFrom<String> for Canonicalization {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let one = |n: &str| match n {
            "simple" => Ok(Canon::Simple),
            "relaxed" => Ok(Canon::Relaxed),
            _ => Err(format!(
                "canonicalization {s:?} is not simple or relaxed, or header/body of them"
            )),
        };
        let (h, b) = match s.split_once('/') {
            Some((h, b)) => (one(h)?, one(b)?),
            None => (one(&s)?, Canon::Simple),
        };
        Ok(Canonicalization { header: h, body: b })
    }
}

impl From<Canonicalization> for String {
    fn from(c: Canonicalization) -> String {
        format!("{}/{}", c.header.as_str(), c.body.as_str())
    }
}

/// One `[[dkim]]` entry: a signing domain, selector and key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DkimConfig {
    /// The signing domain (`d=`), compared with the domain of the From address (ASCII,
    /// case-insensitive; an IDN is compared as its A-label).
    pub domain: String,
    /// The selector (`s=`): the key is published at `SELECTOR._domainkey.DOMAIN` (TXT).
    pub selector: String,
    /// The PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`, as `openssl genpkey` writes, RSA or
    /// Ed25519) or PKCS#1 (`BEGIN RSA PRIVATE KEY`). RSA at least 1024 bits (2048 advised).
    /// Mode 600 or 640: a key others can read, or its group change, is refused.
    pub key_file: PathBuf,
    /// `rsa-sha256` or `ed25519-sha256`; default: the key's. Checked against the key.
    pub algorithm: Option<DkimAlgorithm>,
    /// Header fields to sign, each as many times as it occurs (default [`DEFAULT_HEADERS`]).
    /// Must include From (RFC 6376 §5.4) and not DKIM-Signature.
    pub headers: Vec<String>,
    /// Names listed once more than they occur, so that adding such a field breaks the
    /// signature (RFC 6376 §8.15). Default `["From"]`.
    pub oversign: Vec<String>,
    /// Default `relaxed/relaxed`.
    pub canonicalization: Canonicalization,
    /// Signatures expire this many seconds after signing (`x=`); none by default.
    pub expire_secs: Option<u64>,
    /// Also sign for subdomains of `domain` (From `a@news.example.com` with `domain =
    /// "example.com"`) when no entry names the subdomain itself.
    pub subdomains: bool,
    /// The key, loaded by [`resolve`]: not configuration (never serialized or shown). A
    /// resolved configuration carries its keys, so a dispatcher rebuilt from it (the old
    /// configuration kept after a failed SIGHUP reload) signs with the keys it was checked
    /// with, without reading the files again.
    #[serde(skip)]
    pub loaded: LoadedKey,
}

/// A key loaded from `key_file` (shared by the clones of one resolved configuration).
/// `Debug` shows its algorithm and size only; every `LoadedKey` compares equal (it follows
/// from the rest of the entry).
#[derive(Clone, Default)]
pub struct LoadedKey(Option<std::sync::Arc<PrivateKey>>);

impl LoadedKey {
    /// The key, once [`resolve`] loaded it.
    pub fn get(&self) -> Option<&PrivateKey> {
        self.0.as_deref()
    }
}

impl std::fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(k) => k.fmt(f),
            None => f.write_str("not loaded"),
        }
    }
}

impl PartialEq for LoadedKey {
    fn eq(&self, _: &LoadedKey) -> bool {
        true
    }
}

impl Default for DkimConfig {
    fn default() -> Self {
        DkimConfig {
            domain: String::new(),
            selector: String::new(),
            key_file: PathBuf::new(),
            algorithm: None,
            headers: DEFAULT_HEADERS.iter().map(|s| s.to_string()).collect(),
            oversign: vec!["From".into()],
            canonicalization: Canonicalization::default(),
            expire_secs: None,
            subdomains: false,
            loaded: LoadedKey::default(),
        }
    }
}

/// A DKIM configuration error. Each names the entry or the key file; none carries key
/// material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DkimError {
    /// The key file cannot be opened or read.
    #[error("dkim key_file {}: cannot read it: {source}", path.display())]
    KeyUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Others may read the key, or write it.
    #[error(
        "dkim key_file {}: mode {mode:04o} lets other users read or change the private key; \
         chmod 600 (or 640 with a group of the dispatcher's user only)",
        path.display()
    )]
    KeyPermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not an unencrypted PEM RSA or Ed25519 private key.
    #[error("dkim key_file {}: {reason}", path.display())]
    KeyFormat {
        /// The file.
        path: PathBuf,
        /// What was found instead (never the key's bytes).
        reason: String,
    },
    /// An RSA key shorter than [`key::RSA_MIN_BITS`].
    #[error(
        "dkim key_file {}: an RSA key of {bits} bits is too weak; at least 1024 are required \
         (RFC 8301 §3.2), 2048 advised",
        path.display()
    )]
    KeyTooWeak {
        /// The file.
        path: PathBuf,
        /// The modulus size.
        bits: usize,
    },
    /// `algorithm` does not match the key.
    #[error("dkim key_file {}: algorithm = {configured:?} but the key is for {found}", path.display(), configured = configured.as_str())]
    AlgorithmMismatch {
        /// The file.
        path: PathBuf,
        /// What the entry says.
        configured: DkimAlgorithm,
        /// What the key is.
        found: DkimAlgorithm,
    },
    /// A bad value in an entry.
    #[error("{field}: {reason}")]
    Invalid {
        /// `dkim[N].name`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl DkimError {
    /// The configuration field at fault (`dkim[N].key_file`, ...), given the entry's index.
    fn field(&self, i: usize) -> String {
        match self {
            DkimError::Invalid { field, .. } => field.clone(),
            _ => format!("dkim[{i}].key_file"),
        }
    }
}

/// Checks and normalizes the `[[dkim]]` entries and loads every key not loaded yet (into
/// [`DkimConfig::loaded`]), so a bad key is a configuration error at start, in
/// `check-config` and at SIGHUP.
///
/// # Errors
/// [`qmail_core::error::ErrorKind::InvalidArgument`] naming `dkim[N].FIELD`, with the
/// [`DkimError`] text.
pub fn resolve(entries: &mut [DkimConfig]) -> qmail_core::error::Result<()> {
    for (i, e) in entries.iter_mut().enumerate() {
        normalize(i, e)
            .and_then(|()| {
                if e.loaded.0.is_none() {
                    let k = key::load(&e.key_file, e.algorithm)?;
                    e.loaded = LoadedKey(Some(std::sync::Arc::new(k)));
                }
                Ok(())
            })
            .map_err(|err| {
                qmail_core::error::Error::new(
                    qmail_core::error::ErrorKind::InvalidArgument,
                    err.to_string(),
                )
                .with_field(err.field(i))
            })?;
    }
    let mut seen = std::collections::HashSet::new();
    for (i, e) in entries.iter().enumerate() {
        if !seen.insert((e.domain.clone(), e.selector.clone())) {
            return Err(qmail_core::error::Error::new(
                qmail_core::error::ErrorKind::InvalidArgument,
                format!(
                    "dkim[{i}]: a second entry for selector {:?} of domain {:?}",
                    e.selector, e.domain
                ),
            )
            .with_field(format!("dkim[{i}].selector")));
        }
    }
    Ok(())
}

fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn normalize(i: usize, e: &mut DkimConfig) -> Result<(), DkimError> {
    let bad = |f: &str, reason: String| DkimError::Invalid {
        field: format!("dkim[{i}].{f}"),
        reason,
    };
    let d = e.domain.trim().trim_end_matches('.');
    let ascii = idna::domain_to_ascii(d)
        .map_err(|_| bad("domain", format!("{:?} is not a domain name", e.domain)))?;
    if ascii.is_empty() || !is_dns_name(&ascii) {
        return Err(bad(
            "domain",
            format!("{:?} is not a domain name (RFC 6376 §3.5 d=)", e.domain),
        ));
    }
    e.domain = ascii;
    if e.selector.is_empty() || !is_dns_name(&e.selector) {
        return Err(bad(
            "selector",
            format!(
                "{:?} is not a selector: labels of letters, digits, '-' (RFC 6376 §3.1)",
                e.selector
            ),
        ));
    }
    if e.key_file.as_os_str().is_empty() {
        return Err(bad("key_file", "a key_file is needed".into()));
    }
    // RFC 5322 ftext, less ';' (it would end the h= tag, RFC 6376 §3.2)
    let field_name = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| (33..=126).contains(&b) && b != b':' && b != b';')
    };
    let mut names: Vec<String> = Vec::new();
    for h in &e.headers {
        if !field_name(h) {
            return Err(bad("headers", format!("{h:?} is not a header field name")));
        }
        if h.eq_ignore_ascii_case("DKIM-Signature") {
            return Err(bad(
                "headers",
                "DKIM-Signature cannot be signed by another signature here".into(),
            ));
        }
        if !names.iter().any(|n| n.eq_ignore_ascii_case(h)) {
            names.push(h.clone());
        }
    }
    if !names.iter().any(|n| n.eq_ignore_ascii_case("From")) {
        return Err(bad("headers", "From must be signed (RFC 6376 §5.4)".into()));
    }
    e.headers = names;
    let mut over: Vec<String> = Vec::new();
    for h in &e.oversign {
        if !field_name(h) || h.eq_ignore_ascii_case("DKIM-Signature") {
            return Err(bad("oversign", format!("{h:?} cannot be over-signed")));
        }
        if !over.iter().any(|n| n.eq_ignore_ascii_case(h)) {
            over.push(h.clone());
        }
    }
    e.oversign = over;
    if e.expire_secs == Some(0) {
        return Err(bad(
            "expire_secs",
            "0 would expire the signature at once; leave it out for no expiry".into(),
        ));
    }
    Ok(())
}

/// One loaded entry.
struct Entry {
    cfg: DkimConfig,
    key: std::sync::Arc<PrivateKey>,
}

/// The keys of the `[[dkim]]` entries, loaded. Its `Debug` names domains and selectors only.
#[derive(Default)]
pub struct Signer {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| {
                format!(
                    "{}._domainkey.{} ({})",
                    e.cfg.selector,
                    e.cfg.domain,
                    e.key.algorithm()
                )
            }))
            .finish()
    }
}

/// Why a message goes unsigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsigned {
    /// No entry for the From domain (or a parent with `subdomains`).
    NoKey {
        /// The From domain.
        domain: String,
    },
    /// The From field gives no domain.
    From(header::FromProblem),
    /// The header block is larger than [`HEADER_LIMIT`].
    HeaderTooLarge,
}

impl std::fmt::Display for Unsigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsigned::NoKey { domain } => write!(f, "no DKIM key for the From domain {domain}"),
            Unsigned::From(p) => p.fmt(f),
            Unsigned::HeaderTooLarge => {
                write!(f, "the header block is larger than {HEADER_LIMIT} octets")
            }
        }
    }
}

/// One signature added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// `d=`.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// `a=`.
    pub algorithm: DkimAlgorithm,
}

/// What [`Signer::sign`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `fields`: one `DKIM-Signature` field per signature, each ending in CRLF, to be sent
    /// before the message.
    Signed {
        /// The header fields.
        fields: Vec<u8>,
        /// What they are.
        signatures: Vec<Signature>,
    },
    /// Nothing to add.
    Unsigned(Unsigned),
}

/// Why signing failed (the attempt is deferred).
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The message could not be read.
    #[error("cannot read the message to sign it: {0}")]
    Io(#[from] io::Error),
    /// The private-key operation failed.
    #[error("DKIM signing failed: {0}")]
    Crypto(String),
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

impl Signer {
    /// The signer of entries as [`resolve`] left them: their loaded keys, or (an entry not
    /// resolved) its key file read now.
    ///
    /// # Errors
    /// [`DkimError`] naming the key file.
    pub fn load(entries: &[DkimConfig]) -> Result<Signer, DkimError> {
        let entries = entries
            .iter()
            .map(|cfg| {
                let key = match &cfg.loaded.0 {
                    Some(k) => std::sync::Arc::clone(k),
                    None => std::sync::Arc::new(key::load(&cfg.key_file, cfg.algorithm)?),
                };
                Ok(Entry {
                    key,
                    cfg: cfg.clone(),
                })
            })
            .collect::<Result<Vec<_>, DkimError>>()?;
        Ok(Signer { entries })
    }

    /// No entry: nothing is ever signed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The DNS records to publish, one per entry: (`SELECTOR._domainkey.DOMAIN`, TXT value
    /// `v=DKIM1; k=rsa|ed25519; p=BASE64`, RFC 6376 §3.6.1, RFC 8463 §4.2).
    pub fn dns_records(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|e| {
                (
                    format!("{}._domainkey.{}", e.cfg.selector, e.cfg.domain),
                    format!(
                        "v=DKIM1; k={}; p={}",
                        e.key.algorithm().key_type(),
                        base64::engine::general_purpose::STANDARD.encode(e.key.public_key_bytes())
                    ),
                )
            })
            .collect()
    }

    /// The entries that sign for `domain`: its own, else the nearest parent's with
    /// `subdomains = true`.
    fn pick(&self, domain: &str) -> Vec<&Entry> {
        let mut d = domain;
        let mut exact = true;
        loop {
            let found: Vec<&Entry> = self
                .entries
                .iter()
                .filter(|e| e.cfg.domain == d && (exact || e.cfg.subdomains))
                .collect();
            if !found.is_empty() {
                return found;
            }
            match d.split_once('.') {
                Some((_, parent)) => {
                    d = parent;
                    exact = false;
                }
                None => return Vec::new(),
            }
        }
    }

    /// Signs a message read from `message` (the spooled bytes: header block, empty line,
    /// body), at `now` (Unix seconds, the `t=` tag). One pass: the header block (bounded by
    /// [`HEADER_LIMIT`]), then the body streamed in 64 KiB reads.
    ///
    /// # Errors
    /// [`SignError`]: the caller defers the attempt.
    pub fn sign(&self, mut message: impl Read, now: u64) -> Result<Outcome, SignError> {
        if self.entries.is_empty() {
            return Ok(Outcome::Unsigned(Unsigned::NoKey {
                domain: String::new(),
            }));
        }
        // the header block: up to and including the CRLF before the empty line
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut chunk = vec![0u8; 64 * 1024];
        let mut searched = 0usize;
        let (header_end, body_start) = loop {
            if buf.starts_with(b"\r\n") {
                break (0, 2);
            }
            if let Some(p) = buf[searched..].windows(4).position(|w| w == b"\r\n\r\n") {
                let p = searched + p;
                break (p + 2, p + 4);
            }
            searched = buf.len().saturating_sub(3);
            if buf.len() > HEADER_LIMIT {
                return Ok(Outcome::Unsigned(Unsigned::HeaderTooLarge));
            }
            let n = read_full(&mut message, &mut chunk)?;
            if n == 0 {
                // no empty line: all header, no body (the SMTP layer ends it with CRLF)
                if !buf.is_empty() && !buf.ends_with(b"\r\n") {
                    buf.extend_from_slice(b"\r\n");
                }
                let l = buf.len();
                break (l, l);
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if header_end > HEADER_LIMIT {
            return Ok(Outcome::Unsigned(Unsigned::HeaderTooLarge));
        }
        let fields = header::fields(&buf[..header_end]);
        let domain = match header::from_domain(&fields) {
            Ok(d) => d,
            Err(p) => return Ok(Outcome::Unsigned(Unsigned::From(p))),
        };
        let picked = self.pick(&domain);
        if picked.is_empty() {
            return Ok(Outcome::Unsigned(Unsigned::NoKey { domain }));
        }
        // one body hash per body canonicalization in use
        let mut hashers: Vec<BodyHasher> = Vec::with_capacity(2);
        for e in &picked {
            let c = e.cfg.canonicalization.body;
            if !hashers.iter().any(|h| h.canon() == c) {
                hashers.push(BodyHasher::new(c));
            }
        }
        for h in &mut hashers {
            h.update(&buf[body_start..]);
        }
        loop {
            let n = read_full(&mut message, &mut chunk)?;
            if n == 0 {
                break;
            }
            for h in &mut hashers {
                h.update(&chunk[..n]);
            }
        }
        let body_hashes: Vec<(Canon, [u8; 32])> = hashers
            .into_iter()
            .map(|h| (h.canon(), h.finish()))
            .collect();
        let mut out = Vec::with_capacity(512 * picked.len());
        let mut signatures = Vec::with_capacity(picked.len());
        for e in picked {
            let bh = body_hashes
                .iter()
                .find(|(c, _)| *c == e.cfg.canonicalization.body)
                .map(|(_, h)| *h)
                .unwrap_or_default();
            out.extend_from_slice(&signature_field(e, &fields, &bh, now)?);
            signatures.push(Signature {
                domain: e.cfg.domain.clone(),
                selector: e.cfg.selector.clone(),
                algorithm: e.key.algorithm(),
            });
        }
        Ok(Outcome::Signed {
            fields: out,
            signatures,
        })
    }
}

/// Appends `piece` to a header being folded at 76 columns: on the current line after a space,
/// or on a new line (CRLF HTAB) when it would not fit.
fn fold_push(out: &mut String, col: &mut usize, piece: &str, sep: &str) {
    if *col + sep.len() + piece.len() > 76 && *col > 1 {
        out.push_str("\r\n\t");
        *col = 1;
    } else {
        out.push_str(sep);
        *col += sep.len();
    }
    out.push_str(piece);
    *col += piece.len();
}

/// One `DKIM-Signature` field, CRLF-terminated (RFC 6376 §3.5, §3.7).
fn signature_field(
    e: &Entry,
    fields: &[header::Field<'_>],
    body_hash: &[u8; 32],
    now: u64,
) -> Result<Vec<u8>, SignError> {
    let b64 = &base64::engine::general_purpose::STANDARD;
    let cfg = &e.cfg;
    let c = cfg.canonicalization;
    // h=: each configured name once per occurrence, over-signed names once more
    let count = |n: &str| {
        fields
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(n.as_bytes()))
            .count()
    };
    let mut names: Vec<String> = Vec::new();
    for h in &cfg.headers {
        names.extend(std::iter::repeat_n(h.to_ascii_lowercase(), count(h)));
    }
    for h in &cfg.oversign {
        names.push(h.to_ascii_lowercase());
    }
    let mut tags = vec![
        "v=1".to_owned(),
        format!("a={}", e.key.algorithm()),
        format!("c={}/{}", c.header.as_str(), c.body.as_str()),
        format!("d={}", cfg.domain),
        format!("s={}", cfg.selector),
        format!("t={now}"),
    ];
    if let Some(x) = cfg.expire_secs {
        tags.push(format!("x={}", now.saturating_add(x)));
    }
    let mut text = String::from("DKIM-Signature:");
    let mut col = text.len();
    for t in &tags {
        fold_push(&mut text, &mut col, &format!("{t};"), " ");
    }
    for (i, n) in names.iter().enumerate() {
        let piece = match (i == 0, i + 1 == names.len()) {
            (true, true) => format!("h={n};"),
            (true, false) => format!("h={n}:"),
            (false, true) => format!("{n};"),
            (false, false) => format!("{n}:"),
        };
        fold_push(&mut text, &mut col, &piece, if i == 0 { " " } else { "" });
    }
    fold_push(
        &mut text,
        &mut col,
        &format!("bh={};", b64.encode(body_hash)),
        " ",
    );
    // b= last, on a line of its own: the hashed form ends right after "b="
    text.push_str("\r\n\tb=");
    // RFC 6376 §5.4.2: the last unused instance of each name, bottom up
    let mut used: Vec<(String, usize)> = Vec::new();
    let mut data: Vec<u8> = Vec::with_capacity(4096);
    for n in &names {
        let k = match used.iter_mut().find(|(u, _)| u == n) {
            Some((_, k)) => {
                *k += 1;
                *k - 1
            }
            None => {
                used.push((n.clone(), 1));
                0
            }
        };
        let inst: Vec<&header::Field<'_>> = fields
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(n.as_bytes()))
            .collect();
        if k < inst.len() {
            canon::header_field(c.header, inst[inst.len() - 1 - k].raw, true, &mut data);
        }
    }
    canon::header_field(c.header, text.as_bytes(), false, &mut data);
    let digest: [u8; 32] = Sha256::digest(&data).into();
    let sig = e.key.sign(&data, &digest).map_err(SignError::Crypto)?;
    let sig = b64.encode(sig);
    let mut col = 3usize;
    for ch in sig.as_bytes().chunks(1) {
        if col >= 76 {
            text.push_str("\r\n\t");
            col = 1;
        }
        text.push(char::from(ch[0]));
        col += 1;
    }
    text.push_str("\r\n");
    Ok(text.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalization_names() {
        let c = |s: &str| Canonicalization::try_from(s.to_owned());
        assert_eq!(c("relaxed/relaxed").unwrap(), Canonicalization::default());
        assert_eq!(
            c("relaxed").unwrap(),
            Canonicalization {
                header: Canon::Relaxed,
                body: Canon::Simple
            }
        );
        assert_eq!(String::from(c("simple").unwrap()), "simple/simple");
        assert!(c("strict/relaxed").is_err());
    }

    #[test]
    fn entries_are_checked() {
        let mut e = [DkimConfig {
            domain: "Example.COM.".into(),
            selector: "s1".into(),
            key_file: "/nonexistent/k.pem".into(),
            ..DkimConfig::default()
        }];
        let err = resolve(&mut e).unwrap_err();
        assert_eq!(err.field(), Some("dkim[0].key_file"));
        assert!(err.message().contains("/nonexistent/k.pem"), "{err}");
        assert_eq!(e[0].domain, "example.com");
        let mut e = [DkimConfig {
            domain: "example.com".into(),
            selector: "s1".into(),
            key_file: "/k".into(),
            headers: vec!["Subject".into()],
            ..DkimConfig::default()
        }];
        assert_eq!(
            resolve(&mut e).unwrap_err().field(),
            Some("dkim[0].headers")
        );
        e[0].headers = vec!["From".into(), "X-A;b=c".into()];
        assert_eq!(
            resolve(&mut e).unwrap_err().field(),
            Some("dkim[0].headers")
        );
        let mut e = [DkimConfig {
            domain: "exa mple.com".into(),
            selector: "s1".into(),
            key_file: "/k".into(),
            ..DkimConfig::default()
        }];
        assert_eq!(resolve(&mut e).unwrap_err().field(), Some("dkim[0].domain"));
        let mut e = [DkimConfig {
            domain: "example.com".into(),
            selector: "s;1".into(),
            key_file: "/k".into(),
            ..DkimConfig::default()
        }];
        assert_eq!(
            resolve(&mut e).unwrap_err().field(),
            Some("dkim[0].selector")
        );
    }
}
