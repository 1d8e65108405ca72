//! The decision for one delivery of a pass: replay it, export it, purge it, or keep it.

use super::*;

impl Pass<'_> {
    /// Decides what happens to one delivery.
    pub(super) async fn start(
        &mut self,
        d: Delivery,
        selected: bool,
        settled: &mut Vec<u64>,
    ) -> anyhow::Result<()> {
        let tag = d.delivery_tag;
        let queue = self.config.queue.as_str();
        if !selected {
            self.keep(tag, put_back(queue, &d), KeepAs::Kept);
            return Ok(());
        }
        match &mut *self.action {
            Action::Purge => {
                self.report.acted += 1;
                settled.push(tag);
            }
            Action::Export { file, remove } => {
                let dl = DeadLetter::read(&d.properties, d.data.len());
                let origin = crate::jsonl::Origin {
                    queue,
                    exchange: d.exchange.as_str(),
                    routing_key: d.routing_key.as_str(),
                    redelivered: d.redelivered,
                };
                let line = crate::jsonl::encode(
                    &origin,
                    &d.properties,
                    &d.data,
                    summary(&dl, envelope::now_millis()),
                );
                if *remove {
                    // Acked once the batch holding its line is on disk.
                    file.push(&line, Some(tag));
                } else {
                    // A copy: the line is written and the message goes back to the tail, so
                    // the queue keeps everything, in order.
                    file.push(&line, None);
                    let msg = put_back(queue, &d);
                    self.keep(tag, msg, KeepAs::Exported);
                }
            }
            Action::Replay {
                to_queue,
                fixes,
                journal,
            } => {
                let journaled = journal.is_some();
                let fixes = std::sync::Arc::clone(fixes);
                let dl = DeadLetter::read(&d.properties, d.data.len());
                let Some(mut dest) = deadletter::replay_destination(&dl, to_queue.as_deref())
                else {
                    let stayed = Stayed {
                        message_id: id_of(&d),
                        destination: "(unknown)".to_owned(),
                        why: "it records no origin (no x-courier-original-* headers, no x-death); use --to-queue".to_owned(),
                    };
                    self.keep(tag, put_back(queue, &d), KeepAs::Stayed(stayed));
                    return Ok(());
                };
                if let Some(key) = &fixes.routing_key {
                    // `--set-routing-key`: the original exchange, this key.
                    dest.routing_key.clone_from(key);
                }
                // A publish to a missing exchange closes the publishing channel and fails every
                // publish in flight with it; look each exchange up once instead.
                let exists = match self.exchanges.get(&dest.exchange) {
                    Some(known) => *known,
                    None => {
                        let known = self.broker.exchange_exists(&dest.exchange).await?;
                        self.exchanges.insert(dest.exchange.clone(), known);
                        known
                    }
                };
                if !exists {
                    let stayed = Stayed {
                        message_id: id_of(&d),
                        destination: dest.to_string(),
                        why: format!("exchange '{}' does not exist", dest.exchange),
                    };
                    self.keep(tag, put_back(queue, &d), KeepAs::Stayed(stayed));
                    return Ok(());
                }
                let replay = replay_copy(&d, &dest);
                let copy = match fixes.apply(&replay.properties, &replay.body) {
                    Ok((properties, body)) => Outgoing {
                        properties,
                        body,
                        ..replay
                    },
                    Err(why) => {
                        let stayed = Stayed {
                            message_id: id_of(&d),
                            destination: dest.to_string(),
                            why,
                        };
                        self.keep(tag, put_back(queue, &d), KeepAs::Stayed(stayed));
                        return Ok(());
                    }
                };
                let (dest, exchange) = (dest.to_string(), dest.exchange);
                let entry = envelope::message_id(&copy.properties)
                    .filter(|_| journaled)
                    .map(|id| {
                        let n = deadletter::replayed(copy.properties.headers().as_ref());
                        (id.to_owned(), n)
                    });
                self.publish_copy(tag, copy, &d, dest, exchange, entry);
            }
            Action::Republish { copy } => match copy(&d) {
                Ok(copy) => {
                    let dest = format!("queue {queue}");
                    self.publish_copy(tag, copy, &d, dest, String::new(), None);
                }
                Err(why) => {
                    let stayed = Stayed {
                        message_id: id_of(&d),
                        destination: queue.to_owned(),
                        why,
                    };
                    self.keep(tag, put_back(queue, &d), KeepAs::Stayed(stayed));
                }
            },
        }
        Ok(())
    }

    /// Publishes `copy` of delivery `d` (mandatory, confirmed); the delivery is acked once the
    /// broker confirmed it (and `journal`'s entry is recorded), or kept (as it was) when the
    /// publish came back.
    fn publish_copy(
        &mut self,
        tag: u64,
        copy: Outgoing,
        d: &Delivery,
        dest: String,
        exchange: String,
        journal: Option<(String, u32)>,
    ) {
        self.order.insert(tag, Slot::Undecided);
        let p = self.publisher.clone();
        let original = put_back(&self.config.queue, d);
        let id = id_of(d);
        self.jobs.push(Box::pin(async move {
            let r = match publish_retrying(&p, &copy).await {
                Ok(()) => Ok(Done::Replayed { dest, journal }),
                Err(e) if e.is_permanent() => Ok(Done::Returned(
                    original,
                    Stayed {
                        message_id: id,
                        why: match e {
                            PublishError::NoExchange { .. } => {
                                format!("exchange '{exchange}' does not exist")
                            }
                            _ => "unroutable: no queue is bound for it any more (mandatory publish returned)".to_owned(),
                        },
                        destination: dest,
                    },
                )),
                Err(e) => Err(e),
            };
            (tag, r)
        }));
    }
}
