//! `qmail_message_state` over real spool directories (called through its C ABI signature).

use std::ffi::{CString, c_char};
use std::ptr;

use qmail::error::qmail_result;
use qmail::status::{qmail_message_state, qmail_message_status, qmail_state};
use qmail_core::{Message, Spool};

fn blank() -> qmail_message_status {
    qmail_message_status {
        state: qmail_state::Unknown,
        attempts: 99,
        next_attempt: -1,
        delivered_at: -1,
    }
}

fn ask(spool: &CString, id: &str, buf: &mut [c_char]) -> (qmail_result, qmail_message_status) {
    let id = CString::new(id).unwrap();
    let mut out = blank();
    let r = qmail_message_state(
        spool.as_ptr(),
        id.as_ptr(),
        ptr::null(),
        &mut out,
        buf.as_mut_ptr(),
        buf.len(),
    );
    (r, out)
}

fn text(buf: &[c_char]) -> String {
    let b: Vec<u8> = buf
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8(b).unwrap()
}

#[test]
fn states_replies_and_errors() {
    let d = tempfile::tempdir().unwrap();
    let spool = Spool::open(d.path()).unwrap();
    let m = Message::builder()
        .from("a@example.com")
        .to("b@example.org")
        .subject("s")
        .text("t")
        .build()
        .unwrap();
    let id = spool.submit(&m).unwrap();
    let sp = CString::new(d.path().to_str().unwrap()).unwrap();
    let mut buf = [0 as c_char; 64];
    let (r, s) = ask(&sp, id.as_str(), &mut buf);
    assert_eq!(r, qmail_result::Ok);
    assert_eq!(
        (s.state, s.attempts, s.next_attempt, s.delivered_at),
        (qmail_state::Queued, 0, 0, 0)
    );
    // deferred, with the dispatcher's state file: attempts, next attempt, last reply
    std::fs::rename(
        d.path().join("ready").join(id.as_str()),
        d.path().join("deferred").join(id.as_str()),
    )
    .unwrap();
    std::fs::create_dir_all(d.path().join("state")).unwrap();
    std::fs::write(
        d.path().join("state").join(format!("{id}.json")),
        r#"{"attempts":2,"next_due":4102444800,"history":[{"at_ms":1,"results":[{"rcpt":"b@example.org","status":"deferred","reply":{"code":451,"text":"4.7.1 greylisted, try again later please"}}]}]}"#,
    )
    .unwrap();
    let (r, s) = ask(&sp, id.as_str(), &mut buf);
    assert_eq!(r, qmail_result::Ok);
    assert_eq!(
        (s.state, s.attempts, s.next_attempt),
        (qmail_state::Deferred, 2, 4102444800)
    );
    assert_eq!(text(&buf), "451 4.7.1 greylisted, try again later please");
    // a small buffer: truncated, NUL-terminated
    let mut small = [0x7f as c_char; 8];
    assert_eq!(ask(&sp, id.as_str(), &mut small).0, qmail_result::Ok);
    assert_eq!(text(&small), "451 4.7");
    // held
    std::fs::rename(
        d.path().join("deferred").join(id.as_str()),
        d.path().join("hold").join(id.as_str()),
    )
    .unwrap();
    assert_eq!(ask(&sp, id.as_str(), &mut buf).1.state, qmail_state::Held);
    // unknown id, bad id, NULLs, a missing spool
    let other = qmail_core::QueueId::generate();
    assert_eq!(
        ask(&sp, other.as_str(), &mut buf).1.state,
        qmail_state::Unknown
    );
    assert_eq!(
        ask(&sp, "../../etc/passwd", &mut buf).0,
        qmail_result::InvalidArgument
    );
    let missing = CString::new(d.path().join("nope").to_str().unwrap()).unwrap();
    assert_eq!(
        ask(&missing, id.as_str(), &mut buf).0,
        qmail_result::SpoolUnavailable
    );
    let cid = CString::new(id.as_str()).unwrap();
    let r = qmail_message_state(
        sp.as_ptr(),
        cid.as_ptr(),
        ptr::null(),
        ptr::null_mut(),
        ptr::null_mut(),
        0,
    );
    assert_eq!(r, qmail_result::NullParameter);
    let mut out = blank();
    let r = qmail_message_state(
        ptr::null(),
        cid.as_ptr(),
        ptr::null(),
        &mut out,
        ptr::null_mut(),
        0,
    );
    assert_eq!(r, qmail_result::NullParameter);
}
