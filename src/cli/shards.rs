//! `courier shards`: backlog, rates and the active consumer of every shard of a sharded
//! channel, from the management API; with a hint when one shard holds most of the backlog.

use super::out::{self, out, outln};
use super::GlobalArgs;
use anyhow::bail;
use clap::Args;
use courier::amqp::AmqpUrl;
use courier::management::{Management, ManagementError, QueueStats};
use courier::topology::{ArgValue, Topology, WorkQueue};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde_json::json;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// Show the backlog, rates and active consumer of every shard of the sharded channels.
///
/// One table per sharded work queue of the topology (or the one named by --queue), one row
/// per shard queue:
///   SHARD            the shard queue, `<name>.shard.<n>`
///   READY            messages waiting in it (the backlog)
///   UNACKED          messages delivered to a worker and not yet acknowledged
///   PUB/S            messages published into the shard a second
///   DELIVER/S        messages delivered to workers a second
///   ACK/S            messages acknowledged (done) a second
///   CONSUMERS        consumers subscribed (every worker subscribes to every shard)
///   ACTIVE CONSUMER  ordered channels: the one consumer the broker lets work the shard
///                    (x-single-active-consumer), as the worker's host:port and channel;
///                    `none` when no worker consumes it. Throughput channels: `all
///                    (competing)`: every consumer takes messages from every shard
/// then a total, and for an ordered channel the number of workers on its roll (the
/// consumers of `<name>.workers`), among which the shards are shared out.
///
/// When one shard holds most of the backlog, a hint says so: one key (a user, an account)
/// sends far more than the others, and its shard's worker cannot keep up. More shards do not
/// help a hot key; see docs/ordering.md.
///
/// The counts and rates come from RabbitMQ's management API, which samples them every few
/// seconds (5 s by default): they lag a little; `?` is a count and `-` a rate not sampled
/// yet. The consumers are current.
///   courier shards
///   courier shards --queue notifications.email --watch 2s
///   courier shards --json | jq '.channels[].shards[].ready'
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ShardsArgs {
    /// Only this work queue, as named in the topology file (the --prefix is added).
    #[arg(long, value_name = "NAME")]
    queue: Option<String>,
    /// Print JSON instead of tables (with --watch: one object a line).
    #[arg(long)]
    json: bool,
    /// Redraw every DURATION (e.g. `2s`, at least 1s) until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    watch: Option<Duration>,
    /// Management API base URL. Uses the AMQP credentials. Default: the AMQP host, port 15672.
    #[arg(long, env = "COURIER_MANAGEMENT_URL", value_name = "URL")]
    management_url: Option<String>,
}

/// Shards fetched from the API at once.
const PARALLEL_REQUESTS: usize = 16;

/// The shortest --watch interval: the API samples every 5 s by default, so faster is noise.
const MIN_WATCH: Duration = Duration::from_secs(1);

/// Below this many ready messages in a channel, no shard is called hot: a small backlog is
/// uneven by chance.
const HOT_MIN_BACKLOG: u64 = 100;

/// A shard is hot when it holds at least this share of the channel's backlog...
const HOT_MIN_SHARE: f64 = 0.5;

/// ... and at least this many times its fair share (1/N): with 2 shards, 75 %.
const HOT_MIN_FAIR_SHARES: f64 = 1.5;

