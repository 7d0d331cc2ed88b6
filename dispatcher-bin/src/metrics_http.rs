//! The `--metrics ADDR` endpoint: a minimal HTTP/1.0 responder serving the Prometheus text
//! format on any path (one thread; scrapes are rare and small).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qmail_dispatch::{Metrics, admin};

/// What the endpoint shows; swapped when SIGHUP rebuilds the dispatcher.
pub type Shown = Arc<Mutex<(Arc<Metrics>, Vec<PathBuf>)>>;

fn render(shown: &Shown) -> String {
    let (metrics, spools) = {
        let g = shown.lock().unwrap_or_else(|p| p.into_inner());
        (Arc::clone(&g.0), g.1.clone())
    };
    let mut s = metrics.render();
    s.push_str("# HELP qmail_queue_messages Messages per spool and state.\n# TYPE qmail_queue_messages gauge\n");
    let mut ages = String::from(
        "# HELP qmail_queue_oldest_age_seconds Age of the oldest message per spool and state.\n# TYPE qmail_queue_oldest_age_seconds gauge\n",
    );
    for sp in spools {
        let st = admin::status(&sp);
        let name = sp
            .display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        for (state, c) in [
            ("ready", &st.ready),
            ("scheduled", &st.scheduled),
            ("active", &st.active),
            ("deferred", &st.deferred),
            ("failed", &st.failed),
            ("corrupt", &st.corrupt),
        ] {
            s.push_str(&format!(
                "qmail_queue_messages{{spool=\"{name}\",state=\"{state}\"}} {}\n",
                c.count
            ));
            if let Some(a) = c.oldest_age_secs {
                ages.push_str(&format!(
                    "qmail_queue_oldest_age_seconds{{spool=\"{name}\",state=\"{state}\"}} {a}\n"
                ));
            }
        }
    }
    s.push_str(&ages);
    s
}

/// Binds and serves in a background thread.
pub fn serve(addr: SocketAddr, shown: Shown) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics: {e}"))?;
    tracing::info!(%addr, "metrics endpoint listening");
    std::thread::Builder::new().name("qmail-metrics".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 2048];
            let _ = c.read(&mut buf);
            let body = render(&shown);
            let _ = write!(
                c,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })?;
    Ok(())
}
