//! How failures become exit codes: 0 done (a closed stdout pipe included, as in
//! `courier-dlq list | head`), 1 failed, 2 the command line was wrong, 3 a replay stopped by
//! itself because the messages it replayed failed again.

use std::io;

/// A command line that cannot work: a bad flag value, a missing `--yes`. Exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A replay that stopped by itself: too many of the messages it replayed came back to the
/// dead-letter queue. Exit code 3. Says why and how many moved.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoppedItself(pub String);

/// What the process exits with for `e`.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if is_broken_pipe(e) {
        return 0;
    }
    if e.chain()
        .any(|c| c.downcast_ref::<StoppedItself>().is_some())
    {
        return 3;
    }
    let usage = e.chain().any(|c| {
        c.downcast_ref::<UsageError>().is_some()
            || c.downcast_ref::<crate::filter::FilterError>().is_some()
    });
    if usage {
        2
    } else {
        1
    }
}

/// True when the reader of stdout went away: not a failure of ours, and the messages are given
/// back before the process exits.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let pipe =
            anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing");
        assert_eq!(exit_code(&pipe), 0);
        assert_eq!(exit_code(&UsageError("x".into()).into()), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("boom")), 1);
        let stopped = anyhow::Error::new(StoppedItself("3 of 10 came back".into()));
        assert_eq!(exit_code(&stopped.context("replay")), 3);
    }
}