pub async fn run(global: &GlobalArgs, args: ShardsArgs) -> anyhow::Result<ExitCode> {
    let topo = global.load_topology()?;
    let channels = select_channels(&topo, args.queue.as_deref())?;
    if let Some(every) = args.watch {
        if every < MIN_WATCH {
            bail!(
                "--watch {}: at least 1s (the management API samples its counts every 5 s by default)",
                humantime::format_duration(every)
            );
        }
    }
    let url = global.amqp_url()?;
    let mgmt = Management::locate(args.management_url.as_deref(), &url).await;
    let api = Api {
        mgmt: &mgmt,
        explicit: args.management_url.is_some(),
        url: &url,
    };
    let Some(every) = args.watch else {
        let report = api.collect(&topo, &channels).await?;
        let printed = if args.json {
            outln!("{}", serde_json::to_string_pretty(&report.to_json())?)
        } else {
            out!("{}", report.render())
        };
        return out::verdict(printed, ExitCode::SUCCESS);
    };

    // Watch: the first sample must work (a wrong URL ends it at once); later failures are shown
    // and tried again at the next tick. Ctrl-C ends it.
    let stop = courier::shutdown::signal();
    tokio::pin!(stop);
    let terminal = std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        let sample = tokio::select! {
            _ = &mut stop => break,
            r = api.collect(&topo, &channels) => r,
        };
        let report = match sample {
            Ok(r) => r,
            Err(e) if first => return Err(e),
            Err(e) => {
                let text = url.scrub(&format!("{e:#}"));
                if args.json {
                    eprintln!(
                        "error: {text} (trying again in {})",
                        humantime::format_duration(every)
                    );
                } else {
                    draw_frame(terminal, every, &format!("error: {text}\n"))?;
                }
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(every) => continue,
                }
            }
        };
        first = false;
        if args.json {
            outln!("{}", serde_json::to_string(&report.to_json())?)?;
        } else {
            draw_frame(terminal, every, &report.render())?;
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One --watch frame: on a terminal the screen is cleared first; elsewhere frames follow each
/// other, each under its time.
fn draw_frame(terminal: bool, every: Duration, body: &str) -> std::io::Result<()> {
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    let every = humantime::format_duration(every);
    if terminal {
        out!("\x1b[H\x1b[2J{now}  every {every}, Ctrl-C to stop\n\n{body}")
    } else {
        out!("--- {now}\n{body}\n")
    }
}

/// The work queues to show: the one named (prefixed as `courier work --queue` does), else
/// every sharded one; an error that says why when there is none.
fn select_channels<'t>(
    topo: &'t Topology,
    queue: Option<&str>,
) -> anyhow::Result<Vec<&'t WorkQueue>> {
    let sharded: Vec<&WorkQueue> = topo
        .work_queues
        .iter()
        .filter(|w| w.sharding.is_some())
        .collect();
    let listed = || {
        if sharded.is_empty() {
            format!("{} declares no sharded queue", topo.source)
        } else {
            let names: Vec<&str> = sharded.iter().map(|w| w.name.as_str()).collect();
            format!("sharded queues in {}: {}", topo.source, names.join(", "))
        }
    };
    let Some(given) = queue else {
        if sharded.is_empty() {
            bail!(
                "{} declares no sharded queue: `courier shards` shows the shards of a work queue \
                 declared with `shards = {{ count = N, key = \"header:x-courier-key\" }}` (see \
                 the comments in topology/notifications.toml and docs/ordering.md)",
                topo.source
            );
        }
        return Ok(sharded);
    };
    let name = if topo.work_queue(given).is_some() {
        given.to_owned()
    } else {
        format!("{}{given}", topo.prefix)
    };
    match topo.work_queue(&name) {
        None => bail!("no work queue '{name}' in {} ({})", topo.source, listed()),
        Some(w) if w.sharding.is_none() => bail!(
            "'{name}' is not sharded: it is one queue, without `shards = {{ count, key }}` in {} \
             ({})",
            topo.source,
            listed()
        ),
        Some(w) => Ok(vec![w]),
    }
}

/// The management API, and what to say when it does not answer.
struct Api<'a> {
    mgmt: &'a Management,
    /// --management-url was given (else the URL is a guess from the AMQP host).
    explicit: bool,
    /// The AMQP URL, whose credentials the API is asked with (and whose password no message
    /// may show).
    url: &'a AmqpUrl,
}

