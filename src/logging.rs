//! Log set-up shared by the `courier` and `courier-dlq` binaries: lines go to stderr, coloured
//! only on a terminal, filtered by `RUST_LOG` or the binary's default, and without lapin's
//! duplicate of a failed connection.
//!
//! Why in the library: both binaries must make the same choices, and a choice written twice
//! drifts. The library itself never installs a subscriber (no global state); each binary calls
//! [`init`] once, first thing.
//!
//! - Colour: ANSI escapes only when stderr is a terminal and `NO_COLOR` is unset
//!   (<https://no-color.org>). Piped into a file, `journald`, `kubectl logs` or a log shipper,
//!   escapes are noise that breaks `grep` and parsers.
//! - lapin stays quiet unless `RUST_LOG` names it: the binary's default lapin directives are kept
//!   under any other `RUST_LOG`, and lapin's `io_loop` target is always off. When a connection
//!   cannot be opened (a wrong password, say) lapin logs "Exponential backoff attempts exhausted,
//!   aborting recovery" (and, under `RUST_LOG=info`, "Connection closed" and "Connection error")
//!   at error level, and also returns the error to us, which we report once, with the object,
//!   the fix and the password scrubbed. The other errors of those targets also end as returned
//!   errors (a lost connection), so nothing is hidden that is not said better elsewhere.
//!   `RUST_LOG=info,lapin=debug` shows all of lapin again.

use std::ffi::OsStr;
use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Always added to lapin's directives; see the module docs.
const QUIET_LAPIN_IO_LOOP: &str = "lapin::io_loop=off";

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
    let _ = install(format, default, None);
}

/// [`init`], and with `otlp` (an endpoint, or empty for the standard `OTEL_EXPORTER_OTLP_*`
/// variables) the trace exporter's layer too ([`crate::telemetry`]), as `service`. Keep the
/// returned handle and call its `shutdown` before exiting, so queued spans are sent.
///
/// # Errors
/// The exporter cannot be set up (a malformed endpoint); nothing is installed then.
pub fn init_with_traces(
    format: Format,
    default: &str,
    service: &str,
    otlp: Option<&str>,
) -> Result<Option<crate::telemetry::Exporting>, crate::telemetry::TelemetryError> {
    let traces = match otlp {
        Some(endpoint) => Some(crate::telemetry::layer(service, endpoint)?),
        None => None,
    };
    let (layer, exporting) = traces.unzip();
    let _ = install(format, default, layer.map(Layer::boxed));
    Ok(exporting)
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

fn install(
    format: Format,
    default: &str,
    traces: Option<BoxedLayer>,
) -> Result<(), tracing_subscriber::util::TryInitError> {
    let env_filter = filter(
        std::env::var(EnvFilter::DEFAULT_ENV).ok().as_deref(),
        default,
    );
    let fmt: BoxedLayer = match format {
        Format::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(colour(
                    std::io::stderr().is_terminal(),
                    std::env::var_os("NO_COLOR").as_deref(),
                )),
        ),
        // JSON is for machines: never coloured.
        Format::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        ),
    };
    // The log filter applies to the log lines only: the trace layer has its own (Courier's
    // trace spans), so `RUST_LOG=warn` does not switch tracing off.
    let mut layers: Vec<BoxedLayer> = vec![fmt.with_filter(env_filter).boxed()];
    layers.extend(traces);
    tracing_subscriber::registry().with(layers).try_init()
}

/// Whether log lines are coloured: only on a terminal, and never when `NO_COLOR` is set to
/// anything but the empty string.
pub fn colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// The filter for `rust_log` (the `RUST_LOG` value, if any): its directives when they parse,
/// else `default`. Unless `RUST_LOG` names lapin, lapin stays as quiet as `default` has it (its
/// `lapin...` directives are kept) and its `io_loop` is off: `RUST_LOG=debug` asks for more of
/// Courier, not for lapin's duplicates of errors Courier reports itself.
fn filter(rust_log: Option<&str>, default: &str) -> EnvFilter {
    let given =
        rust_log.filter(|given| !given.trim().is_empty() && EnvFilter::try_new(given).is_ok());
    let mut directives = given.unwrap_or(default).to_owned();
    if !given.is_some_and(names_lapin) {
        if given.is_some() {
            for lapin in default.split(',').filter(|d| is_lapin(d)) {
                directives.push(',');
                directives.push_str(lapin.trim());
            }
        }
        directives.push(',');
        directives.push_str(QUIET_LAPIN_IO_LOOP);
    }
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// True when the directives say something about lapin: whoever writes `lapin=debug` wants all of
/// it.
fn names_lapin(directives: &str) -> bool {
    directives.split(',').any(is_lapin)
}

/// True for a directive about lapin or one of its modules.
fn is_lapin(directive: &str) -> bool {
    let target = directive.trim_start();
    target == "lapin" || target.starts_with("lapin=") || target.starts_with("lapin::")
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
    fn lapin_stays_quiet_unless_rust_log_names_it() {
        let default = "info,lapin=error,lapin::channel=off";
        for (rust_log, quiet) in [
            (None, true),
            (Some("debug"), true),
            (Some("warn,courier=debug"), true),
            // Unparsable or empty RUST_LOG falls back to the default, quiet as usual.
            (Some("=="), true),
            (Some(""), true),
            (Some("warn,lapin=trace"), false),
            (Some("lapin::io_loop=error"), false),
        ] {
            let text = filter(rust_log, default).to_string();
            for directive in [QUIET_LAPIN_IO_LOOP, "lapin=error", "lapin::channel=off"] {
                assert_eq!(
                    text.contains(directive),
                    quiet,
                    "RUST_LOG {rust_log:?}: {directive} in {text}"
                );
            }
        }
        assert!(!names_lapin("lapinesque=debug"));
    }

    #[test]
    fn an_unparsable_rust_log_falls_back_to_the_default() {
        let text = filter(Some("=="), "warn").to_string();
        assert!(text.contains("warn"), "{text}");
    }
}
