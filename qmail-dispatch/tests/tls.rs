//! TLS and AUTH against real servers (aiosmtpd with a self-signed certificate made by the
//! openssl CLI at test time), and the shared case Q-13 (layer tls).

mod dispatch_common;

use std::path::Path;

use base64::Engine;
use dispatch_common::*;
use qmail_core::{Message, QueueId, Spool, SpoolFile};
use qmail_dispatch::{DispatchConfig, Dispatcher, MessageState, RelayConfig, TlsMode};

const USER: &str = "u@example.com";
const PASS: &str = "s3cret";

struct Env {
    dir: tempfile::TempDir,
    spool: Spool,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    Env { dir, spool }
}

fn submit(spool: &Spool) -> (QueueId, Vec<u8>) {
    let msg = Message::builder()
        .from("noreply@example.com")
        .to("customer@example.org")
        .subject("tls")
        .text("over TLS")
        .build()
        .unwrap();
    let id = spool.submit(&msg).unwrap();
    let body = SpoolFile::open(&spool.path().join("ready").join(id.as_str()))
        .unwrap()
        .read_body()
        .unwrap();
    (id, body)
}

fn cfg_with(spool: &Path, relay: RelayConfig) -> DispatchConfig {
    let mut c = config(spool, &[]);
    c.relays = vec![RelayConfig {
        cooldown_secs: 0,
        ..relay
    }];
    c
}

fn relay(url: &str) -> RelayConfig {
    RelayConfig {
        url: Some(url.to_owned()),
        ..Default::default()
    }
}

fn localhost_cert(dir: &Path) -> (String, String) {
    let (c, k) = make_cert(dir, "localhost", "DNS:localhost,IP:127.0.0.1");
    (
        c.to_string_lossy().into_owned(),
        k.to_string_lossy().into_owned(),
    )
}

fn last_reply_opt(spool: &Spool, id: &QueueId) -> String {
    match MessageState::load(spool.path(), id.as_str()).unwrap() {
        Some(st) => st
            .history
            .last()
            .map(|a| a.results[0].reply.to_string())
            .unwrap_or_default(),
        None => String::new(),
    }
}

fn last_reply(spool: &Spool, id: &QueueId) -> String {
    let st = MessageState::load(spool.path(), id.as_str())
        .unwrap()
        .expect("state");
    st.history.last().unwrap().results[0].reply.to_string()
}

#[test]
fn self_signed_certificate_refused_by_default() {
    let e = env();
    let (cert, key) = localhost_cert(e.dir.path());
    let srv = SmtpServer::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let (id, _) = submit(&e.spool);
    for mode in ["required", "opportunistic"] {
        let cfg = cfg_with(
            e.spool.path(),
            relay(&format!("smtp://localhost:{}?tls={mode}", srv.port)),
        );
        let s = Dispatcher::drain(cfg).unwrap();
        assert_eq!((s.delivered, s.deferred), (0, 1), "tls={mode}");
        assert!(
            last_reply(&e.spool, &id).contains("STARTTLS failed"),
            "{}",
            last_reply(&e.spool, &id)
        );
        qmail_dispatch::admin::retry(e.spool.path(), &[], "t").unwrap();
    }
    assert!(srv.transactions().is_empty());
    for s in srv.wait_sessions(2, std::time::Duration::from_secs(10)) {
        let plain = String::from_utf8_lossy(&s.plain);
        assert!(!plain.contains("MAIL FROM"), "{plain}");
    }
}

#[test]
fn self_signed_accepted_with_the_test_only_option_or_its_ca() {
    let e = env();
    let (cert, key) = localhost_cert(e.dir.path());
    let srv = SmtpServer::start(&["--tls-cert", &cert, "--tls-key", &key]);
    // the loudly named test-only switch
    let (id, body) = submit(&e.spool);
    let cfg = cfg_with(
        e.spool.path(),
        relay(&format!(
            "smtp://localhost:{}?tls=required&dangerous_accept_invalid_certs=true",
            srv.port
        )),
    );
    let s = Dispatcher::drain(cfg).unwrap();
    assert_eq!(s.delivered, 1, "{}", last_reply_opt(&e.spool, &id));
    // or trusting the certificate as a CA, with full verification (host name included)
    let (_, body2) = submit(&e.spool);
    let cfg = cfg_with(
        e.spool.path(),
        RelayConfig {
            ca_file: Some(cert.clone().into()),
            ..relay(&format!("smtp://localhost:{}?tls=required", srv.port))
        },
    );
    assert_eq!(Dispatcher::drain(cfg).unwrap().delivered, 1);
    let tx = srv.delivered();
    assert_eq!(tx.len(), 2);
    assert!(tx.iter().all(|t| t.tls), "both went over TLS");
    assert_eq!(tx[0].data, body);
    assert_eq!(tx[1].data, body2);
    for s in srv.wait_sessions(2, std::time::Duration::from_secs(10)) {
        let plain = String::from_utf8_lossy(&s.plain);
        assert!(
            !plain.contains("MAIL FROM") && !plain.contains("DATA"),
            "nothing of the mail before TLS: {plain}"
        );
        let tls_at = s
            .lines
            .iter()
            .position(|l| l == "STARTTLS")
            .expect("STARTTLS");
        assert!(
            s.lines[tls_at..].iter().any(|l| l.starts_with("EHLO")),
            "EHLO again after STARTTLS"
        );
    }
}

