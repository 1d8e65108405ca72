//! Validation: the raw file ([`super::raw`]) into a [`Topology`] that cannot be invalid, every
//! error naming the file, the key as a TOML path and the rule it breaks.

use super::raw::*;
use super::*;

pub(super) struct Validator<'a> {
    pub(super) file: &'a str,
    pub(super) prefix: &'a str,
    /// Every queue and exchange name seen so far (prefixed), for the uniqueness rule.
    pub(super) names: BTreeSet<String>,
}

impl Validator<'_> {
    fn invalid(&self, key: impl Into<String>, reason: impl Into<String>) -> TopologyError {
        TopologyError::Invalid {
            file: self.file.to_owned(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// Checks a name and returns it prefixed; names share one namespace so that a queue and an
    /// exchange of the same name cannot be confused in messages and diagrams.
    fn name(&mut self, key: &str, name: &str) -> Result<String, TopologyError> {
        if name.trim().is_empty() {
            return Err(self.invalid(key, "a name must not be empty"));
        }
        if name.starts_with("amq.") {
            return Err(self.invalid(
                key,
                format!("`{name}`: names starting with `amq.` are reserved by RabbitMQ"),
            ));
        }
        let full = format!("{}{name}", self.prefix);
        if full.len() > MAX_NAME_LEN {
            return Err(self.invalid(
                key,
                format!(
                    "`{full}` is {} bytes; AMQP names are at most {MAX_NAME_LEN}",
                    full.len()
                ),
            ));
        }
        if !self.names.insert(full.clone()) {
            return Err(self.invalid(
                key,
                format!("`{name}` is declared twice; every exchange and queue name must be unique"),
            ));
        }
        Ok(full)
    }

    fn queue_type(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> Result<Option<QueueType>, TopologyError> {
        match value {
            None => Ok(None),
            Some("classic") => Ok(Some(QueueType::Classic)),
            Some("quorum") => Ok(Some(QueueType::Quorum)),
            Some(other) => Err(self.invalid(
                key,
                format!("unknown queue type `{other}`; use \"classic\" or \"quorum\""),
            )),
        }
    }

    fn priority(&self, key: &str, value: Option<i64>) -> Result<Option<u8>, TopologyError> {
        self.priority_range(key, value, |p| {
            format!("priority {p} is out of range; x-max-priority must be 1 to 255 (10 is the sensible maximum)")
        })
    }

    fn urgent_from(&self, key: &str, value: Option<i64>) -> Result<Option<u8>, TopologyError> {
        self.priority_range(key, value, |p| {
            format!("{p} is out of range: it is the lowest priority that goes to the urgent band, 1 to 255 (with priorities 0-9, 5 is usual)")
        })
    }

    /// A priority of 1 to [`MAX_PRIORITY`], or `why` it is not.
    fn priority_range(
        &self,
        key: &str,
        value: Option<i64>,
        why: impl FnOnce(i64) -> String,
    ) -> Result<Option<u8>, TopologyError> {
        match value {
            None => Ok(None),
            Some(p) if (1..=MAX_PRIORITY).contains(&p) => Ok(u8::try_from(p).ok()),
            Some(p) => Err(self.invalid(key, why(p))),
        }
    }

    /// `shards = { count, key }` of queue entry `key`.
    fn shards(&self, key: &str, raw: &RawShards) -> Result<(usize, ShardKey), TopologyError> {
        let count = usize::try_from(raw.count)
            .ok()
            .filter(|c| (1..=MAX_SHARDS).contains(c))
            .ok_or_else(|| {
                self.invalid(
                    format!("{key}.shards.count"),
                    format!("{} is out of range: 1 to {MAX_SHARDS} shard queues (a handful per node is plenty; see docs/ordering.md)", raw.count),
                )
            })?;
        let shard_key = match raw.key.as_str() {
            "routing-key" => ShardKey::RoutingKey,
            "message-id" => ShardKey::MessageId,
            other => match other.strip_prefix("header:") {
                Some(h) if !h.trim().is_empty() => ShardKey::Header(h.to_owned()),
                _ => {
                    return Err(self.invalid(
                        format!("{key}.shards.key"),
                        format!("`{other}` is not a shard key; use \"header:x-courier-key\" (a header publishers set), \"routing-key\" or \"message-id\""),
                    ))
                }
            },
        };
        Ok((count, shard_key))
    }

    fn positive(&self, key: &str, value: Option<i64>) -> Result<Option<i64>, TopologyError> {
        match value {
            Some(v) if v < 1 => Err(self.invalid(key, format!("{v} must be at least 1"))),
            other => Ok(other),
        }
    }

    fn replicas(&self, key: &str, value: Option<i64>) -> Result<Option<i64>, TopologyError> {
        match value {
            Some(v) if v < 1 => Err(self.invalid(
                key,
                format!("{v} must be at least 1: it is how many nodes hold a copy of the queue (x-quorum-initial-group-size); leave it out for the broker's default (up to 3, one per node)"),
            )),
            other => Ok(other),
        }
    }

    fn strategy(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> Result<Option<DeadLetterStrategy>, TopologyError> {
        match value {
            None => Ok(None),
            Some("at-least-once") => Ok(Some(DeadLetterStrategy::AtLeastOnce)),
            Some("at-most-once") => Ok(Some(DeadLetterStrategy::AtMostOnce)),
            Some(other) => Err(self.invalid(
                key,
                format!("unknown dead-letter strategy `{other}`; use \"at-least-once\" (the default for quorum queues) or \"at-most-once\""),
            )),
        }
    }

    /// Refuses a quorum-only setting on a classic queue, naming the key it came from (the
    /// queue's own, or `queue_defaults.*` for every queue that inherits it).
    fn quorum_only<T>(
        &self,
        setting: &Setting<T>,
        queue: &str,
        what: &str,
        why: &str,
    ) -> Result<(), TopologyError> {
        let Some(key) = setting.key() else {
            return Ok(());
        };
        let whose = if setting.inherited() {
            format!(" and `{queue}` (which inherits it) is a classic queue")
        } else {
            " and this is a classic queue".to_owned()
        };
        Err(self.invalid(
            key,
            format!("{what} applies to quorum queues only{whose}: {why}. Set type = \"quorum\" for the queue, or remove the key"),
        ))
    }

    pub(super) fn validate(mut self, raw: RawTopology) -> Result<Topology, TopologyError> {
        let mut exchanges = Vec::new();
        let mut exchange_names = BTreeMap::new();
        for (i, e) in raw.exchanges.iter().enumerate() {
            let key = format!("exchanges[{i}]");
            let name = self.name(&format!("{key}.name"), &e.name)?;
            let kind = match e.kind.as_str() {
                "direct" => ExchangeType::Direct,
                "topic" => ExchangeType::Topic,
                "fanout" => ExchangeType::Fanout,
                "headers" => ExchangeType::Headers,
                other => {
                    return Err(self.invalid(
                        format!("{key}.type"),
                        format!(
                            "unknown exchange type `{other}`; use direct, topic, fanout or headers"
                        ),
                    ))
                }
            };
            exchange_names.insert(e.name.clone(), (name.clone(), kind));
            exchanges.push(ExchangeDef {
                name,
                kind,
                arguments: BTreeMap::new(),
            });
        }

        let retry = self.retry(raw.retry)?;

        let dl = raw.dead_letter.ok_or_else(|| {
            self.invalid(
                "dead_letter",
                "missing table; declare where dead letters go, e.g. [dead_letter] exchange = \"notifications.dlx\" queue = \"notifications.dlq\"",
            )
        })?;
        let dlx = self.name("dead_letter.exchange", &dl.exchange)?;
        let dlq = self.name("dead_letter.queue", &dl.queue)?;
        let dlq_type = self
            .queue_type("dead_letter.type", dl.queue_type.as_deref())?
            .unwrap_or(QueueType::Classic);
        let mut dlq_args = BTreeMap::new();
        dlq_args.insert(
            "x-queue-type".to_owned(),
            ArgValue::Str(dlq_type.as_str().to_owned()),
        );
        let dlq_replicas = self.replicas("dead_letter.replicas", dl.replicas)?;
        match (dlq_type, dlq_replicas) {
            (QueueType::Classic, Some(_)) => {
                return Err(self.invalid(
                    "dead_letter.replicas",
                    "replicas applies to quorum queues only and the dead-letter queue is classic: a classic queue lives on one node and has no replicas. Set dead_letter.type = \"quorum\", or remove replicas",
                ))
            }
            (QueueType::Quorum, replicas) => {
                if let Some(n) = replicas {
                    dlq_args.insert("x-quorum-initial-group-size".to_owned(), ArgValue::Int(n));
                }
                dlq_args.insert(
                    "x-delivery-limit".to_owned(),
                    ArgValue::Int(DEAD_LETTER_QUEUE_DELIVERY_LIMIT),
                );
            }
            (QueueType::Classic, None) => {}
        }
        if let Some(max) = self.positive("dead_letter.max_length", dl.max_length)? {
            dlq_args.insert("x-max-length".to_owned(), ArgValue::Int(max));
        }
        match dl.overflow.as_deref() {
            None => {}
            Some(o @ ("drop-head" | "reject-publish" | "reject-publish-dlx")) => {
                if o == "drop-head" {
                    return Err(self.invalid(
                        "dead_letter.overflow",
                        "\"drop-head\" would silently delete the oldest dead letters; use \"reject-publish\" so the worker keeps the message and retries",
                    ));
                }
                if o == "reject-publish-dlx" && dlq_type == QueueType::Quorum {
                    return Err(self.invalid(
                        "dead_letter.overflow",
                        "quorum queues do not support \"reject-publish-dlx\": RabbitMQ accepts it, then confirms every publish and deletes the oldest dead letters as \"drop-head\" would (seen on 3.10 and 4.0). Use \"reject-publish\": the worker's copy is refused, so it keeps the message and retries",
                    ));
                }
                dlq_args.insert("x-overflow".to_owned(), ArgValue::Str(o.to_owned()));
            }
            Some(other) => {
                return Err(self.invalid(
                    "dead_letter.overflow",
                    format!("unknown overflow `{other}`; use \"reject-publish\""),
                ))
            }
        }
        exchanges.push(ExchangeDef {
            name: dlx.clone(),
            kind: ExchangeType::Fanout,
            arguments: BTreeMap::new(),
        });

        let defaults = &raw.queue_defaults;
        let default_type = self
            .queue_type("queue_defaults.type", defaults.queue_type.as_deref())?
            .unwrap_or(QueueType::Classic);
        let default_priority =
            self.priority("queue_defaults.max_priority", defaults.max_priority)?;
        let default_limit =
            self.positive("queue_defaults.delivery_limit", defaults.delivery_limit)?;
        let default_replicas = self.replicas("queue_defaults.replicas", defaults.replicas)?;
        let default_strategy = self.strategy(
            "queue_defaults.dead_letter_strategy",
            defaults.dead_letter_strategy.as_deref(),
        )?;
        let default_urgent =
            self.urgent_from("queue_defaults.urgent_from", defaults.urgent_from)?;

        if raw.queues.is_empty() {
            return Err(self.invalid(
                "queues",
                "no work queues declared; add at least one [[queues]] table",
            ));
        }

        let mut queues = Vec::new();
        let mut bindings = Vec::new();
        let mut work_queues = Vec::new();
        for (i, q) in raw.queues.iter().enumerate() {
            let key = format!("queues[{i}]");
            let name = self.name(&format!("{key}.name"), &q.name)?;
            let queue_type = self
                .queue_type(&format!("{key}.type"), q.queue_type.as_deref())?
                .unwrap_or(default_type);
            let max_priority = self
                .priority(&format!("{key}.max_priority"), q.max_priority)?
                .or(default_priority);
            let delivery_limit = Setting::of(
                self.positive(&format!("{key}.delivery_limit"), q.delivery_limit)?,
                &format!("{key}.delivery_limit"),
                default_limit,
                "queue_defaults.delivery_limit",
            );
            let replicas = Setting::of(
                self.replicas(&format!("{key}.replicas"), q.replicas)?,
                &format!("{key}.replicas"),
                default_replicas,
                "queue_defaults.replicas",
            );
            let strategy = Setting::of(
                self.strategy(
                    &format!("{key}.dead_letter_strategy"),
                    q.dead_letter_strategy.as_deref(),
                )?,
                &format!("{key}.dead_letter_strategy"),
                default_strategy,
                "queue_defaults.dead_letter_strategy",
            );
            // Arguments a quorum work queue and its retry tiers share.
            let mut quorum_args = BTreeMap::new();
            match queue_type {
                QueueType::Classic => {
                    self.quorum_only(
                        &delivery_limit,
                        &q.name,
                        "delivery_limit",
                        "classic queues have no delivery limit; the worker's --max-redeliveries guards them",
                    )?;
                    self.quorum_only(
                        &replicas,
                        &q.name,
                        "replicas",
                        "a classic queue lives on one node and has no replicas",
                    )?;
                    if strategy.value == Some(DeadLetterStrategy::AtLeastOnce) {
                        self.quorum_only(
                            &strategy,
                            &q.name,
                            "at-least-once dead-lettering",
                            "a classic queue refuses x-dead-letter-strategy and dead-letters at most once",
                        )?;
                    }
                }
                QueueType::Quorum => {
                    if let Some(n) = replicas.value {
                        quorum_args
                            .insert("x-quorum-initial-group-size".to_owned(), ArgValue::Int(n));
                    }
                    if strategy.value.unwrap_or(DeadLetterStrategy::AtLeastOnce)
                        == DeadLetterStrategy::AtLeastOnce
                    {
                        // Without reject-publish RabbitMQ silently dead-letters at most once.
                        quorum_args.insert(
                            "x-dead-letter-strategy".to_owned(),
                            ArgValue::Str("at-least-once".to_owned()),
                        );
                        quorum_args.insert(
                            "x-overflow".to_owned(),
                            ArgValue::Str("reject-publish".to_owned()),
                        );
                    }
                }
            }
            let mut args = quorum_args.clone();
            args.insert(
                "x-queue-type".to_owned(),
                ArgValue::Str(queue_type.as_str().to_owned()),
            );
            args.insert(
                "x-dead-letter-exchange".to_owned(),
                ArgValue::Str(dlx.clone()),
            );
            // Quorum queues (4.0+) have built-in priorities and refuse x-max-priority.
            if let (Some(p), QueueType::Classic) = (max_priority, queue_type) {
                args.insert("x-max-priority".to_owned(), ArgValue::Int(i64::from(p)));
            }
            if queue_type == QueueType::Quorum {
                let limit = delivery_limit.value.unwrap_or(DEFAULT_DELIVERY_LIMIT);
                args.insert("x-delivery-limit".to_owned(), ArgValue::Int(limit));
            }
            let urgent_from = Setting::of(
                self.urgent_from(&format!("{key}.urgent_from"), q.urgent_from)?,
                &format!("{key}.urgent_from"),
                default_urgent,
                "queue_defaults.urgent_from",
            );
            let mut routes = Vec::new();
            for (j, b) in q.bindings.iter().enumerate() {
                let (exchange, kind) =
                    exchange_names.get(&b.exchange).cloned().ok_or_else(|| {
                        self.invalid(
                            format!("{key}.bindings[{j}].exchange"),
                            format!(
                                "exchange `{}` is not declared in [[exchanges]] (declared: {})",
                                b.exchange,
                                raw.exchanges
                                    .iter()
                                    .map(|e| e.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )
                    })?;
                if let (Some(from_key), false) = (urgent_from.key(), kind == ExchangeType::Direct) {
                    return Err(self.invalid(
                        from_key,
                        format!(
                            "an urgent band is routed by exact routing key (`{}{URGENT_SUFFIX}`), and `{}` binds to {} exchange `{}`; bind it to a direct exchange, or remove urgent_from{}",
                            b.routing_key,
                            q.name,
                            kind.as_str(),
                            b.exchange,
                            if urgent_from.inherited() { " for this queue (set it on the queues that want a band)" } else { "" },
                        ),
                    ));
                }
                routes.push((exchange, b.routing_key.clone()));
            }
            if let (Some(from), Some(max), Some(from_key)) =
                (urgent_from.value, max_priority, urgent_from.key())
            {
                if from > max {
                    return Err(self.invalid(
                        from_key,
                        format!("urgent_from = {from} is above max_priority = {max} of `{}`: no message could reach the band", q.name),
                    ));
                }
            }
            let ordered = q.ordered.unwrap_or(false);
            if let Some(raw_shards) = &q.shards {
                if let Some(from_key) = urgent_from.key() {
                    return Err(self.invalid(
                        from_key,
                        format!("`{}` is sharded: an urgent band and shards do not combine (a band would need its own shards); remove urgent_from for this queue", q.name),
                    ));
                }
                if ordered && q.max_priority.is_some() {
                    return Err(self.invalid(
                        format!("{key}.max_priority"),
                        "an ordered channel delivers each key's messages in publish order, and priorities would reorder them; remove max_priority (priorities from [queue_defaults] do not apply to ordered channels)",
                    ));
                }
                let (count, shard_key) = self.shards(&key, raw_shards)?;
                let exchange = self.name(
                    &format!("{key}.shards"),
                    &format!("{}{SHARD_EXCHANGE_SUFFIX}", q.name),
                )?;
                let mut xargs = BTreeMap::new();
                match &shard_key {
                    ShardKey::Header(h) => {
                        xargs.insert("hash-header".to_owned(), ArgValue::Str(h.clone()));
                    }
                    ShardKey::MessageId => {
                        xargs.insert(
                            "hash-property".to_owned(),
                            ArgValue::Str("message_id".to_owned()),
                        );
                    }
                    ShardKey::RoutingKey => {}
                }
                exchanges.push(ExchangeDef {
                    name: exchange.clone(),
                    kind: ExchangeType::ConsistentHash,
                    arguments: xargs,
                });
                // Publishers keep publishing where they did: the queue's bindings now lead to
                // the shard exchange.
                for (source, routing_key) in &routes {
                    bindings.push(BindingDef {
                        exchange: source.clone(),
                        queue: exchange.clone(),
                        to_exchange: true,
                        routing_key: routing_key.clone(),
                    });
                }
                let mut shard_args = args.clone();
                if ordered {
                    // One active consumer per shard: the order of a key holds however many
                    // workers subscribe, and the next in line takes over when it goes.
                    // (Throughput mode has competing consumers on every shard instead: with a
                    // single active one, the first worker to subscribe would take them all.)
                    shard_args.insert("x-single-active-consumer".to_owned(), ArgValue::Bool(true));
                    shard_args.remove("x-max-priority");
                }
                if queue_type == QueueType::Quorum {
                    // Leaders spread over the nodes, not all on the one `apply` talked to.
                    shard_args.insert(
                        "x-queue-leader-locator".to_owned(),
                        ArgValue::Str("balanced".to_owned()),
                    );
                }
                let mut shard_queues = Vec::new();
                for i in 0..count {
                    let shard = self.name(
                        &format!("{key}.shards.count"),
                        &format!("{}.shard.{i}", q.name),
                    )?;
                    queues.push(QueueDef {
                        name: shard.clone(),
                        role: QueueRole::Work,
                        queue_type,
                        arguments: shard_args.clone(),
                    });
                    // The binding key of a consistent-hash exchange is the shard's weight.
                    bindings.push(BindingDef {
                        exchange: exchange.clone(),
                        queue: shard.clone(),
                        to_exchange: false,
                        routing_key: "1".to_owned(),
                    });
                    shard_queues.push(shard);
                }
                // Throughput mode shares one set of tiers, which hand a retried message back to
                // the shard exchange (its key picks the shard again). Ordered mode retries in
                // place: a tier would let the key's later messages overtake.
                let mut retry_queues = Vec::new();
                if !ordered {
                    for (t, delay) in retry.tiers.iter().enumerate() {
                        let tier_name = self.name(
                            &format!("retry.tiers[{t}]"),
                            &format!("{}.retry.{}", q.name, tier_label(*delay)),
                        )?;
                        // No dead-letter routing key: the message's own key picks the shard.
                        queues.push(tier_def(
                            &tier_name,
                            queue_type,
                            &quorum_args,
                            *delay,
                            (&exchange, None),
                            &exchange,
                        ));
                        retry_queues.push(tier_name);
                    }
                }
                let members = if ordered {
                    let members =
                        self.name(&format!("{key}.ordered"), &format!("{}.workers", q.name))?;
                    let mut margs = BTreeMap::new();
                    margs.insert(
                        "x-queue-type".to_owned(),
                        ArgValue::Str(queue_type.as_str().to_owned()),
                    );
                    if let (Some(n), QueueType::Quorum) = (replicas.value, queue_type) {
                        margs.insert("x-quorum-initial-group-size".to_owned(), ArgValue::Int(n));
                    }
                    queues.push(QueueDef {
                        name: members.clone(),
                        role: QueueRole::Members,
                        queue_type,
                        arguments: margs,
                    });
                    Some(members)
                } else {
                    None
                };
                work_queues.push(WorkQueue {
                    name,
                    max_priority: if ordered { None } else { max_priority },
                    retry_queues,
                    urgent: None,
                    band_of: None,
                    sharding: Some(Sharding {
                        exchange,
                        key: shard_key,
                        queues: shard_queues,
                        ordered,
                        members,
                    }),
                });
                continue;
            }
            if ordered {
                return Err(self.invalid(
                    format!("{key}.ordered"),
                    format!("`{}` is not sharded: ordered delivery needs shards (each with one active consumer); add shards = {{ count = 1, key = \"header:x-courier-key\" }} for one ordered stream, more for several", q.name),
                ));
            }
            // The band is a second work queue with the same arguments and tiers of its own, so
            // a retried urgent message comes back to the band, not behind the bulk.
            let band = match urgent_from.value {
                Some(from) => {
                    let short = format!("{}{URGENT_SUFFIX}", q.name);
                    let band_key = urgent_from.key().unwrap_or("urgent_from").to_owned();
                    let full = self.name(&band_key, &short)?;
                    Some((short, full, from))
                }
                None => None,
            };
            let lanes = [
                Some((q.name.clone(), name.clone(), "")),
                band.as_ref()
                    .map(|(short, full, _)| (short.clone(), full.clone(), URGENT_SUFFIX)),
            ];
            for (short, lane_name, suffix) in lanes.into_iter().flatten() {
                for (exchange, routing_key) in &routes {
                    bindings.push(BindingDef {
                        exchange: exchange.clone(),
                        queue: lane_name.clone(),
                        to_exchange: false,
                        routing_key: format!("{routing_key}{suffix}"),
                    });
                }
                queues.push(QueueDef {
                    name: lane_name.clone(),
                    role: QueueRole::Work,
                    queue_type,
                    arguments: args.clone(),
                });
                let mut retry_queues = Vec::new();
                for (t, delay) in retry.tiers.iter().enumerate() {
                    let tier_name = self.name(
                        &format!("retry.tiers[{t}]"),
                        &format!("{short}.retry.{}", tier_label(*delay)),
                    )?;
                    // Through the default exchange straight back to this queue.
                    queues.push(tier_def(
                        &tier_name,
                        queue_type,
                        &quorum_args,
                        *delay,
                        ("", Some(&lane_name)),
                        &lane_name,
                    ));
                    retry_queues.push(tier_name);
                }
                let is_band = !suffix.is_empty();
                work_queues.push(WorkQueue {
                    name: lane_name,
                    max_priority,
                    retry_queues,
                    urgent: match (&band, is_band) {
                        (Some((_, full, from)), false) => Some(UrgentBand {
                            queue: full.clone(),
                            from_priority: *from,
                        }),
                        _ => None,
                    },
                    band_of: is_band.then(|| name.clone()),
                    sharding: None,
                });
            }
        }

        queues.push(QueueDef {
            name: dlq.clone(),
            role: QueueRole::DeadLetter,
            queue_type: dlq_type,
            arguments: dlq_args,
        });
        bindings.push(BindingDef {
            exchange: dlx.clone(),
            queue: dlq.clone(),
            to_exchange: false,
            routing_key: String::new(),
        });

        Ok(Topology {
            source: self.file.to_owned(),
            prefix: self.prefix.to_owned(),
            exchanges,
            queues,
            bindings,
            work_queues,
            dead_letter_exchange: dlx,
            dead_letter_queue: dlq,
            retry,
        })
    }

    fn retry(&self, raw: Option<RawRetry>) -> Result<RetryPolicy, TopologyError> {
        let raw = raw.ok_or_else(|| {
            self.invalid(
                "retry",
                "missing table; declare retry tiers, e.g. [retry] tiers = [\"1s\", \"10s\", \"1m\"], or [retry] disabled = true",
            )
        })?;
        if raw.disabled {
            if !raw.tiers.is_empty() {
                return Err(self.invalid(
                    "retry.tiers",
                    "retry is disabled but tiers are listed; remove one of the two",
                ));
            }
            if let Some(m) = raw.max_attempts.filter(|m| *m != 1) {
                return Err(self.invalid(
                    "retry.max_attempts",
                    format!("{m} attempts need retry tiers; with retry disabled every message gets one attempt, so remove max_attempts (or set it to 1)"),
                ));
            }
            return Ok(RetryPolicy {
                tiers: Vec::new(),
                max_attempts: 1,
            });
        }
        if raw.tiers.is_empty() {
            return Err(self.invalid(
                "retry.tiers",
                "the list is empty; list at least one delay (e.g. [\"1s\", \"10s\"]), or for no retry write retry.disabled = true in place of tiers and max_attempts",
            ));
        }
        let mut tiers = Vec::new();
        for (i, t) in raw.tiers.iter().enumerate() {
            let key = format!("retry.tiers[{i}]");
            let d = humantime::parse_duration(t).map_err(|e| {
                self.invalid(
                    &key,
                    format!("`{t}` is not a duration ({e}); write e.g. \"500ms\", \"10s\", \"1m\""),
                )
            })?;
            if d < Duration::from_millis(1) {
                return Err(self.invalid(&key, format!("`{t}`: a tier must be at least 1ms")));
            }
            if d.as_millis() > u128::from(u32::MAX) {
                return Err(self.invalid(
                    &key,
                    format!("`{t}`: RabbitMQ's x-message-ttl is at most 2^32-1 ms (about 49 days)"),
                ));
            }
            if let Some(prev) = tiers.last() {
                if d <= *prev {
                    return Err(self.invalid(
                        &key,
                        format!("`{t}` is not longer than the tier before it; tiers must grow"),
                    ));
                }
            }
            tiers.push(d);
        }
        let default_attempts = i64::try_from(tiers.len())
            .unwrap_or(i64::MAX)
            .saturating_add(1);
        let max_attempts = raw.max_attempts.unwrap_or(default_attempts);
        if !(1..=1_000_000).contains(&max_attempts) {
            return Err(self.invalid(
                "retry.max_attempts",
                format!("{max_attempts} is out of range; use 1 to 1000000"),
            ));
        }
        Ok(RetryPolicy {
            tiers,
            max_attempts: u32::try_from(max_attempts).unwrap_or(u32::MAX),
        })
    }
}

/// A retry tier `name` of `delay` (its `x-message-ttl`) that dead-letters an expired message
/// through `dead_letter` (exchange, routing key) back to `work_queue`.
fn tier_def(
    name: &str,
    queue_type: QueueType,
    quorum_args: &BTreeMap<String, ArgValue>,
    delay: Duration,
    dead_letter: (&str, Option<&str>),
    work_queue: &str,
) -> QueueDef {
    let mut args = quorum_args.clone();
    args.insert(
        "x-queue-type".to_owned(),
        ArgValue::Str(queue_type.as_str().to_owned()),
    );
    let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    args.insert("x-message-ttl".to_owned(), ArgValue::Int(ttl));
    args.insert(
        "x-dead-letter-exchange".to_owned(),
        ArgValue::Str(dead_letter.0.to_owned()),
    );
    if let Some(key) = dead_letter.1 {
        args.insert(
            "x-dead-letter-routing-key".to_owned(),
            ArgValue::Str(key.to_owned()),
        );
    }
    QueueDef {
        name: name.to_owned(),
        role: QueueRole::Retry {
            work_queue: work_queue.to_owned(),
            delay,
        },
        queue_type,
        arguments: args,
    }
}

/// `dead_letter_strategy`: how a quorum queue hands its dead letters on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeadLetterStrategy {
    /// `x-dead-letter-strategy = at-least-once` (with `x-overflow = reject-publish`): the queue
    /// keeps a dead letter until its target confirmed it.
    AtLeastOnce,
    /// RabbitMQ's default: a dead letter in transit is lost if a node fails.
    AtMostOnce,
}

/// A per-queue setting: the `[[queues]]` entry's own value, else `[queue_defaults]`'s, with the
/// key it came from, for messages.
struct Setting<T> {
    value: Option<T>,
    own_key: String,
    from_defaults: Option<&'static str>,
}

impl<T: Copy> Setting<T> {
    fn of(own: Option<T>, own_key: &str, default: Option<T>, default_key: &'static str) -> Self {
        Self {
            value: own.or(default),
            own_key: own_key.to_owned(),
            from_defaults: own.is_none().then_some(default_key),
        }
    }
}

impl<T> Setting<T> {
    /// The key the value came from, or `None` if neither table sets it.
    fn key(&self) -> Option<&str> {
        self.value.as_ref()?;
        Some(self.from_defaults.unwrap_or(&self.own_key))
    }

    fn inherited(&self) -> bool {
        self.value.is_some() && self.from_defaults.is_some()
    }
}
