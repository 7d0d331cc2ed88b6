//! Shared by the dispatcher tests (`qmail-dispatch/tests/*.rs` and
//! `dispatcher-bin/tests/*.rs`): starts `tests/smtp/smtp_server.py` (aiosmtpd) with the repo's
//! `.venv` Python, reads what it recorded, writes spool files by hand.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use qmail_core::spool::record;
use qmail_core::{Envelope, QueueId, SpoolHeader};
use qmail_dispatch::DispatchConfig;

/// The repository root (both crates that use this module sit one level below it).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("crate dir has a parent")
        .to_owned()
}

/// `.venv/bin/python`, created by `scripts/setup-python-env`.
pub fn python() -> PathBuf {
    let p = repo_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup-python-env first (it installs aiosmtpd into .venv); \
         ./scripts/test does it for you",
        p.display()
    );
    p
}

/// One completed SMTP transaction, as the server recorded it.
#[derive(Debug, Clone)]
pub struct Tx {
    pub seq: u64,
    pub session: u64,
    /// The reply the server gave to end-of-data.
    pub reply: String,
    pub mail_from: String,
    pub mail_options: Vec<String>,
    pub rcpt_tos: Vec<String>,
    /// DATA after aiosmtpd's un-stuffing, without the terminator.
    pub data: Vec<u8>,
    /// DATA bytes exactly as received, terminator included.
    pub wire: Vec<u8>,
    pub tls: bool,
    pub auth: Option<String>,
    pub ehlo: String,
    /// When the server had the whole DATA (Unix seconds, float).
    pub time: f64,
}

/// One connection, as the server recorded it.
#[derive(Debug, Clone)]
pub struct SessionRec {
    pub session: u64,
    pub raw: Vec<u8>,
    pub plain: Vec<u8>,
    pub lines: Vec<String>,
    /// The client's bytes as the server read them, one entry per read.
    pub chunks: Vec<Vec<u8>>,
    pub transactions: u64,
}

/// A running test server; killed on drop.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    pub record: PathBuf,
    _dir: tempfile::TempDir,
}

fn b64(v: &serde_json::Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or(""))
        .expect("base64")
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

