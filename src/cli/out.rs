//! Writing to stdout without panicking when the reader has gone.
//!
//! `println!` panics when stdout is a pipe whose reader has exited (`courier topology export |
//! head`). Every command prints through [`outln!`] and [`out!`] instead: they return the write
//! error, which the command passes up with `?` like any other (so the demo still stops its
//! workers and cleans up), and [`super::main`] turns a closed stdout into a quiet exit 0, as
//! ripgrep does: the reader has all it asked for. A command whose exit code is a verdict
//! (`topology check`'s drift, a failed publish, a demo that lost messages) passes its report
//! through [`verdict`], so that the reader going away cuts the report short without changing
//! the verdict.

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;

/// The reader of stdout has gone (`EPIPE`): not a failure, nothing more to print.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes `args` to stdout. A broken pipe becomes an error carrying [`StdoutClosed`], so that
/// it cannot be mistaken for a broken connection to the broker.
///
/// # Errors
/// When stdout cannot be written to.
pub fn write(args: fmt::Arguments<'_>) -> io::Result<()> {
    io::stdout().lock().write_fmt(args).map_err(|e| {
        if e.kind() == io::ErrorKind::BrokenPipe {
            io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed)
        } else {
            e
        }
    })
}

/// Whether `e` comes from writing to a stdout whose reader has gone.
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|cause| cause.downcast_ref::<io::Error>().is_some_and(is_closed))
}

/// Whether `e` is [`write`]'s error for a stdout whose reader has gone.
fn is_closed(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<StdoutClosed>())
}

/// `code`, once the report that goes with it has been `printed`, or could not be because
/// stdout was closed.
///
/// # Errors
/// Any other failure to write the report.
pub fn verdict(printed: io::Result<()>, code: ExitCode) -> anyhow::Result<ExitCode> {
    match printed {
        Err(e) if !is_closed(&e) => Err(e.into()),
        _ => Ok(code),
    }
}

/// `print!` that returns an [`io::Result`] instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!($($arg)*))
    };
}

/// `println!` that returns an [`io::Result`] instead of panicking.
macro_rules! outln {
    () => {
        $crate::cli::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_stdout_counts_as_closed() {
        let closed = anyhow::Error::from(io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed));
        assert!(is_stdout_closed(&closed));
        assert!(is_stdout_closed(&closed.context("printing the summary")));
        // A broken pipe elsewhere (a socket to the broker) is a real failure.
        let socket = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(!is_stdout_closed(&socket));
        assert!(!is_stdout_closed(&anyhow::anyhow!("other")));
    }

    #[test]
    fn a_closed_stdout_keeps_the_verdict_and_other_errors_stay_errors() {
        let closed = || Err(io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed));
        assert_eq!(
            verdict(closed(), ExitCode::from(3)).ok(),
            Some(ExitCode::from(3))
        );
        assert_eq!(
            verdict(Ok(()), ExitCode::FAILURE).ok(),
            Some(ExitCode::FAILURE)
        );
        let full = Err(io::Error::from(io::ErrorKind::StorageFull));
        assert!(verdict(full, ExitCode::SUCCESS).is_err());
    }
}
