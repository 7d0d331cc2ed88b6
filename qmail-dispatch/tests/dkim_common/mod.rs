//! DKIM test helpers shared by `qmail-dispatch/tests/dkim.rs` and `dispatcher-bin/tests/dkim.rs`:
//! keys made with the openssl CLI, their DNS TXT records, and the independent verifier
//! (`tests/dkim/verify.py`, dkimpy) run with the repo's `.venv` Python.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;

/// A key kind openssl makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA of this many bits (PKCS#8 PEM).
    Rsa(u32),
    /// RSA of this many bits in the traditional PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`).
    RsaPkcs1(u32),
    /// Ed25519 (PKCS#8 PEM).
    Ed25519,
}

/// Makes a private key at `path` (mode 0600) with the openssl CLI.
pub fn make_key(path: &Path, kind: KeyKind) {
    let mut c = Command::new("openssl");
    match kind {
        KeyKind::Rsa(bits) => {
            c.args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
                .arg(format!("rsa_keygen_bits:{bits}"));
        }
        KeyKind::RsaPkcs1(_) => {
            c.args(["genrsa", "-traditional"]);
        }
        KeyKind::Ed25519 => {
            c.args(["genpkey", "-algorithm", "ed25519"]);
        }
    }
    c.arg("-out").arg(path);
    if let KeyKind::RsaPkcs1(bits) = kind {
        c.arg(bits.to_string());
    }
    let st = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the openssl CLI is needed to make DKIM test keys");
    assert!(st.success(), "openssl failed to make a {kind:?} key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The TXT value to publish for a key (RFC 6376 §3.6.1; Ed25519: the raw 32 bytes, RFC 8463
/// §4.2), computed by openssl from the private key file, not by the code under test.
pub fn txt_record(key: &Path, kind: KeyKind) -> String {
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(key)
        .stderr(Stdio::null())
        .output()
        .expect("openssl pkey");
    assert!(out.status.success(), "openssl pkey -pubout failed");
    let b64 = &base64::engine::general_purpose::STANDARD;
    match kind {
        KeyKind::Ed25519 => {
            // SubjectPublicKeyInfo of Ed25519: a 12-byte prefix, then the key
            assert_eq!(out.stdout.len(), 44);
            format!("v=DKIM1; k=ed25519; p={}", b64.encode(&out.stdout[12..]))
        }
        _ => format!("v=DKIM1; k=rsa; p={}", b64.encode(&out.stdout)),
    }
}

/// One signature as dkimpy saw it.
#[derive(Debug, Clone)]
pub struct Sig {
    pub d: String,
    pub s: String,
    pub a: String,
    pub c: String,
    pub h: String,
    pub valid: bool,
    pub error: Option<String>,
}

/// One message as dkimpy saw it.
#[derive(Debug, Clone)]
pub struct Verified {
    pub file: String,
    pub size: u64,
    pub signatures: Vec<Sig>,
}

/// Runs `tests/dkim/verify.py` on `files` (recorded `tx-*.json` or raw messages) with these
/// DNS records (name → TXT). `None` when dkimpy cannot be imported: the caller skips, saying
/// why (printed here).
pub fn verify(records: &[(String, String)], files: &[PathBuf]) -> Option<Vec<Verified>> {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    let map: serde_json::Map<String, serde_json::Value> = records
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    std::fs::write(&keys, serde_json::to_vec(&map).unwrap()).unwrap();
    let script = crate::dispatch_common::repo_root().join("tests/dkim/verify.py");
    let out = Command::new(crate::dispatch_common::python())
        .arg(&script)
        .arg("--keys")
        .arg(&keys)
        .args(files)
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/dkim/verify.py");
    let text = String::from_utf8_lossy(&out.stdout);
    if out.status.code() == Some(3) {
        eprintln!("SKIPPED: {text}");
        return None;
    }
    assert!(out.status.success(), "verify.py failed: {text}");
    let v: Vec<Verified> = text
        .lines()
        .map(|l| {
            let j: serde_json::Value = serde_json::from_str(l).expect("verify.py JSON");
            let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
            Verified {
                file: s(&j["file"]),
                size: j["size"].as_u64().unwrap_or(0),
                signatures: j["signatures"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|g| Sig {
                                d: s(&g["d"]),
                                s: s(&g["s"]),
                                a: s(&g["a"]),
                                c: s(&g["c"]),
                                h: s(&g["h"]),
                                valid: g["valid"].as_bool().unwrap_or(false),
                                error: g["error"].as_str().map(str::to_owned),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    assert_eq!(v.len(), files.len(), "one verdict per file");
    Some(v)
}

/// The recorded transaction files (`tx-*.json`) of a test server, in order.
pub fn tx_files(record: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(record)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("tx-"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
