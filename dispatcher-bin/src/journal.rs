//! Log priorities for the journal. Under systemd, stderr is a stream to journald
//! (`JOURNAL_STREAM=dev:inode` names it, systemd.exec(5)); a line starting with `<N>` gets
//! syslog priority N (sd-daemon(3)), so errors are found with `journalctl -p err`. Elsewhere
//! (a terminal, a file, a pipe) lines carry no prefix.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// True when stderr is the stream `JOURNAL_STREAM` names (not merely inherited from a parent
/// whose stderr it was: the device and inode must match).
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// The syslog priority of a level (RFC 5424 §6.2.1: 3 error, 4 warning, 6 informational,
/// 7 debug).
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// An event formatter that puts `<N>` before what the inner formatter writes, when `on`.
#[derive(Debug)]
pub struct Prefixed<F> {
    inner: F,
    on: bool,
}

impl<F> Prefixed<F> {
    /// Wraps `inner`; `on` is usually [`stderr_is_journal`].
    pub fn new(inner: F, on: bool) -> Self {
        Prefixed { inner, on }
    }
}

impl<S, N, F> FormatEvent<S, N> for Prefixed<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.on {
            write!(writer, "<{}>", priority(event.metadata().level()))?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}