impl Api<'_> {
    /// Every shard of every channel, and the channels' rolls of workers.
    async fn collect(&self, topo: &Topology, channels: &[&WorkQueue]) -> anyhow::Result<Report> {
        let mut report = Report {
            management_url: courier::amqp::redact(self.mgmt.base()),
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            channels: Vec::new(),
        };
        for w in channels {
            let Some(sharding) = &w.sharding else {
                continue;
            };
            let stats: Vec<(String, Option<QueueStats>)> = stream::iter(&sharding.queues)
                .map(|q| async move { self.mgmt.queue_stats(q).await.map(|s| (q.clone(), s)) })
                .buffered(PARALLEL_REQUESTS)
                .try_collect()
                .await
                .map_err(|e| self.explain(e))?;
            let missing: Vec<&str> = stats
                .iter()
                .filter(|(_, s)| s.is_none())
                .map(|(q, _)| q.as_str())
                .collect();
            if !missing.is_empty() {
                bail!(
                    "shard queue{} {} of '{}' not on the broker behind {}: run `courier topology \
                     apply` with the same --topology and --prefix",
                    if missing.len() == 1 { "" } else { "s" },
                    missing.join(", "),
                    w.name,
                    self.mgmt.base()
                );
            }
            let shards = stats
                .iter()
                .enumerate()
                .filter_map(|(index, (name, s))| {
                    let s = s.as_ref()?;
                    // The broker's own arguments say how it hands out messages; the file's, if
                    // the record has none.
                    let single_active = s
                        .single_active_consumer()
                        .unwrap_or_else(|| declared_single_active(topo, name, sharding.ordered));
                    Some(ShardRow::from_stats(index, name, single_active, s))
                })
                .collect();
            let workers = match &sharding.members {
                Some(members) => Some(Roll {
                    queue: members.clone(),
                    consumers: self
                        .mgmt
                        .queue_stats(members)
                        .await
                        .map_err(|e| self.explain(e))?
                        .map(|s| s.consumer_count()),
                }),
                None => None,
            };
            report.channels.push(ChannelReport {
                queue: w.name.clone(),
                exchange: sharding.exchange.clone(),
                key: sharding.key.to_string(),
                ordered: sharding.ordered,
                shards,
                workers,
            });
        }
        Ok(report)
    }

    /// A failed call, with the URL tried and what to do about it.
    fn explain(&self, e: ManagementError) -> anyhow::Error {
        let reason = e.reason();
        let fix = if reason.contains("HTTP 401") || reason.contains("HTTP 403") {
            format!(
                "the management API refused the AMQP URL's user '{}': check its password, and \
                 that the user may use the API (the `monitoring` tag: rabbitmqctl \
                 set_user_tags {} monitoring)",
                self.url.username(),
                self.url.username()
            )
        } else if self.explicit {
            "check --management-url (or COURIER_MANAGEMENT_URL): `courier shards` reads the \
             shards' counts from RabbitMQ's management API"
                .to_owned()
        } else {
            "`courier shards` reads the shards' counts from RabbitMQ's management API, guessed \
             at the AMQP host on port 15672: enable it on the broker (rabbitmq-plugins enable \
             rabbitmq_management) or pass its URL with --management-url (or \
             COURIER_MANAGEMENT_URL)"
                .to_owned()
        };
        anyhow::anyhow!("{}", self.url.scrub(&format!("{e}; {fix}")))
    }
}

/// Whether the topology declares shard `name` with a single active consumer (ordered channels'
/// shards are, throughput ones are not).
fn declared_single_active(topo: &Topology, name: &str, ordered: bool) -> bool {
    topo.queue(name).map_or(ordered, |q| {
        q.arguments.get("x-single-active-consumer") == Some(&ArgValue::Bool(true))
    })
}

/// What `courier shards` found, for the table or the JSON.
#[derive(Debug, Clone, PartialEq)]
struct Report {
    /// Where the numbers come from (no credentials).
    management_url: String,
    /// When they were read (RFC 3339).
    at: String,
    channels: Vec<ChannelReport>,
}

/// One sharded work queue.
#[derive(Debug, Clone, PartialEq)]
struct ChannelReport {
    queue: String,
    exchange: String,
    key: String,
    ordered: bool,
    shards: Vec<ShardRow>,
    /// An ordered channel's roll of workers.
    workers: Option<Roll>,
}

/// An ordered channel's `<name>.workers` queue: its consumers are the workers of the channel.
#[derive(Debug, Clone, PartialEq)]
struct Roll {
    queue: String,
    /// `None` when the queue is not on the broker.
    consumers: Option<u64>,
}

/// One shard queue.
#[derive(Debug, Clone, PartialEq)]
struct ShardRow {
    /// Its number, `<name>.shard.<index>`.
    index: usize,
    queue: String,
    /// `None` until the broker's first sample of a new queue.
    ready: Option<u64>,
    unacked: Option<u64>,
    publish_rate: Option<f64>,
    deliver_rate: Option<f64>,
    ack_rate: Option<f64>,
    consumers: u64,
    /// Declared with x-single-active-consumer (an ordered channel's shard).
    single_active: bool,
    active: Active,
}

