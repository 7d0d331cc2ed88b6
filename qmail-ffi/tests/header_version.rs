//! include/qmail.h's version macros (cbindgen.toml `after_includes`) match Cargo.toml.

fn define(header: &str, name: &str) -> String {
    let prefix = format!("#define {name} ");
    header
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("include/qmail.h has no {name}"))
        .trim()
        .to_owned()
}

#[test]
fn header_version_macros_match_the_crate_version() {
    let header =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../include/qmail.h"))
            .unwrap();
    assert_eq!(
        define(&header, "QMAIL_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MAJOR")
    );
    assert_eq!(
        define(&header, "QMAIL_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_MINOR")
    );
    assert_eq!(
        define(&header, "QMAIL_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION_PATCH")
    );
    assert_eq!(
        define(&header, "QMAIL_VERSION"),
        format!("\"{}\"", env!("CARGO_PKG_VERSION"))
    );
}
