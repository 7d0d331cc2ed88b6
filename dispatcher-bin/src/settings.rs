//! The configuration as the binary assembles it: the TOML file (`--config`), then the
//! command-line options over it, then `QMAIL_SPOOL` when no spool is named anywhere.
//!
//! The file is parsed straight into the engine's typed structs (`qmail_dispatch::config`)
//! from a span-carrying TOML tree, so every error names the file, the line and the column
//! (`/etc/qmail/dispatcher.toml:12:10: weight=4294967296 is out of range`) and, for a relay,
//! which one (`relay 2 (mx2.example)`), as `postconf` does for Postfix.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use qmail_dispatch::{DispatchConfig, RelayConfig};
use serde::Deserialize;
use toml::Spanned;
use toml::de::DeTable;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    Human,
    /// One JSON object per line (fields flat: no record inside `message`).
    Json,
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The engine's configuration (resolved).
    pub dispatch: DispatchConfig,
    /// Log format.
    pub log_format: LogFormat,
    /// The HTTP listener (metrics, healthz, API, console).
    pub http: Option<SocketAddr>,
    /// The token the API's actions need (`[http] token` / `token_file`).
    pub http_token: Option<String>,
    /// The PostgreSQL queue (`[queue]`, or `--queue URL`).
    pub queue: Option<crate::forward::QueueSettings>,
}

/// The options that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub spools: Vec<PathBuf>,
    pub relays: Vec<String>,
    pub http: Option<SocketAddr>,
    pub workers: Option<usize>,
    pub log_format: Option<LogFormat>,
    pub queue: Option<String>,
    /// The command needs only the queue (`queue init`, `status --queue`): no spool required.
    pub queue_only: bool,
}

/// `[http]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HttpSection {
    /// `host:port` or a bare port (127.0.0.1).
    listen: Option<String>,
    /// The token of the API's actions.
    token: Option<String>,
    /// A file whose first line is the token.
    token_file: Option<PathBuf>,
}

/// The binary's own keys of the file (the rest is the engine's `DispatchConfig`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BinSection {
    log_format: Option<LogFormat>,
    /// The old name of `[http] listen`.
    metrics: Option<String>,
    http: Option<HttpSection>,
    /// `[queue]`: the PostgreSQL queue (`url = "postgres://..."`, `schema`, `tombstone_secs`,
    /// `local_fence_ms`).
    queue: Option<crate::forward::QueueSettings>,
}

const BIN_KEYS: [&str; 4] = ["log_format", "metrics", "http", "queue"];

/// `host:port`, or a bare port meaning `127.0.0.1:port` (`localhost` is 127.0.0.1).
///
/// # Errors
/// Neither form.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(p) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], p)));
    }
    if let Some(p) = s.strip_prefix("localhost:") {
        return p
            .parse::<u16>()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .map_err(|_| format!("{s:?}: the port is not a number within 0..=65535"));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not host:port (e.g. 127.0.0.1:9187) or a port"))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, off: usize) -> (usize, usize) {
    let off = off.min(text.len());
    let before = text.get(..off).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Where things are in the file.
struct Spans<'t> {
    file: &'t Path,
    text: &'t str,
    /// `key` and `table.key` of the engine's part.
    keys: Vec<(String, Range<usize>)>,
    /// Each `[[relay]]`: its table and its `url` value.
    relays: Vec<(Range<usize>, Option<Range<usize>>)>,
}

impl Spans<'_> {
    fn at(&self, span: Option<Range<usize>>, msg: impl std::fmt::Display) -> anyhow::Error {
        match span {
            Some(s) => {
                let (l, c) = line_col(self.text, s.start);
                anyhow::anyhow!("{}:{l}:{c}: {msg}", self.file.display())
            }
            None => anyhow::anyhow!("{}: {msg}", self.file.display()),
        }
    }

    fn key(&self, field: &str) -> Option<Range<usize>> {
        self.keys
            .iter()
            .find(|(k, _)| k == field)
            .map(|(_, s)| s.clone())
    }
}

fn toml_err(file: &Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let msg = e.message().trim_end();
    match e.span() {
        Some(s) => {
            let (l, c) = line_col(text, s.start);
            anyhow::anyhow!("{}:{l}:{c}: {msg}", file.display())
        }
        None => anyhow::anyhow!("{}: {msg}", file.display()),
    }
}

/// A relay's name for errors: its `name`, else its host, else its URL without credentials.
fn relay_label(r: &RelayConfig) -> String {
    if !r.name.is_empty() {
        return r.name.clone();
    }
    if !r.host.is_empty() {
        return r.host.clone();
    }
    match r.url.as_deref().map(url::Url::parse) {
        Some(Ok(mut u)) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        _ => "no host".into(),
    }
}

struct Parsed {
    dispatch: DispatchConfig,
    bin: BinSection,
}