/// Who takes a shard's messages.
#[derive(Debug, Clone, PartialEq)]
enum Active {
    /// No consumer at all.
    Nobody,
    /// Every consumer (a throughput shard: competing consumers).
    Competing,
    /// A single-active-consumer shard's active consumer.
    Consumer(ActiveConsumer),
    /// Consumers, none marked active (a hand-over under way).
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
struct ActiveConsumer {
    /// The worker's `host:port`.
    peer: Option<String>,
    /// The broker's name for the worker's connection.
    connection: Option<String>,
    /// The channel number on that connection.
    channel: Option<u64>,
    consumer_tag: String,
    node: Option<String>,
}

impl Active {
    /// As the table shows it.
    fn label(&self) -> String {
        match self {
            Self::Nobody => "none".to_owned(),
            Self::Competing => "all (competing)".to_owned(),
            Self::Unknown => "? (none marked active yet)".to_owned(),
            Self::Consumer(c) => {
                let who = c
                    .peer
                    .clone()
                    .or_else(|| c.connection.clone())
                    .unwrap_or_else(|| c.consumer_tag.clone());
                match c.channel {
                    Some(n) => format!("{who} ch {n}"),
                    None => who,
                }
            }
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Consumer(c) => json!({
                "peer": c.peer,
                "connection": c.connection,
                "channel": c.channel,
                "consumer_tag": c.consumer_tag,
                "node": c.node,
            }),
            _ => serde_json::Value::Null,
        }
    }
}

impl ShardRow {
    fn from_stats(index: usize, queue: &str, single_active: bool, s: &QueueStats) -> Self {
        let consumers = s.consumer_count();
        let active = if consumers == 0 {
            Active::Nobody
        } else if !single_active {
            Active::Competing
        } else {
            match s.active_consumer() {
                Some(c) => Active::Consumer(ActiveConsumer {
                    peer: c.channel_details.peer(),
                    connection: c.channel_details.connection_name.clone(),
                    channel: c.channel_details.number,
                    consumer_tag: c.consumer_tag.clone(),
                    node: c.channel_details.node.clone(),
                }),
                None => match s.single_active_consumer_tag() {
                    Some(tag) => Active::Consumer(ActiveConsumer {
                        peer: None,
                        connection: None,
                        channel: None,
                        consumer_tag: tag.to_owned(),
                        node: None,
                    }),
                    None => Active::Unknown,
                },
            }
        };
        Self {
            index,
            queue: queue.to_owned(),
            ready: s.messages_ready,
            unacked: s.messages_unacknowledged,
            publish_rate: s.message_stats.publish_rate(),
            deliver_rate: s.message_stats.deliver_rate(),
            ack_rate: s.message_stats.ack_rate(),
            consumers,
            single_active,
            active,
        }
    }
}

/// Sums of the shards' counts and rates (`None` where no shard has one).
#[derive(Debug, Clone, PartialEq)]
struct Totals {
    ready: u64,
    unacked: u64,
    publish_rate: Option<f64>,
    deliver_rate: Option<f64>,
    ack_rate: Option<f64>,
    /// Some shard's counts are not sampled yet: the sums cover the others.
    partial: bool,
}

fn sum_rates(rows: &[ShardRow], rate: impl Fn(&ShardRow) -> Option<f64>) -> Option<f64> {
    rows.iter()
        .filter_map(rate)
        .fold(None, |acc, r| Some(acc.unwrap_or(0.0) + r))
}

/// The shard holding most of the backlog, if one does: (index, share of the ready messages).
#[derive(Debug, Clone, PartialEq)]
struct HotShard {
    index: usize,
    queue: String,
    share: f64,
}

impl ChannelReport {
    fn totals(&self) -> Totals {
        Totals {
            ready: self.shards.iter().filter_map(|s| s.ready).sum(),
            unacked: self.shards.iter().filter_map(|s| s.unacked).sum(),
            publish_rate: sum_rates(&self.shards, |s| s.publish_rate),
            deliver_rate: sum_rates(&self.shards, |s| s.deliver_rate),
            ack_rate: sum_rates(&self.shards, |s| s.ack_rate),
            partial: self
                .shards
                .iter()
                .any(|s| s.ready.is_none() || s.unacked.is_none()),
        }
    }