impl SmtpServer {
    /// Starts the server with these extra arguments; waits until it listens.
    pub fn start(args: &[&str]) -> SmtpServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let ready = dir.path().join("ready.json");
        let record = dir.path().join("rec");
        let script = repo_root().join("tests/smtp/smtp_server.py");
        let child = Command::new(python())
            .arg(&script)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--record")
            .arg(&record)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the test SMTP server");
        let t0 = Instant::now();
        while !ready.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the test SMTP server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&ready).expect("ready file"))
                .expect("ready json");
        let port = v["port"].as_u64().expect("port") as u16;
        SmtpServer {
            child,
            port,
            record,
            _dir: dir,
        }
    }

    /// A relay URL for it (`query` without `?`, e.g. `tls=none`).
    pub fn url(&self, query: &str) -> String {
        format!("smtp://127.0.0.1:{}?{query}", self.port)
    }

    /// Every completed transaction so far, in order.
    pub fn transactions(&self) -> Vec<Tx> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.record)
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
        names.sort();
        names
            .iter()
            .map(|p| {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(p).expect("read tx")).expect("tx json");
                Tx {
                    seq: v["seq"].as_u64().unwrap_or(0),
                    session: v["session"].as_u64().unwrap_or(0),
                    reply: v["reply"].as_str().unwrap_or("").to_owned(),
                    mail_from: v["mail_from"].as_str().unwrap_or("").to_owned(),
                    mail_options: strings(&v["mail_options"]),
                    rcpt_tos: strings(&v["rcpt_tos"]),
                    data: b64(&v["data_b64"]),
                    wire: b64(&v["wire_b64"]),
                    tls: v["tls"].as_bool().unwrap_or(false),
                    auth: v["auth"].as_str().map(str::to_owned),
                    ehlo: v["ehlo"].as_str().unwrap_or("").to_owned(),
                    time: v["time"].as_f64().unwrap_or(0.0),
                }
            })
            .collect()
    }

    /// Every closed connection so far.
    pub fn sessions(&self) -> Vec<SessionRec> {
        let mut out: Vec<SessionRec> = std::fs::read_dir(&self.record)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("session-"))
                    })
                    .map(|p| {
                        let v: serde_json::Value =
                            serde_json::from_slice(&std::fs::read(&p).expect("read session"))
                                .expect("session json");
                        SessionRec {
                            session: v["session"].as_u64().unwrap_or(0),
                            raw: b64(&v["raw_b64"]),
                            plain: b64(&v["plain_b64"]),
                            lines: strings(&v["lines"]),
                            chunks: v["chunks_b64"]
                                .as_array()
                                .map(|a| a.iter().map(b64).collect())
                                .unwrap_or_default(),
                            transactions: v["transactions"].as_u64().unwrap_or(0),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|s| s.session);
        out
    }

    /// The transactions the server accepted (250 to end-of-data).
    pub fn delivered(&self) -> Vec<Tx> {
        self.transactions()
            .into_iter()
            .filter(|t| t.reply.starts_with("250"))
            .collect()
    }

    /// Waits until at least `n` transactions were accepted.
    pub fn wait_delivered(&self, n: usize, timeout: Duration) -> Vec<Tx> {
        let t0 = Instant::now();
        loop {
            let t = self.delivered();
            if t.len() >= n || t0.elapsed() > timeout {
                return t;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// How many DATA were recorded (file names only: cheap).
    pub fn count(&self) -> usize {
        std::fs::read_dir(&self.record)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("tx-"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Waits until at least `n` DATA are recorded (names only), or the timeout.
    pub fn wait_count(&self, n: usize, timeout: Duration) -> usize {
        let t0 = Instant::now();
        loop {
            let c = self.count();
            if c >= n || t0.elapsed() > timeout {
                return c;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until at least `n` transactions are recorded.
    pub fn wait_transactions(&self, n: usize, timeout: Duration) -> Vec<Tx> {
        let t0 = Instant::now();
        loop {
            let t = self.transactions();
            if t.len() >= n || t0.elapsed() > timeout {
                return t;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until at least `n` connections have closed.
    pub fn wait_sessions(&self, n: usize, timeout: Duration) -> Vec<SessionRec> {
        let t0 = Instant::now();
        loop {
            let s = self.sessions();
            if s.len() >= n || t0.elapsed() > timeout {
                return s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The "unstuffed wire" of the shared cases: the DATA bytes without the final `.CRLF`, one
/// leading dot removed from each line that starts with a dot (RFC 5321 §4.5.2).
pub fn unstuff(wire: &[u8]) -> Vec<u8> {
    let body = wire
        .strip_suffix(b".\r\n")
        .expect("the DATA ends with .CRLF");
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// Asserts the wire rules of the shared cases: every LF preceded by CR, every CR followed by
/// LF, no line over 998 octets, and `CRLF.CRLF` exactly once, at the end.
pub fn assert_wire_clean(wire: &[u8]) {
    for (i, &b) in wire.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && wire[i - 1] == b'\r', "bare LF at {i} on the wire");
        }
        if b == b'\r' {
            assert!(
                wire.get(i + 1) == Some(&b'\n'),
                "bare CR at {i} on the wire"
            );
        }
    }
    for line in wire.split(|&b| b == b'\n') {
        assert!(line.len() <= 999, "a wire line of {} octets", line.len());
    }
    let full: Vec<u8> = [b"\r\n".as_slice(), wire].concat();
    let n = full.windows(5).filter(|w| w == b"\r\n.\r\n").count();
    assert_eq!(n, 1, "CRLF.CRLF must occur exactly once (the terminator)");
    assert!(full.ends_with(b"\r\n.\r\n"));
}

/// Writes a spool file by hand (as an older or foreign writer might) into `ready/`.
pub fn write_raw_spool(spool: &Path, mail_from: &str, rcpts: &[&str], body: &[u8]) -> QueueId {
    let header = SpoolHeader {
        envelope: Envelope {
            mail_from: mail_from.to_owned(),
            rcpt_to: rcpts.iter().map(|s| s.to_string()).collect(),
            smtputf8: false,
            eightbitmime: false,
        },
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
        not_before: None,
        priority: 3,
        message_id: "<hand@example.com>".into(),
    };
    let id = QueueId::generate();
    let tmp = spool.join("tmp").join(id.as_str());
    let mut f = std::fs::File::create(&tmp).expect("create");
    record::write_header(&mut f, &header).expect("header");
    f.write_all(body).expect("body");
    record::write_trailer(&mut f, body.len() as u64).expect("trailer");
    drop(f);
    std::fs::rename(&tmp, spool.join("ready").join(id.as_str())).expect("rename");
    id
}

/// A configuration for tests: one spool, these relays, fast retries and leases, no
/// cooldown (set per relay where a test needs it).
pub fn config(spool: &Path, relays: &[String]) -> DispatchConfig {
    let mut c = DispatchConfig {
        spools: vec![spool.to_owned()],
        workers: 2,
        ehlo_name: Some("dispatcher.test".into()),
        ..Default::default()
    };
    c.relays = relays
        .iter()
        .map(|u| qmail_dispatch::RelayConfig {
            url: Some(u.clone()),
            cooldown_secs: 0,
            ..Default::default()
        })
        .collect();
    c.retry.first_secs = 0;
    c.retry.jitter = 0.0;
    c.timeouts.connect_secs = 5;
    c.timeouts.command_secs = 10;
    c.timeouts.greeting_secs = 10;
    c.timeouts.mail_secs = 10;
    c.timeouts.rcpt_secs = 10;
    c.timeouts.data_secs = 10;
    c.timeouts.data_block_secs = 10;
    c.timeouts.data_end_secs = 10;
    c.lease_secs = 5;
    c.durable = false;
    c
}

/// Files in a state directory of the spool.
pub fn files(spool: &Path, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(spool.join(dir))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A self-signed certificate made with the openssl CLI: `(cert.pem, key.pem)`.
pub fn make_cert(dir: &Path, cn: &str, san: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{cn}-cert.pem"));
    let key = dir.join(format!("{cn}-key.pem"));
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN={cn}"))
        .arg("-addext")
        .arg(format!("subjectAltName={san}"))
        // an end-entity certificate (webpki refuses a CA certificate as the server's), trusted
        // directly as its own anchor by the tests that set ca_file
        .args([
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the openssl CLI is needed to make a test certificate");
    assert!(st.success(), "openssl req failed");
    (cert, key)
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 request; returns (status, body).
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        c,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    let code = s
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = s
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    (code, body)
}
