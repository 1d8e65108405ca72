//! The one task that publishes on a channel and judges its confirms (see [`actor`]), and the
//! watcher of the connection's blocked state. Split from `publisher.rs` because it is the part
//! that reasons about frames and confirms; the handle users hold is there.

use super::*;

type Sending = Pin<Box<dyn Future<Output = (Meta, Result<PublisherConfirm, lapin::Error>)> + Send>>;
type Confirming = Pin<Box<dyn Future<Output = (Meta, Result<Confirmation, lapin::Error>)> + Send>>;

/// Tracks `connection.blocked` in metrics and logs.
pub(super) fn watch_blocked(conn: &Connection, metrics: Metrics) {
    let mut events = conn.events_listener();
    tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            match ev {
                lapin::Event::ConnectionBlocked(reason) => {
                    metrics.blocked.set(1);
                    tracing::warn!(%reason, "broker blocked the publishing connection (resource alarm); publishes wait");
                }
                lapin::Event::ConnectionUnblocked => {
                    metrics.blocked.set(0);
                    tracing::info!("broker unblocked the publishing connection");
                }
                _ => {}
            }
        }
    });
}

/// The one task that publishes on a channel and judges its confirms.
///
/// Each publish is polled once as soon as it arrives, which writes its frames in arrival order
/// without waiting for the previous write. Returns: lapin hands a `basic.return` to whichever
/// confirm completes next, often a neighbour's. RabbitMQ sends a message's return before its
/// ack, so when a confirm resolves, the return of that same message is already attached to
/// some confirm resolved at or before it. Hence, whenever a confirm resolves, every finished
/// write and every resolved confirm is collected first, the returns are tallied by their own
/// `message_id`, and only then is each resolved publish judged.
///
/// A nack sets `stale`: the publisher then sends the next publishes on a fresh connection. A
/// nack is the broker saying it could not take the message, and the channel may be why: seen on
/// RabbitMQ 3.10, a channel that first published to a quorum queue while the queue was electing
/// a new leader (its old leader's node just killed) nacked every later publish to that queue,
/// for minutes, while a new channel on the same node published at once.
pub(super) async fn actor(
    channel: Channel,
    mut rx: mpsc::UnboundedReceiver<Request>,
    inner: Arc<Inner>,
    stale: Arc<AtomicBool>,
) {
    let mut sending: FuturesUnordered<Sending> = FuturesUnordered::new();
    let mut confirming: FuturesUnordered<Confirming> = FuturesUnordered::new();
    let mut returned: HashMap<String, usize> = HashMap::new();
    let mut open = true;
    loop {
        if !open && sending.is_empty() && confirming.is_empty() {
            return;
        }
        tokio::select! {
            req = rx.recv(), if open => match req {
                Some(Request { msg, meta }) => {
                    let ch = channel.clone();
                    let mut fut: Sending = Box::pin(async move {
                        let r = ch
                            .basic_publish(
                                msg.exchange.as_str().into(),
                                msg.routing_key.as_str().into(),
                                BasicPublishOptions { mandatory: true, ..Default::default() },
                                &msg.body,
                                msg.properties,
                            )
                            .await;
                        (meta, r)
                    });
                    // The first poll queues the frames on the channel: arrival order is kept.
                    match futures_util::poll!(fut.as_mut()) {
                        Poll::Ready((meta, r)) => start_confirm(meta, r, &confirming, &inner),
                        Poll::Pending => sending.push(fut),
                    }
                }
                None => open = false,
            },
            Some((meta, r)) = sending.next(), if !sending.is_empty() => {
                start_confirm(meta, r, &confirming, &inner);
            }
            Some(first) = confirming.next(), if !confirming.is_empty() => {
                let mut resolved = vec![first];
                while let Some(Some((meta, r))) = sending.next().now_or_never() {
                    start_confirm(meta, r, &confirming, &inner);
                }
                while let Some(Some(done)) = confirming.next().now_or_never() {
                    resolved.push(done);
                }
                let judged: Vec<(Meta, Result<bool, String>)> = resolved
                    .into_iter()
                    .map(|(meta, r)| {
                        let c = classify(r, &mut returned);
                        (meta, c)
                    })
                    .collect();
                for (meta, outcome) in judged {
                    if outcome == Ok(false) {
                        stale.store(true, Ordering::Relaxed);
                    }
                    judge(meta, outcome, &mut returned, &inner);
                }
            }
        }
    }
}

/// The error for a publish whose channel failed: a 404 names a missing exchange.
fn channel_error(
    meta: Meta,
    e: &str,
    inner: &Inner,
) -> (oneshot::Sender<Result<(), PublishError>>, PublishError) {
    let err = if e.contains("NOT_FOUND - no exchange") {
        PublishError::NoExchange {
            message_id: meta.message_id,
            exchange: meta.exchange,
        }
    } else {
        PublishError::Channel {
            message_id: meta.message_id,
            reason: inner.url.scrub(e),
        }
    };
    (meta.reply, err)
}

/// A publish was written (or failed to be): wait for its confirm, or answer the error now.
fn start_confirm(
    meta: Meta,
    written: Result<PublisherConfirm, lapin::Error>,
    confirming: &FuturesUnordered<Confirming>,
    inner: &Inner,
) {
    match written {
        Ok(confirm) => confirming.push(Box::pin(async move { (meta, confirm.await) })),
        Err(e) => {
            let (reply, err) = channel_error(meta, &e.to_string(), inner);
            let _ = reply.send(Err(err));
        }
    }
}

/// Answers one resolved publish, after every return of its batch has been tallied.
fn judge(
    meta: Meta,
    outcome: Result<bool, String>,
    returned: &mut HashMap<String, usize>,
    inner: &Inner,
) {
    inner
        .metrics
        .confirm_seconds
        .with_label_values(&[crate::metrics::label::PUBLISHER])
        .observe(meta.started.elapsed().as_secs_f64());
    let result = match outcome {
        Ok(true) => match returned.get_mut(&meta.message_id) {
            Some(n) if *n > 0 => {
                *n -= 1;
                if *n == 0 {
                    returned.remove(&meta.message_id);
                }
                Err(PublishError::Returned {
                    message_id: meta.message_id,
                    exchange: meta.exchange,
                    routing_key: meta.routing_key,
                })
            }
            _ => Ok(()),
        },
        Ok(false) => Err(PublishError::Nacked {
            message_id: meta.message_id,
            exchange: meta.exchange,
            routing_key: meta.routing_key,
        }),
        Err(reason) => {
            let (reply, err) = channel_error(meta, &reason, inner);
            let _ = reply.send(Err(err));
            return;
        }
    };
    let _ = meta.reply.send(result);
}

/// `Ok(true)` ack, `Ok(false)` nack, `Err` channel failure; any attached return is tallied by
/// its own `message_id`, whoever it was attached to.
fn classify(
    res: Result<Confirmation, lapin::Error>,
    returned: &mut HashMap<String, usize>,
) -> Result<bool, String> {
    match res {
        Ok(c) => {
            let acked = c.is_ack();
            if let Some(msg) = c.take_message() {
                let id = crate::envelope::message_id(&msg.properties)
                    .unwrap_or_default()
                    .to_owned();
                *returned.entry(id).or_insert(0) += 1;
            }
            Ok(acked)
        }
        Err(e) => Err(e.to_string()),
    }
}
