//! Where raw pointers from C become Rust values, and Rust values become pointers or bytes in C
//! buffers. With `panic.rs`, the only module with `unsafe` blocks; each says why it is sound.
//!
//! The pattern is rustls-ffi's `Castable`: a C type is a struct with only a zero-sized private
//! field (C sees an incomplete type it can only point to), and a [`Castable`] impl names the
//! Rust type behind it. A handle is always a `Box` made by [`to_boxed_mut_ptr`] and released
//! by [`free_box`].
//!
//! Every function here checks for NULL and turns it into [`Failure::Null`] naming the
//! parameter. What cannot be checked (a dangling pointer, a pointer to something else, a
//! handle used by two threads at once, a string without its NUL) is the caller's side of the
//! contract that each function's doc in `qmail.h` states.

use std::ffi::{CStr, OsStr, c_char};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::Failure;

/// A C handle type and the Rust value it stands for.
pub(crate) trait Castable {
    /// The Rust type behind the handle.
    type Rust;
}

/// Moves `value` to the heap and hands C an owning pointer to it; [`free_box`] takes it back.
pub(crate) fn to_boxed_mut_ptr<C: Castable>(value: C::Rust) -> *mut C {
    Box::into_raw(Box::new(value)).cast()
}

/// The value behind a handle, for mutation; `Failure::Null(param)` for NULL.
pub(crate) fn try_mut_from_ptr<'a, C: Castable>(
    ptr: *mut C,
    param: &'static str,
) -> Result<&'a mut C::Rust, Failure> {
    // SAFETY: a non-NULL handle was made by `to_boxed_mut_ptr::<C>` (so it points to a live,
    // aligned `C::Rust`) and has not been freed, and no other thread uses it during this call:
    // the contract of every function taking a `C *`, stated in qmail.h.
    unsafe { ptr.cast::<C::Rust>().as_mut() }.ok_or(Failure::Null(param))
}

/// The value behind a handle, read-only; `Failure::Null(param)` for NULL.
pub(crate) fn try_ref_from_ptr<'a, C: Castable>(
    ptr: *const C,
    param: &'static str,
) -> Result<&'a C::Rust, Failure> {
    // SAFETY: as `try_mut_from_ptr`; a `const C *` function only reads, and qmail.h says no
    // other thread may modify or free the handle during the call.
    unsafe { ptr.cast::<C::Rust>().as_ref() }.ok_or(Failure::Null(param))
}

/// Drops the value behind a handle made by [`to_boxed_mut_ptr`]. NULL is a no-op.
pub(crate) fn free_box<C: Castable>(ptr: *mut C) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: a non-NULL handle came from `Box::into_raw` in `to_boxed_mut_ptr::<C>` with the
    // same `C::Rust`, and qmail.h says it must not be freed twice or used afterwards, so this
    // is the one `Box` that owns it.
    drop(unsafe { Box::from_raw(ptr.cast::<C::Rust>()) });
}

/// The bytes of a NUL-terminated C string; `Failure::Null(param)` for NULL.
fn c_bytes<'a>(ptr: *const c_char, param: &'static str) -> Result<&'a [u8], Failure> {
    if ptr.is_null() {
        return Err(Failure::Null(param));
    }
    // SAFETY: non-NULL, and qmail.h requires every `const char *` argument to be a
    // NUL-terminated string that stays valid and unmodified during the call.
    Ok(unsafe { CStr::from_ptr(ptr) }.to_bytes())
}

/// A required UTF-8 string argument.
pub(crate) fn str_arg<'a>(ptr: *const c_char, param: &'static str) -> Result<&'a str, Failure> {
    let bytes = c_bytes(ptr, param)?;
    std::str::from_utf8(bytes).map_err(|e| Failure::Utf8 {
        param,
        valid_up_to: e.valid_up_to(),
    })
}

/// An optional UTF-8 string argument: NULL is `None`.
pub(crate) fn opt_str_arg<'a>(
    ptr: *const c_char,
    param: &'static str,
) -> Result<Option<&'a str>, Failure> {
    if ptr.is_null() {
        Ok(None)
    } else {
        str_arg(ptr, param).map(Some)
    }
}

/// A file system path argument: any bytes but NUL (Unix paths need not be UTF-8).
pub(crate) fn path_arg<'a>(ptr: *const c_char, param: &'static str) -> Result<&'a Path, Failure> {
    c_bytes(ptr, param).map(|b| Path::new(OsStr::from_bytes(b)))
}

