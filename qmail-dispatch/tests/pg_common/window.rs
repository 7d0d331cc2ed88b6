//! The end-of-DATA window rule of the PostgreSQL torture and failover runs (issue 12), as
//! `dispatcher-bin/tests/faults.rs` applies it to a directory spool: a message may reach the
//! relay twice only when the process that sent the first copy was SIGKILLed or stopped past
//! its lease (or lost its database) after the relay had the whole DATA and before the settle
//! was written. Each copy is attributed by the EHLO name of its sender (`NAME.test`) and the
//! relay's time (when it had the whole DATA); each fault is an [`Event`] with its time.
//!
//! Records are read from the recording aiosmtpd relay's directory (`tests/smtp/smtp_server.py
//! --record DIR`, one `tx-N.json` per DATA), so relays started by hand (in a network
//! namespace) are read the same way as `dispatch_common::SmtpServer`'s.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

/// A copy may be attributed to a fault at most this long before the fault (seconds): the
/// relay recorded it, replied 250, and the settle had not been written yet.
pub const BEFORE: f64 = 0.5;
/// ... or this long after it (the signal was being delivered while the relay wrote its record).
pub const AFTER: f64 = 0.2;

/// One accepted copy of one recipient at the relay.
#[derive(Debug, Clone)]
pub struct Copy {
    pub rcpt: String,
    /// The sender's name: its EHLO name without `.test`.
    pub sender: String,
    /// When the relay had the whole DATA (Unix seconds).
    pub time: f64,
}

/// A fault: `who` (a process name, or `*` when every process lost its database at once, as in
/// a failover) killed, stopped past its lease or cut off at `time`.
#[derive(Debug, Clone)]
pub struct Event {
    pub time: f64,
    pub who: String,
    pub what: String,
}

/// The current time as the relay records it (Unix seconds, float).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Every accepted copy (reply 250 to end-of-data) recorded in `dir`, one per recipient.
pub fn accepted_copies(dir: &Path) -> Vec<Copy> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("tx-") {
            continue;
        }
        let Ok(bytes) = std::fs::read(e.path()) else {
            continue;
        };
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        if !v["reply"].as_str().unwrap_or("").starts_with("250") {
            continue;
        }
        let sender = v["ehlo"]
            .as_str()
            .unwrap_or("")
            .trim_end_matches(".test")
            .to_owned();
        let time = v["time"].as_f64().unwrap_or(0.0);
        for r in v["rcpt_tos"].as_array().into_iter().flatten() {
            out.push(Copy {
                rcpt: r.as_str().unwrap_or("").to_owned(),
                sender: sender.clone(),
                time,
            });
        }
    }
    out
}

/// Copies per recipient.
pub fn per_rcpt(copies: &[Copy]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for c in copies {
        *m.entry(c.rcpt.clone()).or_insert(0) += 1;
    }
    m
}

/// What [`judge`] found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Expected recipients the relay never accepted.
    pub missing: Vec<String>,
    /// Extra copies in all (a recipient accepted twice counts 1, three times 2).
    pub duplicates: usize,
    /// Recipients accepted more than twice (each extra copy is explained on its own: two
    /// faults, each in the window of the copy before).
    pub over_twice: Vec<(String, usize)>,
    /// Duplicates explained, per event (same order as the events).
    pub per_event: Vec<usize>,
    /// Copies followed by another copy that no fault of their sender explains, with the
    /// reason.
    pub unexplained: Vec<String>,
}

/// Applies the rule to `copies`: every `expected` recipient accepted, and every copy of a
/// recipient but its last one sent by a process that an event hit within
/// [`BEFORE`]/[`AFTER`] of that copy. A later copy exists only because the one before it was
/// never settled; so with two faults, each in its own window, a message may be accepted three
/// times, and each of the two extra copies is charged to its own fault.
pub fn judge(expected: &[String], copies: &[Copy], events: &[Event]) -> Verdict {
    let counts = per_rcpt(copies);
    let mut v = Verdict {
        per_event: vec![0; events.len()],
        ..Verdict::default()
    };
    v.missing = expected
        .iter()
        .filter(|r| !counts.contains_key(*r))
        .cloned()
        .collect();
    v.missing.sort();
    let mut rcpts: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n >= 2).collect();
    rcpts.sort();
    for (rcpt, &n) in rcpts {
        v.duplicates += n - 1;
        if n > 2 {
            v.over_twice.push((rcpt.clone(), n));
        }
        let mut mine: Vec<&Copy> = copies.iter().filter(|c| &c.rcpt == rcpt).collect();
        mine.sort_by(|a, b| a.time.total_cmp(&b.time));
        for (k, copy) in mine[..n - 1].iter().enumerate() {
            match events.iter().position(|e| {
                (e.who == "*" || e.who == copy.sender)
                    && copy.time <= e.time + AFTER
                    && copy.time >= e.time - BEFORE
            }) {
                Some(i) => v.per_event[i] += 1,
                None => v.unexplained.push(format!(
                    "{rcpt}: copy {} of {n} by {} at {:.3} is in no fault's window of its \
                     sender; all copies: {:?}",
                    k + 1,
                    copy.sender,
                    copy.time,
                    mine.iter()
                        .map(|c| format!("{} at {:.3}", c.sender, c.time))
                        .collect::<Vec<_>>()
                )),
            }
        }
    }
    v
}
