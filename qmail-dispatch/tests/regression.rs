//! Regressions of the dispatch engine found by trying to break it.

/// `ehlo_name` goes into the EHLO command: CR/LF or spaces in it used to reach the wire as
/// extra SMTP commands. Only a host name or an address literal is accepted.
#[test]
fn ehlo_name_cannot_inject_commands() {
    use qmail_dispatch::DispatchConfig;
    let dir = tempfile::tempdir().unwrap();
    let with = |name: &str| DispatchConfig {
        spools: vec![dir.path().to_owned()],
        ehlo_name: Some(name.to_owned()),
        ..DispatchConfig::default()
    };
    for bad in [
        "evil\r\nMAIL FROM:<x@y>",
        "a b",
        "host\n",
        "[1.2.3]",
        "a..b",
    ] {
        let e = with(bad).resolve().unwrap_err();
        assert_eq!(e.field(), Some("ehlo_name"), "{bad:?}");
    }
    for good in [
        "mail.example.com",
        "localhost",
        "[127.0.0.1]",
        "[IPv6:::1]",
        "web_1",
    ] {
        assert!(with(good).resolve().is_ok(), "{good:?}");
    }
}
