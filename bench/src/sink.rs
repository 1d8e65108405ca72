//! The HTTP scenarios' endpoint: a minimal local server that answers at once (200, or 503 to a
//! first attempt when asked to) and counts each request's `Idempotency-Key` (= the message id).
//!
//! It runs on its own thread and single-threaded runtime, like a separate service would, so its
//! tasks do not queue behind the worker's on the benchmark's runtime.

use crate::tally::Tally;
use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use courier::handler::http::{IDEMPOTENCY_KEY, X_COURIER_ATTEMPT};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;

/// A running endpoint; [`HttpSink::stop`] ends it.
pub struct HttpSink {
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    /// Dropping or sending stops the server.
    stop: Option<oneshot::Sender<()>>,
    /// The server's thread.
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Who the server tells about requests.
#[derive(Clone)]
struct Seen {
    /// Requests answered 200, by `Idempotency-Key`.
    ok: Arc<Tally>,
    /// With `Some`, a first attempt (`X-Courier-Attempt: 1`) is answered 503 and counted here.
    failed_first: Option<Arc<Tally>>,
}

async fn receive(State(seen): State<Seen>, headers: HeaderMap, _body: Bytes) -> StatusCode {
    // The body is extracted (read) so that the connection stays reusable, as a real server's.
    let record = |tally: &Tally| match headers.get(IDEMPOTENCY_KEY).and_then(|v| v.to_str().ok()) {
        Some(id) => tally.record_id(id),
        None => tally.record(u64::MAX, None),
    };
    if let Some(failed) = &seen.failed_first {
        let first = headers
            .get(X_COURIER_ATTEMPT)
            .is_none_or(|v| v.as_bytes() == b"1");
        if first {
            record(failed);
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    record(&seen.ok);
    StatusCode::OK
}

impl HttpSink {
    /// Starts the server on 127.0.0.1 and a free port.
    ///
    /// # Errors
    /// When no port can be bound or the thread cannot start.
    pub fn start(seen: Arc<Tally>) -> anyhow::Result<Self> {
        Self::serve(Seen {
            ok: seen,
            failed_first: None,
        })
    }

    /// Starts a server that answers a message's first attempt (`X-Courier-Attempt: 1`, or no
    /// such header) with 503, counted in `failed`, and later attempts with 200, counted in `ok`:
    /// every message takes one retry hop.
    ///
    /// # Errors
    /// When no port can be bound or the thread cannot start.
    pub fn start_failing_first(ok: Arc<Tally>, failed: Arc<Tally>) -> anyhow::Result<Self> {
        Self::serve(Seen {
            ok,
            failed_first: Some(failed),
        })
    }

    fn serve(seen: Seen) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind the HTTP sink")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-http-sink".to_owned())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("courier-bench: HTTP sink runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("courier-bench: HTTP sink listener: {e}");
                            return;
                        }
                    };
                    let app = Router::new().route("/", post(receive)).with_state(seen);
                    // Not a graceful shutdown: idle keep-alive connections would hold it open.
                    tokio::select! {
                        r = axum::serve(listener, app) => {
                            if let Err(e) = r {
                                eprintln!("courier-bench: HTTP sink: {e}");
                            }
                        }
                        _ = rx => {}
                    }
                });
            })
            .context("start the HTTP sink thread")?;
        Ok(Self {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Stops the server and waits for its thread.
    pub fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
