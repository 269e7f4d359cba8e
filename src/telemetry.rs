//! Log output: human text on a terminal, JSON when asked, journald fields under systemd.
//!
//! The only module that touches `tracing_subscriber`. Under systemd (`JOURNAL_STREAM` set) the
//! journald layer sends structured fields without a prefix, so operators can filter with
//! `journalctl -u app-executor RUN_ID=<id>`. Secrets are never logged: config values that are
//! secret are wrapped in types whose `Debug`/`Display` redact them.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Installs the global subscriber. `level` is an `EnvFilter` directive; `format` has been
/// resolved by the config (`auto` is journald under systemd, human text otherwise). Calling it
/// twice is harmless (the second call keeps the first subscriber).
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let layer: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .boxed(),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => layer
                .with_field_prefix(None)
                .with_syslog_identifier("app-executor".into())
                .boxed(),
            // No journal socket after all: fall back to text on stderr, which systemd also
            // captures.
            Err(_) => human_layer().boxed(),
        },
        LogFormat::Human | LogFormat::Auto => human_layer().boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
}

fn human_layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use std::io::IsTerminal;
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
}
