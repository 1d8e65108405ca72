//! The "stop" half of shutdown: a [`CancellationToken`] cancelled by SIGINT or SIGTERM
//! (containers and Kubernetes send SIGTERM). The "drained" half is the worker's task tracker.
//!
//! The library never ends the process. Once a listener is installed, signals no longer end it
//! by default either, so what a further signal means is the program's choice: it waits for one
//! with [`signal`] and decides (the `courier` binary exits at once on a second).

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGINT or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        signal().await;
        // Debug only: the program says what a signal means to its operator.
        tracing::debug!("signal received: cancelling");
        token.cancel();
    });
}

/// Resolves on the next SIGINT or SIGTERM (only SIGINT where there is no SIGTERM). Every
/// listener hears every signal, so a program can count them beside [`cancel_on_signal`].
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
