//! The "stop" half of shutdown: a [`CancellationToken`] cancelled by SIGINT or SIGTERM
//! (containers and Kubernetes send SIGTERM). The "drained" half is the worker's task tracker.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGINT or SIGTERM. A second signal exits at once, for an
/// operator who does not want to wait for the drain.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: stopping (send it again to exit at once)");
        token.cancel();
        wait_for_signal().await;
        tracing::warn!(
            "second signal: exiting without waiting; unacked messages return to the queue"
        );
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
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