    /// A shard with at least [`HOT_MIN_SHARE`] of the ready messages and
    /// [`HOT_MIN_FAIR_SHARES`] times its fair share, in a backlog of [`HOT_MIN_BACKLOG`] or
    /// more.
    fn hot_shard(&self) -> Option<HotShard> {
        let n = self.shards.len();
        if n < 2 {
            return None;
        }
        let total: u64 = self.shards.iter().filter_map(|s| s.ready).sum();
        if total < HOT_MIN_BACKLOG {
            return None;
        }
        let top = self.shards.iter().max_by_key(|s| s.ready.unwrap_or(0))?;
        let share = top.ready.unwrap_or(0) as f64 / total as f64;
        let threshold = HOT_MIN_SHARE.max(HOT_MIN_FAIR_SHARES / n as f64);
        (share >= threshold).then(|| HotShard {
            index: top.index,
            queue: top.queue.clone(),
            share,
        })
    }

    fn hint(&self) -> Option<String> {
        self.hot_shard().map(|h| {
            format!(
                "shard {} holds {}% of the backlog: a hot key? see docs/ordering.md",
                h.index,
                percent(h.share)
            )
        })
    }
}

/// A share as a whole percentage, never rounded up to 100 unless it is all.
fn percent(share: f64) -> u64 {
    let p = (share * 100.0).round() as u64;
    if p >= 100 && share < 1.0 {
        99
    } else {
        p
    }
}

fn count(n: Option<u64>) -> String {
    n.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"))
}

impl Report {
    /// The tables, one per channel, with totals, rolls and hints.
    fn render(&self) -> String {
        let mut out = String::new();
        for (i, c) in self.channels.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&format!(
                "{}: {}, {} shard{} behind {} (key {})\n",
                c.queue,
                if c.ordered { "ordered" } else { "throughput" },
                c.shards.len(),
                if c.shards.len() == 1 { "" } else { "s" },
                c.exchange,
                c.key
            ));
            let t = c.totals();
            let mut rows: Vec<[String; 8]> = vec![[
                "SHARD".into(),
                "READY".into(),
                "UNACKED".into(),
                "PUB/S".into(),
                "DELIVER/S".into(),
                "ACK/S".into(),
                "CONSUMERS".into(),
                "ACTIVE CONSUMER".into(),
            ]];
            for s in &c.shards {
                rows.push([
                    s.queue.clone(),
                    count(s.ready),
                    count(s.unacked),
                    rate(s.publish_rate),
                    rate(s.deliver_rate),
                    rate(s.ack_rate),
                    s.consumers.to_string(),
                    s.active.label(),
                ]);
            }
            rows.push([
                "total".into(),
                t.ready.to_string(),
                t.unacked.to_string(),
                rate(t.publish_rate),
                rate(t.deliver_rate),
                rate(t.ack_rate),
                String::new(),
                String::new(),
            ]);
            out.push_str(&table(&rows));
            if let Some(roll) = &c.workers {
                match roll.consumers {
                    Some(n) => out.push_str(&format!(
                        "workers on the roll ({}): {n}, sharing the {} shards\n",
                        roll.queue,
                        c.shards.len()
                    )),
                    None => out.push_str(&format!(
                        "workers on the roll: unknown ({} is not on the broker: run `courier \
                         topology apply`)\n",
                        roll.queue
                    )),
                }
            }
            if t.partial {
                out.push_str(
                    "note: `?`: not sampled yet (the broker samples a new queue's counts within \
                     a few seconds); the total counts the others\n",
                );
            }
            if let Some(hint) = c.hint() {
                out.push_str(&format!("hint: {hint}\n"));
            }
        }
        out
    }

    fn to_json(&self) -> serde_json::Value {
        let channels: Vec<serde_json::Value> = self
            .channels
            .iter()
            .map(|c| {
                let t = c.totals();
                let shards: Vec<serde_json::Value> = c
                    .shards
                    .iter()
                    .map(|s| {
                        json!({
                            "index": s.index,
                            "queue": s.queue,
                            "ready": s.ready,
                            "unacked": s.unacked,
                            "publish_rate": s.publish_rate,
                            "deliver_rate": s.deliver_rate,
                            "ack_rate": s.ack_rate,
                            "consumers": s.consumers,
                            "single_active_consumer": s.single_active,
                            "active": s.active.label(),
                            "active_consumer": s.active.to_json(),
                        })
                    })
                    .collect();
                json!({
                    "queue": c.queue,
                    "exchange": c.exchange,
                    "key": c.key,
                    "ordered": c.ordered,
                    "shards": shards,
                    "total": {
                        "ready": t.ready,
                        "unacked": t.unacked,
                        "publish_rate": t.publish_rate,
                        "deliver_rate": t.deliver_rate,
                        "ack_rate": t.ack_rate,
                        "partial": t.partial,
                    },
                    "workers": c.workers.as_ref().map(|r| json!({
                        "queue": r.queue,
                        "consumers": r.consumers,
                    })),
                    "hot_shard": c.hot_shard().map(|h| json!({
                        "index": h.index,
                        "queue": h.queue,
                        "share": h.share,
                    })),
                    "hint": c.hint(),
                })
            })
            .collect();
        json!({
            "at": self.at,
            "management_url": self.management_url,
            "channels": channels,
        })
    }
}

