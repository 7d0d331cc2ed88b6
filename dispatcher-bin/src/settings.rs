//! The configuration as the binary assembles it: the TOML file (`--config`), then the
//! command-line options over it, then `QMAIL_SPOOL` when no spool is named anywhere.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use qmail_dispatch::{DispatchConfig, RelayConfig};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    Human,
    /// One JSON object per line.
    Json,
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The engine's configuration (resolved).
    pub dispatch: DispatchConfig,
    /// Log format.
    pub log_format: LogFormat,
    /// Prometheus endpoint.
    pub metrics: Option<SocketAddr>,
    /// The PostgreSQL queue (`[queue]`, or `--queue URL`).
    pub queue: Option<crate::forward::QueueSettings>,
}

/// The options that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub spools: Vec<PathBuf>,
    pub relays: Vec<String>,
    pub metrics: Option<SocketAddr>,
    pub workers: Option<usize>,
    pub log_format: Option<LogFormat>,
    pub queue: Option<String>,
    /// The command needs only the queue (`queue init`, `status --queue`): no spool required.
    pub queue_only: bool,
}

/// Loads and resolves the settings.
pub fn load(o: &Overrides) -> Result<Settings> {
    let mut table = match &o.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the configuration {}", path.display()))?;
            text.parse::<toml::Table>()
                .with_context(|| format!("{} is not valid TOML", path.display()))?
        }
        None => toml::Table::new(),
    };
    let log_format = match table.remove("log_format") {
        Some(v) => v
            .try_into::<LogFormat>()
            .context("log_format must be \"human\" or \"json\"")?,
        None => LogFormat::Human,
    };
    let metrics = match table.remove("metrics") {
        Some(toml::Value::String(s)) => Some(
            s.parse::<SocketAddr>()
                .with_context(|| format!("metrics = {s:?} is not host:port"))?,
        ),
        Some(_) => bail!("metrics must be a string \"host:port\""),
        None => None,
    };
    let mut queue: Option<crate::forward::QueueSettings> = match table.remove("queue") {
        Some(v) => Some(
            v.try_into()
                .context("[queue]: url = \"postgres://...\", schema, tombstone_secs")?,
        ),
        None => None,
    };
    if let Some(url) = &o.queue {
        match &mut queue {
            Some(q) => q.url = url.clone(),
            None => {
                queue = Some(crate::forward::QueueSettings {
                    url: url.clone(),
                    schema: "qmail".into(),
                    tombstone_secs: 7 * 86_400,
                })
            }
        }
    }
    let mut dispatch: DispatchConfig = toml::Value::Table(table).try_into().with_context(|| {
        format!(
            "in {}",
            o.config
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "the configuration".into())
        )
    })?;
    if !o.spools.is_empty() {
        dispatch.spools = o.spools.clone();
    }
    if dispatch.spools.is_empty()
        && let Ok(v) = std::env::var("QMAIL_SPOOL")
    {
        dispatch.spools = v
            .split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect();
    }
    if !o.relays.is_empty() {
        dispatch.relays = o
            .relays
            .iter()
            .map(|u| RelayConfig {
                url: Some(u.clone()),
                ..RelayConfig::default()
            })
            .collect();
    }
    if let Some(w) = o.workers {
        dispatch.workers = w;
    }
    let dispatch = if o.queue_only && dispatch.spools.is_empty() {
        dispatch
    } else {
        dispatch
            .resolve()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?
    };
    Ok(Settings {
        dispatch,
        log_format: o.log_format.unwrap_or(log_format),
        metrics: o.metrics.or(metrics),
        queue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_options() {
        let dir = std::env::temp_dir().join(format!("qmail-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            r#"
spools = ["/tmp/a"]
workers = 3
log_format = "json"
metrics = "127.0.0.1:9187"
[retry]
first_secs = 60
[[relay]]
url = "smtp://mx1.example:25?tls=none"
priority = 0
[[relay]]
host = "mx2.example"
port = 587
username = "u"
password = "p"
weight = 2
"#,
        )
        .unwrap();
        let s = load(&Overrides {
            config: Some(f.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.dispatch.workers, 3);
        assert_eq!(s.dispatch.retry.first_secs, 60);
        assert_eq!(s.dispatch.retry.max_secs, 4000);
        assert_eq!(s.dispatch.relays.len(), 2);
        assert_eq!(
            s.dispatch.relays[1].tls,
            Some(qmail_dispatch::TlsMode::Required)
        );
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(s.metrics.is_some());
        let s = load(&Overrides {
            config: Some(f),
            spools: vec!["/tmp/b".into()],
            relays: vec!["smtps://x.example".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.dispatch.spools, [PathBuf::from("/tmp/b")]);
        assert_eq!(s.dispatch.relays.len(), 1);
        std::fs::write(dir.join("bad.toml"), "spools = [\"/tmp/a\"]\nwokers = 3\n").unwrap();
        assert!(
            load(&Overrides {
                config: Some(dir.join("bad.toml")),
                ..Default::default()
            })
            .is_err(),
            "unknown keys are errors"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