/// `len` bytes at `data`; NULL is allowed when `len` is 0.
pub(crate) fn bytes_arg<'a>(
    data: *const u8,
    len: usize,
    param: &'static str,
) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if data.is_null() {
        return Err(Failure::Null(param));
    }
    // SAFETY: non-NULL, and qmail.h requires `data` to point to `len` readable bytes that
    // stay valid and unmodified during the call; `len` bytes of one C object never exceed
    // isize::MAX.
    Ok(unsafe { std::slice::from_raw_parts(data, len) })
}

/// `len` UTF-8 strings at `ptr` (an array of `const char *`); NULL is allowed when `len` is 0.
/// A NULL array or element is `Failure::Null(param)`.
pub(crate) fn str_array_arg<'a>(
    ptr: *const *const c_char,
    len: usize,
    param: &'static str,
) -> Result<Vec<&'a str>, Failure> {
    if len == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() {
        return Err(Failure::Null(param));
    }
    // SAFETY: non-NULL, and qmail.h requires `ptr` to point to `len` readable pointers that
    // stay valid and unmodified during the call; `len` elements of one C array never exceed
    // isize::MAX bytes.
    let items = unsafe { std::slice::from_raw_parts(ptr, len) };
    items.iter().map(|&p| str_arg(p, param)).collect()
}

/// Writes `s` into `buf` (`len` bytes) snprintf-style: as much as fits with a NUL, cut at a
/// UTF-8 character boundary. Returns `s.len()`. Writes nothing when `buf` is NULL or `len` 0.
pub(crate) fn write_truncated(buf: *mut c_char, len: usize, s: &str) -> usize {
    if buf.is_null() || len == 0 {
        return s.len();
    }
    let mut n = s.len().min(len - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: `buf` is non-NULL and qmail.h requires it to point to `len` writable bytes;
    // `n + 1 <= len`, and `s` (Rust memory) cannot overlap a buffer the caller owns.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
    s.len()
}

/// Stores `value` in the caller's `*out` (an out-parameter); `Failure::Null(param)` for NULL.
pub(crate) fn write_out<T: Copy>(
    out: *mut T,
    param: &'static str,
    value: T,
) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::Null(param));
    }
    // SAFETY: non-NULL, and qmail.h requires `out` to point to a writable, aligned `T` the
    // caller owns; `T: Copy` has no destructor, so overwriting what was there is fine.
    unsafe { out.write(value) };
    Ok(())
}

/// Writes `s` and a NUL into `buf`, which the caller checked holds `s.len() + 1` bytes.
pub(crate) fn write_whole(buf: *mut c_char, len: usize, s: &str) {
    assert!(
        !buf.is_null() && s.len() < len,
        "write_whole: the caller checks the buffer size"
    );
    write_truncated(buf, len, s);
}

/// A pointer C may keep: the string is static.
pub(crate) fn c_str_ptr(s: &'static CStr) -> *const c_char {
    s.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_utf8_whole() {
        let mut buf = [0x7f as c_char; 8];
        // "é" is 2 bytes: 6 fit with the NUL, and cutting at 7 would split the 'é'
        assert_eq!(write_truncated(buf.as_mut_ptr(), 7, "abcde\u{e9}x"), 8);
        let got = read_c(&buf);
        assert_eq!(got, "abcde");
        assert_eq!(write_truncated(std::ptr::null_mut(), 0, "abc"), 3);
        assert_eq!(write_truncated(buf.as_mut_ptr(), 1, "abc"), 3);
        assert_eq!(buf[0], 0);
    }

    fn read_c(buf: &[c_char]) -> String {
        let bytes: Vec<u8> = buf
            .iter()
            .map(|&c| c as u8)
            .take_while(|&b| b != 0)
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn null_arguments_are_failures() {
        assert!(matches!(
            str_arg(std::ptr::null(), "subject"),
            Err(Failure::Null("subject"))
        ));
        assert!(matches!(
            opt_str_arg(std::ptr::null(), "filename"),
            Ok(None)
        ));
        assert!(matches!(bytes_arg(std::ptr::null(), 0, "data"), Ok(&[])));
        assert!(matches!(
            bytes_arg(std::ptr::null(), 3, "data"),
            Err(Failure::Null("data"))
        ));
        let bad = c"a\xffb";
        assert!(matches!(
            str_arg(bad.as_ptr(), "subject"),
            Err(Failure::Utf8 { valid_up_to: 1, .. })
        ));
        assert_eq!(
            path_arg(bad.as_ptr(), "path")
                .unwrap()
                .as_os_str()
                .as_bytes(),
            b"a\xffb"
        );
    }
}