/// Columns padded to their widest cell: names left-aligned, numbers right-aligned, the last
/// column unpadded.
fn table(rows: &[[String; 8]]) -> String {
    let mut widths = [0usize; 8];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            match i {
                0 => line.push_str(&format!("{cell:<w$}")),
                7 => line.push_str(cell),
                _ => line.push_str(&format!("{cell:>w$}")),
            }
            if i < 7 {
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(json: serde_json::Value) -> QueueStats {
        serde_json::from_value(json).expect("queue stats")
    }

    fn row(index: usize, ready: u64) -> ShardRow {
        ShardRow {
            index,
            queue: format!("q.shard.{index}"),
            ready: Some(ready),
            unacked: Some(0),
            publish_rate: None,
            deliver_rate: None,
            ack_rate: None,
            consumers: 0,
            single_active: true,
            active: Active::Nobody,
        }
    }

    fn channel(readies: &[u64]) -> ChannelReport {
        ChannelReport {
            queue: "q".into(),
            exchange: "q.shards".into(),
            key: "header:x-courier-key".into(),
            ordered: true,
            shards: readies
                .iter()
                .enumerate()
                .map(|(i, r)| row(i, *r))
                .collect(),
            workers: None,
        }
    }

    const TOPOLOGY: &str = r#"
        [[exchanges]]
        name = "notifications"
        type = "direct"
        [[queues]]
        name = "notifications.email"
        type = "quorum"
        shards = { count = 3, key = "header:x-courier-key" }
        ordered = true
        bindings = [{ exchange = "notifications", routing_key = "email" }]
        [[queues]]
        name = "notifications.sms"
        bindings = [{ exchange = "notifications", routing_key = "sms" }]
        [retry]
        tiers = ["1s"]
        [dead_letter]
        exchange = "notifications.dlx"
        queue = "notifications.dlq"
    "#;

    #[test]
    fn a_hot_shard_is_named_only_when_it_holds_most_of_a_real_backlog() {
        let hot = channel(&[10, 10, 10, 810, 10, 10])
            .hot_shard()
            .expect("hot");
        assert_eq!(hot.index, 3);
        assert_eq!(
            channel(&[10, 10, 10, 810, 10, 10]).hint().as_deref(),
            Some("shard 3 holds 94% of the backlog: a hot key? see docs/ordering.md")
        );
        // Even: no hint.
        assert_eq!(channel(&[100, 120, 90, 110, 100, 95]).hot_shard(), None);
        // Lopsided but tiny: chance, not a hot key.
        assert_eq!(channel(&[0, 0, 40, 0]).hot_shard(), None);
        // Two shards: 60 % is not "most" by enough, 80 % is.
        assert_eq!(channel(&[600, 400]).hot_shard(), None);
        assert_eq!(channel(&[200, 800]).hot_shard().map(|h| h.index), Some(1));
        // One shard cannot be hotter than itself.
        assert_eq!(channel(&[5000]).hot_shard(), None);
        // Nearly everything is not everything.
        assert_eq!(percent(0.996), 99);
        assert_eq!(percent(1.0), 100);
        assert_eq!(percent(0.814), 81);
    }

    #[test]
    fn the_active_consumer_is_the_one_the_broker_marks_active() {
        let s = stats(json!({
            "name": "q.shard.0",
            "messages_ready": 7, "messages_unacknowledged": 2, "consumers": 2,
            "arguments": {"x-queue-type": "quorum", "x-single-active-consumer": true},
            "message_stats": {
                "publish": 9, "publish_details": {"rate": 3.25},
                "deliver_get_details": {"rate": 1.0}, "ack_details": {"rate": 0.5}
            },
            "consumer_details": [
                {"consumer_tag": "amq.ctag-b", "active": false, "activity_status": "waiting",
                 "channel_details": {"connection_name": "10.0.0.6:4001 -> 10.0.0.1:5672",
                                     "number": 1, "peer_host": "10.0.0.6", "peer_port": 4001}},
                {"consumer_tag": "amq.ctag-a", "active": true, "activity_status": "single_active",
                 "channel_details": {"connection_name": "10.0.0.5:4000 -> 10.0.0.1:5672",
                                     "number": 3, "peer_host": "10.0.0.5", "peer_port": 4000,
                                     "node": "rabbit@a"}}
            ],
            "single_active_consumer_ctag": "amq.ctag-a"
        }));
        assert_eq!(s.single_active_consumer(), Some(true));
        assert_eq!(s.single_active_consumer_tag(), Some("amq.ctag-a"));
        let row = ShardRow::from_stats(0, "q.shard.0", true, &s);
        assert_eq!(row.ready, Some(7));
        assert_eq!(row.unacked, Some(2));
        assert_eq!(row.consumers, 2);
        assert_eq!(row.publish_rate, Some(3.25));
        assert_eq!(row.deliver_rate, Some(1.0));
        assert_eq!(row.ack_rate, Some(0.5));
        assert_eq!(row.active.label(), "10.0.0.5:4000 ch 3");
        assert_eq!(row.active.to_json()["consumer_tag"], "amq.ctag-a");
        assert_eq!(row.active.to_json()["node"], "rabbit@a");

        // A throughput shard: everyone competes.
        let row = ShardRow::from_stats(0, "q.shard.0", false, &s);
        assert_eq!(row.active, Active::Competing);
        assert_eq!(row.active.label(), "all (competing)");

        // Nobody marked active yet, but the queue's record names the tag (RabbitMQ 4.x key).
        let s = stats(json!({
            "name": "q.shard.1", "consumers": 1,
            "consumer_details": [{"consumer_tag": "amq.ctag-z", "active": false,
                                  "activity_status": "waiting", "channel_details": []}],
            "single_active_consumer_tag": "amq.ctag-z"
        }));
        let row = ShardRow::from_stats(1, "q.shard.1", true, &s);
        assert_eq!(row.active.label(), "amq.ctag-z");
        // Consumers, but none known active.
        let s = stats(json!({"name": "q.shard.1", "consumers": 1}));
        assert_eq!(
            ShardRow::from_stats(1, "q.shard.1", true, &s).active,
            Active::Unknown
        );
        // No consumer at all.
        let s = stats(json!({"name": "q.shard.1", "consumers": 0, "consumer_details": []}));
        assert_eq!(
            ShardRow::from_stats(1, "q.shard.1", false, &s)
                .active
                .label(),
            "none"
        );
    }

    #[test]
    fn rates_and_counts_the_api_has_not_sampled_are_unknown_not_zero() {
        // A new queue: no counts, no message_stats (or the API's empty list for it).
        for s in [
            json!({"name": "q"}),
            json!({"name": "q", "message_stats": []}),
            json!({"name": "q", "message_stats": {"publish_details": {"rate": "n/a"}}}),
        ] {
            let row = ShardRow::from_stats(0, "q", true, &stats(s));
            assert_eq!(row.ready, None);
            assert_eq!(row.publish_rate, None);
            assert_eq!(rate(row.publish_rate), "-");
            assert_eq!(count(row.ready), "?");
        }
        assert_eq!(rate(Some(0.0)), "0.0");
        assert_eq!(rate(Some(12.345)), "12.3");
        let mut c = channel(&[3, 4]);
        c.shards[1].ready = None;
        c.shards[0].publish_rate = Some(1.5);
        let t = c.totals();
        assert_eq!((t.ready, t.partial), (3, true));
        assert_eq!(t.publish_rate, Some(1.5));
        assert_eq!(t.ack_rate, None);
    }

    #[test]
    fn the_table_lines_up_and_ends_with_the_total_the_roll_and_the_hint() {
        let mut c = channel(&[40, 0, 500]);
        c.shards[0].consumers = 2;
        c.shards[0].publish_rate = Some(2.0);
        c.shards[0].active = Active::Consumer(ActiveConsumer {
            peer: Some("10.0.0.5:4000".into()),
            connection: None,
            channel: Some(2),
            consumer_tag: "t".into(),
            node: None,
        });
        c.workers = Some(Roll {
            queue: "q.workers".into(),
            consumers: Some(2),
        });
        let report = Report {
            management_url: "http://127.0.0.1:15672".into(),
            at: "2025-01-01T00:00:00Z".into(),
            channels: vec![c],
        };
        let text = report.render();
        let expected = "\
q: ordered, 3 shards behind q.shards (key header:x-courier-key)
SHARD      READY  UNACKED  PUB/S  DELIVER/S  ACK/S  CONSUMERS  ACTIVE CONSUMER
q.shard.0     40        0    2.0          -      -          2  10.0.0.5:4000 ch 2
q.shard.1      0        0      -          -      -          0  none
q.shard.2    500        0      -          -      -          0  none
total        540        0    2.0          -      -
workers on the roll (q.workers): 2, sharing the 3 shards
hint: shard 2 holds 93% of the backlog: a hot key? see docs/ordering.md
";
        assert_eq!(text, expected);

        let j = report.to_json();
        assert_eq!(j["channels"][0]["total"]["ready"], 540);
        assert_eq!(j["channels"][0]["shards"][2]["ready"], 500);
        assert_eq!(
            j["channels"][0]["shards"][0]["active_consumer"]["peer"],
            "10.0.0.5:4000"
        );
        assert_eq!(
            j["channels"][0]["shards"][1]["active_consumer"],
            serde_json::Value::Null
        );
        assert_eq!(j["channels"][0]["workers"]["consumers"], 2);
        assert_eq!(j["channels"][0]["hot_shard"]["index"], 2);
    }

    #[test]
    fn channels_are_the_sharded_queues_or_the_one_named_with_or_without_the_prefix() {
        let topo = Topology::parse(TOPOLOGY, "t.toml", "staging.").expect("topology");
        let all = select_channels(&topo, None).expect("sharded");
        assert_eq!(
            all.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
            ["staging.notifications.email"]
        );
        for given in ["notifications.email", "staging.notifications.email"] {
            let one = select_channels(&topo, Some(given)).expect("named");
            assert_eq!(one[0].name, "staging.notifications.email");
        }
        let err = select_channels(&topo, Some("notifications.sms"))
            .expect_err("not sharded")
            .to_string();
        assert!(
            err.contains("'staging.notifications.sms' is not sharded"),
            "{err}"
        );
        assert!(
            err.contains("sharded queues in t.toml: staging.notifications.email"),
            "{err}"
        );
        let err = select_channels(&topo, Some("nope"))
            .expect_err("unknown")
            .to_string();
        assert!(
            err.contains("no work queue 'staging.nope' in t.toml"),
            "{err}"
        );

        let plain = Topology::parse(courier::topology::BUILT_IN_DEFAULT, "default.toml", "")
            .expect("default topology");
        let err = select_channels(&plain, None)
            .expect_err("none sharded")
            .to_string();
        assert!(
            err.contains("default.toml declares no sharded queue"),
            "{err}"
        );
        let err = select_channels(&plain, Some("notifications.email"))
            .expect_err("not sharded")
            .to_string();
        assert!(
            err.contains("default.toml declares no sharded queue"),
            "{err}"
        );
    }
}