#[test]
fn implicit_tls_smtps() {
    let e = env();
    let (cert, key) = localhost_cert(e.dir.path());
    let srv = SmtpServer::start(&["--tls-cert", &cert, "--tls-key", &key, "--implicit-tls"]);
    let (_, body) = submit(&e.spool);
    let r = RelayConfig {
        ca_file: Some(cert.clone().into()),
        ..relay(&format!("smtps://localhost:{}", srv.port))
    };
    assert_eq!(
        Dispatcher::drain(cfg_with(e.spool.path(), r))
            .unwrap()
            .delivered,
        1
    );
    assert_eq!(srv.delivered()[0].data, body);
    // and refused without trusting it
    submit(&e.spool);
    let r = relay(&format!("smtps://localhost:{}", srv.port));
    assert_eq!(
        Dispatcher::drain(cfg_with(e.spool.path(), r))
            .unwrap()
            .deferred,
        1
    );
}

#[test]
fn auth_plain_over_starttls() {
    let e = env();
    let (cert, key) = localhost_cert(e.dir.path());
    let srv = SmtpServer::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--auth-user",
        USER,
        "--auth-pass",
        PASS,
    ]);
    let (_, body) = submit(&e.spool);
    let r = RelayConfig {
        ca_file: Some(cert.clone().into()),
        ..relay(&format!(
            "smtp://u%40example.com:{PASS}@localhost:{}",
            srv.port
        ))
    };
    assert_eq!(
        Dispatcher::drain(cfg_with(e.spool.path(), r))
            .unwrap()
            .delivered,
        1
    );
    let tx = srv.delivered();
    assert_eq!(tx[0].auth.as_deref(), Some(USER));
    assert!(tx[0].tls);
    assert_eq!(tx[0].data, body);
    // a wrong password: deferred, nothing sent
    let (id, _) = submit(&e.spool);
    let r = RelayConfig {
        ca_file: Some(cert.into()),
        ..relay(&format!(
            "smtp://u%40example.com:wrong@localhost:{}",
            srv.port
        ))
    };
    assert_eq!(
        Dispatcher::drain(cfg_with(e.spool.path(), r))
            .unwrap()
            .deferred,
        1
    );
    assert!(
        last_reply(&e.spool, &id).contains("AUTH failed"),
        "{}",
        last_reply(&e.spool, &id)
    );
    assert_eq!(srv.delivered().len(), 1);
}

fn secrets() -> Vec<String> {
    let b = base64::engine::general_purpose::STANDARD;
    vec![
        PASS.to_owned(),
        b.encode(PASS),
        b.encode(format!("\0{USER}\0{PASS}")),
        b.encode(format!("{USER}\0{USER}\0{PASS}")),
    ]
}