fn parse_file<'t>(file: &'t Path, text: &'t str) -> Result<(Parsed, Spans<'t>)> {
    let root = DeTable::parse(text).map_err(|e| toml_err(file, text, &e))?;
    let whole = root.span();
    let mut bin = DeTable::new();
    let mut eng = DeTable::new();
    let mut spans = Spans {
        file,
        text,
        keys: Vec::new(),
        relays: Vec::new(),
    };
    for (k, v) in root.into_inner() {
        let name = k.get_ref().to_string();
        spans.keys.push((name.clone(), v.span()));
        if let Some(t) = v.get_ref().as_table() {
            for (k2, v2) in t.iter() {
                spans
                    .keys
                    .push((format!("{name}.{}", k2.get_ref()), v2.span()));
            }
        }
        if name == "relay"
            && let Some(a) = v.get_ref().as_array()
        {
            for r in a.iter() {
                let url = r.get_ref().as_table().and_then(|t| {
                    t.iter()
                        .find(|(k, _)| k.get_ref() == "url")
                        .map(|(_, v)| v.span())
                });
                spans.relays.push((r.span(), url));
            }
        }
        if BIN_KEYS.contains(&name.as_str()) {
            bin.insert(k, v);
        } else {
            eng.insert(k, v);
        }
    }
    let b = BinSection::deserialize(toml::de::Deserializer::from(Spanned::new(
        whole.clone(),
        bin,
    )))
    .map_err(|e| toml_err(file, text, &e))?;
    let d = DispatchConfig::deserialize(toml::de::Deserializer::from(Spanned::new(whole, eng)))
        .map_err(|e| toml_err(file, text, &e))?;
    Ok((
        Parsed {
            dispatch: d,
            bin: b,
        },
        spans,
    ))
}

