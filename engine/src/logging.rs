//! ferryd's own log: structured events (`tracing`) on stderr, as text lines for people or
//! JSON lines for log collectors (`log_format` in ferryd.toml). `RUST_LOG` filters them
//! (default `info`). The transfer log ([`crate::translog`]) is separate: one line per
//! session start and end, in a file of its own.

use tracing_subscriber::EnvFilter;

/// How events are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `TIME LEVEL message key=value ...`
    #[default]
    Text,
    /// One JSON object per event, fields included.
    Json,
}

/// Installs the process-wide subscriber; a second call changes nothing.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
