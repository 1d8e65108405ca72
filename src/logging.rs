//! Log set-up shared by the `courier` and `courier-dlq` binaries: lines go to stderr, coloured
//! only on a terminal, filtered by `RUST_LOG` or the binary's default.
//!
//! Why in the library: both binaries must make the same choices, and a choice written twice
//! drifts. The library itself never installs a subscriber (no global state); each binary calls
//! [`init`] once, first thing.
//!
//! - Colour: ANSI escapes only when stderr is a terminal and `NO_COLOR` is unset
//!   (<https://no-color.org>). Piped into a file, `journald`, `kubectl logs` or a log shipper,
//!   escapes are noise that breaks `grep` and parsers.

use std::ffi::OsStr;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the process-wide subscriber: stderr, `format`, `RUST_LOG` or else `default`
/// (directives such as `info,lapin=error`). Does nothing if one is installed already.
pub fn init(format: Format, default: &str) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(
            std::env::var(EnvFilter::DEFAULT_ENV).ok().as_deref(),
            default,
        ))
        .with_writer(std::io::stderr);
    let _ = match format {
        Format::Text => builder
            .with_ansi(colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .try_init(),
        // JSON is for machines: never coloured.
        Format::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// Whether log lines are coloured: only on a terminal, and never when `NO_COLOR` is set to
/// anything but the empty string.
pub fn colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// The filter for `rust_log` (the `RUST_LOG` value, if any): its directives when they parse,
/// else `default`.
fn filter(rust_log: Option<&str>, default: &str) -> EnvFilter {
    let given =
        rust_log.filter(|given| !given.trim().is_empty() && EnvFilter::try_new(given).is_ok());
    EnvFilter::try_new(given.unwrap_or(default)).unwrap_or_else(|_| EnvFilter::new("info"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None), "a pipe or a file gets no escapes");
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(
            colour(true, Some(OsStr::new(""))),
            "an empty NO_COLOR does not count (no-color.org)"
        );
    }

    #[test]
    fn an_unparsable_rust_log_falls_back_to_the_default() {
        let text = filter(Some("=="), "warn").to_string();
        assert!(text.contains("warn"), "{text}");
    }
}