/// Reads the token of `[http]`.
fn http_token(h: &HttpSection) -> Result<Option<String>> {
    let t = match (&h.token, &h.token_file) {
        (Some(_), Some(_)) => bail!("[http]: set token or token_file, not both"),
        (Some(t), None) => t.trim().to_owned(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("[http] token_file: cannot read {}", f.display()))?
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if t.len() < 16 {
        bail!("[http] token: at least 16 characters (e.g. `openssl rand -hex 16`)");
    }
    Ok(Some(t))
}

/// Loads and resolves the settings.
pub fn load(o: &Overrides) -> Result<Settings> {
    let text: String;
    let (parsed, spans) = match &o.config {
        Some(path) => {
            text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the configuration {}", path.display()))?;
            let (p, s) = parse_file(path, &text)?;
            (p, Some(s))
        }
        None => (
            Parsed {
                dispatch: DispatchConfig::default(),
                bin: BinSection::default(),
            },
            None,
        ),
    };
    let Parsed { mut dispatch, bin } = parsed;
    let at = |field: &str, msg: String| match &spans {
        Some(s) => s.at(s.key(field), msg),
        None => anyhow::anyhow!("{msg}"),
    };
    let http_section = bin.http.clone().unwrap_or_default();
    let listen = match (&http_section.listen, &bin.metrics) {
        (Some(_), Some(_)) => {
            return Err(at(
                "metrics",
                "set [http] listen or metrics (its old name), not both".into(),
            ));
        }
        (Some(l), None) => {
            Some(parse_listen(l).map_err(|e| at("http.listen", format!("[http] listen: {e}")))?)
        }
        (None, Some(m)) => {
            Some(parse_listen(m).map_err(|e| at("metrics", format!("metrics: {e}")))?)
        }
        (None, None) => None,
    };
    let http_token = http_token(&http_section).map_err(|e| at("http", format!("{e:#}")))?;
    let mut queue = bin.queue.clone();
    if let Some(url) = &o.queue {
        match &mut queue {
            Some(q) => q.url = url.clone(),
            None => {
                queue = Some(crate::forward::QueueSettings {
                    url: url.clone(),
                    schema: "qmail".into(),
                    tombstone_secs: 7 * 86_400,
                    local_fence_ms: crate::forward::default_local_fence(),
                })
            }
        }
    }
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
    let from_cli = !o.relays.is_empty();
    if from_cli {
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
    // each relay on its own first, so the error says which one and where
    for (i, r) in dispatch.relays.iter().enumerate() {
        if let Err(e) = r.clone().resolve() {
            let label = relay_label(r);
            if from_cli {
                bail!("--relay {} ({label}): {e}", i + 1);
            }
            let msg = format!("relay {} ({label}): {e}", i + 1);
            return Err(match &spans {
                Some(s) => {
                    let (table, url) = s.relays.get(i).cloned().unwrap_or((0..0, None));
                    let span = if r.url.is_some() {
                        url.or(Some(table))
                    } else {
                        Some(table)
                    };
                    s.at(span, msg)
                }
                None => anyhow::anyhow!(msg),
            });
        }
    }
    // `forward` and `queue init` need no spool of their own beyond --spool
    let dispatch = if o.queue_only && dispatch.spools.is_empty() {
        dispatch
    } else {
        dispatch.resolve().map_err(|e| {
            let field = e.field().unwrap_or("").to_owned();
            at(&field, format!("invalid configuration: {e}"))
        })?
    };
    Ok(Settings {
        dispatch,
        log_format: o.log_format.or(bin.log_format).unwrap_or(LogFormat::Human),
        http: o.http.or(listen),
        http_token,
        queue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(name: &str, text: &str) -> Result<Settings> {
        let dir =
            std::env::temp_dir().join(format!("qmail-settings-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, text).unwrap();
        let r = load(&Overrides {
            config: Some(f),
            ..Default::default()
        });
        let _ = std::fs::remove_dir_all(dir);
        r
    }

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
[timeouts]
greeting_secs = 60
data_block_secs = 90
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
        // RFC 5321 §4.5.3.2 names; the others keep their defaults
        let t = &s.dispatch.timeouts;
        assert_eq!(
            (
                t.greeting_secs,
                t.data_block_secs,
                t.data_secs,
                t.data_end_secs
            ),
            (60, 90, 120, 600)
        );
        assert_eq!(s.dispatch.relays.len(), 2);
        assert_eq!(
            s.dispatch.relays[1].tls,
            Some(qmail_dispatch::TlsMode::Required)
        );
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(s.http.is_some());
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
        let e = load(&Overrides {
            config: Some(dir.join("bad.toml")),
            ..Default::default()
        })
        .unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("bad.toml:2:1: unknown field `wokers`"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// `[[dkim]]` entries: read from the file, their keys loaded with the configuration (so a
    /// bad key fails `load`, hence check-config and SIGHUP), unknown keys refused.
    #[test]
    fn dkim_entries() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let st = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&key)
            .status()
            .expect("the openssl CLI makes the test key");
        assert!(st.success());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let f = dir.path().join("c.toml");
        let text = format!(
            r#"
spools = ["/tmp/a"]
[[dkim]]
domain = "Example.com"
selector = "s2026"
key_file = "{}"
algorithm = "ed25519-sha256"
canonicalization = "simple/relaxed"
headers = ["From", "Subject"]
oversign = ["From", "Subject"]
expire_secs = 86400
subdomains = true
"#,
            key.display()
        );
        std::fs::write(&f, &text).unwrap();
        let o = Overrides {
            config: Some(f.clone()),
            ..Default::default()
        };
        let s = load(&o).unwrap();
        let d = &s.dispatch.dkim[0];
        assert_eq!(d.domain, "example.com");
        assert_eq!(d.selector, "s2026");
        assert_eq!(String::from(d.canonicalization), "simple/relaxed");
        assert_eq!(d.expire_secs, Some(86400));
        assert!(d.subdomains && d.loaded.get().is_some());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o604)).unwrap();
        let e = format!("{:#}", load(&o).unwrap_err());
        assert!(e.contains(&key.display().to_string()), "{e}");
        std::fs::write(&f, text.replace("subdomains", "sub_domains")).unwrap();
        assert!(load(&o).is_err(), "unknown keys in [[dkim]] are errors");
    }

    #[test]
    fn errors_carry_line_column_and_the_relay() {
        let e = load_text(
            "w",
            "spools = [\"/tmp/a\"]\n\n[[relay]]\nurl = \"smtp://mx1.example\"\n[[relay]]\nurl = \"smtp://mx2.example:25?weight=4294967296\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("c.toml:6:7: relay 2 (smtp://mx2.example:25"),
            "{e}"
        );
        assert!(e.contains("weight"), "{e}");
        let e = load_text(
            "p",
            "spools = [\"/tmp/a\"]\n[[relay]]\nhost = \"mx\"\nport = 99999\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("c.toml:4:8"), "{e}");
        let e = load_text("j", "spools = [\"/tmp/a\"]\n[retry]\njitter = 3.0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml:3:10:") && e.contains("jitter"), "{e}");
        let e = load_text("t", "spools = [\"/tmp/a\"]\nworkers = \"eight\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml:2:11:"), "{e}");
        let e = load_text("s", "spools = [\"/tmp/a\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml:1:") || e.contains("c.toml:2:"), "{e}");
        let e = load_text("h", "spools = [\"/tmp/a\"]\n[http]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml:3:10: [http] listen"), "{e}");
        let e = load_text("k", "spools = [\"/tmp/a\"]\n[http]\ntoken = \"short\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("16 characters"), "{e}");
        let s = load_text(
            "ok",
            "spools = [\"/tmp/a\"]\n[http]\nlisten = \"9187\"\ntoken = \"0123456789abcdef\"\n",
        )
        .unwrap();
        assert_eq!(s.http, Some("127.0.0.1:9187".parse().unwrap()));
        assert_eq!(s.http_token.as_deref(), Some("0123456789abcdef"));
    }

    #[test]
    fn positions() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("", 0), (1, 1));
        assert_eq!(parse_listen("9187").unwrap().to_string(), "127.0.0.1:9187");
        assert!(parse_listen("99999").is_err());
    }
}