/// Q-13, servers 1-3: TLS required (the default with credentials) and not obtained: no AUTH,
/// MAIL, RCPT or DATA; deferred with a TLS error; the password never in cleartext.
#[test]
fn q13_starttls_stripped_never_falls_back_to_cleartext() {
    let e = env();
    let (cert, key) = localhost_cert(e.dir.path());
    let (ocert, okey) = make_cert(e.dir.path(), "other.example", "DNS:other.example");
    let (ocert, okey) = (
        ocert.to_string_lossy().into_owned(),
        okey.to_string_lossy().into_owned(),
    );
    let auth = ["--auth-user", USER, "--auth-pass", PASS];
    let servers = [
        (
            "EHLO without STARTTLS",
            [&auth[..], &[]].concat(),
            None,
            "does not offer STARTTLS",
        ),
        (
            "STARTTLS answered 454",
            [
                &auth[..],
                &["--tls-cert", &cert, "--tls-key", &key, "--starttls-454"],
            ]
            .concat(),
            Some(cert.clone()),
            "454",
        ),
        (
            "certificate for another host name",
            [&auth[..], &["--tls-cert", &ocert, "--tls-key", &okey]].concat(),
            Some(ocert.clone()),
            "STARTTLS failed",
        ),
    ];
    for (what, args, ca, err) in servers {
        let srv = SmtpServer::start(&args.iter().map(|s| s.as_ref()).collect::<Vec<&str>>());
        let (id, _) = submit(&e.spool);
        // no tls= in the URL: credentials make TLS required by default
        let r = RelayConfig {
            ca_file: ca.map(Into::into),
            ..relay(&format!(
                "smtp://u%40example.com:{PASS}@localhost:{}",
                srv.port
            ))
        };
        let cfg = cfg_with(e.spool.path(), r);
        assert_eq!(
            cfg.clone().resolve().unwrap().relays[0].tls,
            Some(TlsMode::Required)
        );
        let s = Dispatcher::drain(cfg).unwrap();
        assert_eq!((s.delivered, s.deferred), (0, 1), "{what}");
        let reply = last_reply(&e.spool, &id);
        assert!(reply.contains(err), "{what}: {reply}");
        assert!(srv.transactions().is_empty(), "{what}");
        let sess = srv.wait_sessions(1, std::time::Duration::from_secs(10));
        assert!(!sess.is_empty(), "{what}: the server saw the connection");
        for s in sess {
            let plain = String::from_utf8_lossy(&s.plain);
            for cmd in ["AUTH", "MAIL", "RCPT", "DATA"] {
                assert!(
                    !plain.to_ascii_uppercase().contains(cmd),
                    "{what}: {cmd} sent in cleartext: {plain}"
                );
            }
            for secret in secrets() {
                assert!(
                    !plain.contains(&secret),
                    "{what}: the password (or its base64) in cleartext"
                );
            }
        }
        // leave the spool empty for the next server
        std::fs::remove_file(e.spool.path().join("deferred").join(id.as_str())).unwrap();
    }
}

/// Q-13, server 4: EHLO again after TLS and only the post-TLS capabilities are used.
#[test]
fn q13_post_tls_capabilities_only() {
    let e = env();
    let (cert, key) = localhost_cert(e.dir.path());
    let srv = SmtpServer::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--auth-user",
        USER,
        "--auth-pass",
        PASS,
        "--auth-pre",
        "PLAIN",
        "--auth-post",
        "LOGIN",
    ]);
    let (_, body) = submit(&e.spool);
    let r = RelayConfig {
        ca_file: Some(cert.into()),
        ..relay(&format!(
            "smtp://u%40example.com:{PASS}@localhost:{}",
            srv.port
        ))
    };
    assert_eq!(
        Dispatcher::drain(cfg_with(e.spool.path(), r))
            .unwrap()
            .delivered,
        1
    );
    let tx = srv.delivered();
    assert_eq!((tx[0].auth.as_deref(), tx[0].tls), (Some(USER), true));
    assert_eq!(tx[0].data, body);
    let s = &srv.wait_sessions(1, std::time::Duration::from_secs(10))[0];
    let tls_at = s
        .lines
        .iter()
        .position(|l| l == "STARTTLS")
        .expect("STARTTLS");
    assert!(
        s.lines[tls_at..].iter().any(|l| l.starts_with("EHLO")),
        "EHLO again after TLS"
    );
    assert!(
        s.lines.iter().any(|l| l.starts_with("AUTH LOGIN")),
        "{:?}",
        s.lines
    );
    assert!(
        !s.lines.iter().any(|l| l.starts_with("AUTH PLAIN")),
        "{:?}",
        s.lines
    );
    let plain = String::from_utf8_lossy(&s.plain);
    assert!(!plain.contains("AUTH"));
}

#[test]
fn verification_is_on_by_default_and_tls_required_with_credentials() {
    let r = RelayConfig::from_url("smtp://u:p@mx.example:587")
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(r.tls, Some(TlsMode::Required));
    assert!(!r.dangerous_accept_invalid_certs);
    let r = RelayConfig::from_url("smtp://mx.example:25")
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(r.tls, Some(TlsMode::Opportunistic));
    assert!(!RelayConfig::default().dangerous_accept_invalid_certs);
    // AUTH is never sent in cleartext unless tls=none is explicit
    let e = env();
    let srv = SmtpServer::start(&["--auth-user", USER, "--auth-pass", PASS]);
    let (id, _) = submit(&e.spool);
    let r = relay(&format!(
        "smtp://u%40example.com:{PASS}@localhost:{}?tls=opportunistic",
        srv.port
    ));
    assert_eq!(
        Dispatcher::drain(cfg_with(e.spool.path(), r))
            .unwrap()
            .deferred,
        1
    );
    assert!(last_reply(&e.spool, &id).contains("cleartext"));
    for s in srv.wait_sessions(1, std::time::Duration::from_secs(10)) {
        for secret in secrets() {
            assert!(!String::from_utf8_lossy(&s.plain).contains(&secret));
        }
    }
}
