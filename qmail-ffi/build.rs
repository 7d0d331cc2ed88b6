//! Gives `libqmail.so` the SONAME `libqmail.so.MAJOR` (`libqmail.so.0` for 0.x), so that a
//! program linked against it keeps loading it across compatible updates and refuses a library
//! whose major version changed. Only the cdylib gets the flag; the staticlib and rlib are
//! untouched. `scripts/build-c` installs the file under that name with the usual symlinks.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" || target_os.ends_with("bsd") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libqmail.so.{major}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
