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
            Action::Replay { to_queue } => {
                let dl = DeadLetter::read(&d.properties, d.data.len());
                let Some(dest) = deadletter::replay_destination(&dl, to_queue.as_deref()) else {
                    let stayed = Stayed {
                        message_id: id_of(&d),
                        destination: "(unknown)".to_owned(),
                        why: "it records no origin (no x-courier-original-* headers, no x-death); use --to-queue".to_owned(),
                    };
                    self.keep(tag, put_back(queue, &d), KeepAs::Stayed(stayed));
                    return Ok(());
                };
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
                self.order.insert(tag, Slot::Undecided);
                let p = self.publisher.clone();
                let replay = replay_copy(&d, &dest);
                let original = put_back(queue, &d);
                let id = id_of(&d);
                self.jobs.push(Box::pin(async move {
                    let r = match publish_retrying(&p, &replay).await {
                        Ok(()) => Ok(Done::Replayed(dest.to_string())),
                        Err(e) if e.is_permanent() => Ok(Done::Returned(
                            original,
                            Stayed {
                                message_id: id,
                                destination: dest.to_string(),
                                why: match e {
                                    PublishError::NoExchange { .. } => format!("exchange '{}' does not exist", dest.exchange),
                                    _ => "unroutable: no queue is bound for it any more (mandatory publish returned)".to_owned(),
                                },
                            },
                        )),
                        Err(e) => Err(e),
                    };
                    (tag, r)
                }));
            }
        }
        Ok(())
    }
}
