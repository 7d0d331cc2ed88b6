//! A relay URL's port: a number outside 1..=65535 is reported as out of range, not as "not a
//! number" (issue 15).

use qmail_dispatch::RelayConfig;

#[test]
fn port_out_of_range_is_named_as_such() {
    for bad in [
        "smtp://mx.example:99999",
        "smtp://mx.example:0",
        "smtp://mx.example:65536",
    ] {
        let e = RelayConfig::from_url(bad).unwrap_err();
        assert_eq!(e.field(), Some("relay.port"), "{bad}");
        assert!(
            e.message().contains("out of range"),
            "{bad}: {}",
            e.message()
        );
    }
    let e = RelayConfig::from_url("smtp://mx.example:2x5").unwrap_err();
    assert!(e.message().contains("not a number"), "{}", e.message());
    assert_eq!(
        RelayConfig::from_url("smtp://mx.example:65535")
            .unwrap()
            .port,
        65535
    );
}
