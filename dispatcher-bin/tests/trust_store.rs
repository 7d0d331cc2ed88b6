//! TLS is verified against the system trust store (rustls-native-certs), not compiled-in
//! roots: a relay whose certificate chains to a CA the operator added to the store
//! (`SSL_CERT_FILE`, honoured by rustls-native-certs like OpenSSL) is trusted without any
//! `ca_file`; without it the same relay is refused.

#[path = "../../qmail-dispatch/tests/dispatch_common/mod.rs"]
mod dispatch_common;

use std::process::Command;

use dispatch_common::*;
use qmail_core::{Message, Spool};

const BIN: &str = env!("CARGO_BIN_EXE_qmail-dispatcher");

fn drain(spool: &Spool, port: u16, cert_file: Option<&std::path::Path>) -> String {
    let mut c = Command::new(BIN);
    c.arg("--spool")
        .arg(spool.path())
        .arg("--relay")
        .arg(format!("smtp://localhost:{port}?tls=required"))
        .arg("drain")
        .env("QMAIL_LOG", "warn")
        .env_remove("SSL_CERT_DIR");
    match cert_file {
        Some(f) => c.env("SSL_CERT_FILE", f),
        None => c.env_remove("SSL_CERT_FILE"),
    };
    let o = c.output().expect("run qmail-dispatcher");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn system_trust_store_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path(), "localhost", "DNS:localhost,IP:127.0.0.1");
    let srv = SmtpServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    let m = Message::builder()
        .from("a@example.com")
        .to("b@example.org")
        .subject("t")
        .text("hello")
        .build()
        .unwrap();
    spool.submit(&m).unwrap();
    // control: the default store does not know this self-signed certificate
    let out = drain(&spool, srv.port, None);
    assert!(out.contains("delivered 0, deferred 1"), "{out}");
    assert!(srv.transactions().is_empty());
    // the operator's store (here: SSL_CERT_FILE) trusts it: delivered, no ca_file needed
    qmail_dispatch::admin::retry(spool.path(), &[], "t").unwrap();
    let out = drain(&spool, srv.port, Some(&cert));
    assert!(out.contains("delivered 1"), "{out}");
    let tx = srv.delivered();
    assert_eq!(tx.len(), 1);
    assert!(tx[0].tls);
}
