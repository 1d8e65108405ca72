//! A worker with your own Rust handler instead of `--handler http`.
//!
//! ```text
//! cargo run --example custom_handler -- notifications.sms
//! ```
//!
//! The handler gets a [`Job`] (id, attempt, body, ...) and returns `Ok(())`, a retryable error
//! (the worker republishes the message to the next retry tier) or a permanent one (straight to
//! the dead-letter queue). The worker does all the acking, confirming and counting; a handler
//! that panics or runs past `handler_timeout` counts as a retryable failure.

use courier::amqp::{AmqpUrl, DEFAULT_AMQP_URL};
use courier::handler::{Handler, HandlerError, HandlerResult, Job};
use courier::metrics::{Health, Metrics};
use courier::topology::TopologySource;
use courier::worker::{Worker, WorkerSettings};
use serde::Deserialize;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The body this handler expects on the `sms` channel.
#[derive(Deserialize)]
struct Sms {
    to: String,
    text: String,
}

/// "Sends" an SMS by logging it; rejects numbers it can never deliver to.
struct SmsHandler;

impl Handler for SmsHandler {
    async fn handle(&self, job: Job<'_>) -> HandlerResult {
        let sms: Sms = serde_json::from_slice(job.body)
            .map_err(|e| HandlerError::permanent(format!("not an SMS job: {e}")))?;
        if !sms.to.starts_with('+') {
            // Retrying cannot fix a bad number: dead-letter it with the reason.
            return Err(HandlerError::permanent(format!(
                "{:?} is not an E.164 number",
                sms.to
            )));
        }
        if job.attempt == 1 && sms.text.contains("flaky") {
            // A provider hiccup: ask for a retry in at least 5 seconds.
            return Err(
                HandlerError::retryable("provider busy").with_retry_after(Duration::from_secs(5))
            );
        }
        // Use job.message_id as the provider's idempotency key: a redelivery after a crash
        // must not send the SMS twice.
        println!("SMS {} to {}: {}", job.message_id, sms.to, sms.text);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let queue = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "notifications.sms".to_owned());
    let url: AmqpUrl = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
        .parse()?;
    // topology/notifications.toml when run from a checkout, else the copy built into the library.
    let topology = TopologySource::resolve(None).load("")?;
    courier::broker::apply(&url, &topology).await?;

    let shutdown = CancellationToken::new();
    courier::shutdown::cancel_on_signal(shutdown.clone());
    // The library never ends the process: exiting on a second Ctrl-C is this program's choice.
    tokio::spawn(async {
        courier::shutdown::signal().await;
        courier::shutdown::signal().await;
        std::process::exit(130);
    });
    let config = WorkerSettings {
        concurrency: 16,
        ..WorkerSettings::new(queue)
    }
    .build()?;
    let worker = Worker::new(
        url,
        &topology,
        config,
        SmsHandler,
        Metrics::new(),
        Health::default(),
    )?;
    println!("consuming; publish with: courier publish -k sms '{{\"to\":\"+15550100\",\"text\":\"hi\"}}'");
    worker.run(shutdown).await;
    Ok(())
}
