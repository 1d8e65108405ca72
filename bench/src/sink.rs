//! The HTTP scenario's endpoint: a minimal local server that answers 200 at once and counts
//! each request's `Idempotency-Key` (= the message id).
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
use courier::handler::http::IDEMPOTENCY_KEY;
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

async fn receive(State(seen): State<Arc<Tally>>, headers: HeaderMap, _body: Bytes) -> StatusCode {
    // The body is extracted (read) so that the connection stays reusable, as a real server's.
    match headers.get(IDEMPOTENCY_KEY).and_then(|v| v.to_str().ok()) {
        Some(id) => seen.record_id(id),
        None => seen.record(u64::MAX, None),
    }
    StatusCode::OK
}

impl HttpSink {
    /// Starts the server on 127.0.0.1 and a free port.
    ///
    /// # Errors
    /// When no port can be bound or the thread cannot start.
    pub fn start(seen: Arc<Tally>) -> anyhow::Result<Self> {
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
