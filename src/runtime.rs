//! The multi-threaded runtime every Courier binary runs on.
//!
//! tokio sizes its worker pool from `TOKIO_WORKER_THREADS` when the variable is set, and panics
//! on a value it cannot use (empty, not a number, 0). A binary must not panic on its
//! environment, so the value is checked here first and a bad one is refused with its name and
//! the reason.

use std::ffi::OsStr;

/// The variable tokio reads for the number of worker threads.
pub const WORKER_THREADS: &str = "TOKIO_WORKER_THREADS";

/// The worker threads `value` of [`WORKER_THREADS`] asks for: `None` when unset (one per CPU).
///
/// # Errors
/// A value that is not a whole number above 0, worded for the user.
pub fn worker_threads(value: Option<&OsStr>) -> Result<Option<usize>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let text = value.to_string_lossy();
    match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(format!(
            "{WORKER_THREADS}={text:?}: expected a whole number of runtime threads above 0 \
             (unset it for one per CPU)"
        )),
    }
}

/// Builds the multi-threaded runtime, sized by [`WORKER_THREADS`] when it is set.
///
/// # Errors
/// A bad [`WORKER_THREADS`], or a runtime the system cannot start (threads, epoll).
pub fn multi_thread() -> Result<tokio::runtime::Runtime, String> {
    let threads = worker_threads(std::env::var_os(WORKER_THREADS).as_deref())?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_means_the_default() {
        assert_eq!(worker_threads(None), Ok(None));
    }

    #[test]
    fn a_positive_number_is_taken() {
        assert_eq!(worker_threads(Some(OsStr::new("3"))), Ok(Some(3)));
        assert_eq!(worker_threads(Some(OsStr::new(" 2 "))), Ok(Some(2)));
    }

    #[test]
    fn empty_zero_and_words_are_refused_by_name() {
        for bad in ["", "0", "two", "-1", "1.5"] {
            let e = worker_threads(Some(OsStr::new(bad))).expect_err(bad);
            assert!(e.starts_with("TOKIO_WORKER_THREADS="), "{e}");
            assert!(e.contains("above 0"), "{e}");
        }
    }
}
