//! The panic boundary: no panic ever unwinds into C, and none is printed.
//!
//! Every `extern "C"` body runs inside [`ffi_fallible`] (functions returning a
//! `qmail_result`) or [`ffi_infallible`] (the others). A panic is caught with `catch_unwind`;
//! a fallible function then returns `QMAIL_RESULT_PANIC`, an infallible one the value its
//! [`PanicDefault`] names (NULL, 0, false, `""`), and the panic message becomes the calling
//! thread's last error (`qmail_last_error_message()`).
//!
//! Rust's default panic hook writes to stderr before unwinding. On the first call into the
//! library a hook is installed that, for a panic on a thread that is inside one of our calls,
//! records the message instead of printing it, and hands every other panic to the hook that
//! was there before (so a Rust host program's own panics look as they always did). A host
//! that replaces the panic hook after its first qmail call loses that filtering, not the
//! boundary.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::c_char;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use crate::error::{Failure, clear_last_error, qmail_result, set_last_error};

thread_local! {
    /// How many boundaries this thread is inside (0: the panic is not ours).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// The message the hook recorded for the panic being caught.
    static PANIC_MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if DEPTH.try_with(Cell::get).unwrap_or(0) == 0 {
                return previous(info);
            }
            let text = match info.location() {
                Some(l) => format!(
                    "{} at {}:{}",
                    payload_text(info.payload()),
                    l.file(),
                    l.line()
                ),
                None => payload_text(info.payload()),
            };
            let _ = PANIC_MESSAGE.try_with(|m| {
                if let Ok(mut m) = m.try_borrow_mut() {
                    *m = Some(text);
                }
            });
        }));
    });
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Leaves a boundary on drop, also when the closure panicked.
struct Inside;

impl Inside {
    fn enter() -> Inside {
        DEPTH.with(|d| d.set(d.get() + 1));
        Inside
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let _ = DEPTH.try_with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Runs `f`, catching a panic; `Err` holds the panic message.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let inside = Inside::enter();
    // AssertUnwindSafe: after a panic the only state we touch again is the thread-local last
    // error; a handle that was being mutated is documented as unusable after QMAIL_RESULT_PANIC.
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    drop(inside);
    result.map_err(|payload| {
        PANIC_MESSAGE
            .try_with(|m| m.try_borrow_mut().ok().and_then(|mut m| m.take()))
            .ok()
            .flatten()
            .unwrap_or_else(|| payload_text(payload.as_ref()))
    })
}

/// The boundary of a function returning `qmail_result`: `Ok` clears the last error, a
/// failure or a panic sets it.
pub(crate) fn ffi_fallible(f: impl FnOnce() -> Result<(), Failure>) -> qmail_result {
    match guarded(f) {
        Ok(Ok(())) => {
            clear_last_error();
            qmail_result::Ok
        }
        Ok(Err(failure)) => set_last_error(failure),
        Err(message) => set_last_error(Failure::Panic(message)),
    }
}

/// The boundary of a function that returns a value instead of a `qmail_result`.
pub(crate) fn ffi_infallible<T: PanicDefault>(f: impl FnOnce() -> T) -> T {
    match guarded(f) {
        Ok(v) => v,
        Err(message) => {
            set_last_error(Failure::Panic(message));
            T::panic_default()
        }
    }
}

/// What an infallible function returns when it panicked.
pub(crate) trait PanicDefault {
    fn panic_default() -> Self;
}

impl<T> PanicDefault for *mut T {
    fn panic_default() -> Self {
        std::ptr::null_mut()
    }
}

impl PanicDefault for *const c_char {
    /// `""`: functions returning a string promise never to return NULL.
    fn panic_default() -> Self {
        c"".as_ptr()
    }
}

impl PanicDefault for usize {
    fn panic_default() -> Self {
        0
    }
}

impl PanicDefault for bool {
    fn panic_default() -> Self {
        false
    }
}

impl PanicDefault for () {
    fn panic_default() -> Self {}
}

impl PanicDefault for qmail_result {
    fn panic_default() -> Self {
        qmail_result::Panic
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{qmail_last_error_message, qmail_last_error_result};

    fn last_message() -> String {
        let mut buf = vec![0 as c_char; 512];
        let n = qmail_last_error_message(buf.as_mut_ptr(), buf.len());
        let bytes: Vec<u8> = buf[..n.min(511)].iter().map(|&c| c as u8).collect();
        String::from_utf8(bytes).unwrap()
    }

    fn panicking() -> Result<(), Failure> {
        panic!("boom {}", 42)
    }

    #[test]
    fn a_panic_becomes_a_result_and_the_last_error() {
        assert_eq!(ffi_fallible(panicking), qmail_result::Panic);
        assert_eq!(qmail_last_error_result(), qmail_result::Panic);
        let m = last_message();
        assert!(
            m.starts_with("qmail panicked (a bug in qmail): boom 42 at "),
            "{m}"
        );
        assert!(m.contains("panic.rs"), "{m}");
        // the next successful call clears it
        assert_eq!(ffi_fallible(|| Ok(())), qmail_result::Ok);
        assert_eq!(last_message(), "");
        let p: *mut u8 = ffi_infallible(|| panic!("in new"));
        assert!(p.is_null());
        assert!(last_message().contains("in new"));
        // a panic outside a boundary still reaches the previous hook (and unwinds as usual)
        assert!(std::panic::catch_unwind(|| panic!("outside")).is_err());
    }

    /// Runs this test binary again with `--nocapture` and a panic inside the boundary: the
    /// child's stderr must not show the panic (the default hook would print it).
    #[test]
    fn a_caught_panic_prints_nothing() {
        if std::env::var_os("QMAIL_FFI_PANIC_CHILD").is_some() {
            assert_eq!(
                ffi_fallible(|| panic!("secret-panic-text")),
                qmail_result::Panic
            );
            assert!(last_message().contains("secret-panic-text"));
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "panic::tests::a_caught_panic_prints_nothing",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("QMAIL_FFI_PANIC_CHILD", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed: {stdout}{stderr}");
        assert!(stdout.contains("1 passed"), "child ran no test: {stdout}");
        assert!(
            !stderr.contains("secret-panic-text") && !stdout.contains("secret-panic-text"),
            "printed: {stderr}"
        );
    }
}
