//! Command-line arguments of `courier-dlq` and their validation into configuration.
//!
//! Raw arguments (clap types) and validated values are kept apart: a filter, a rate or a queue
//! name is checked once, before anything touches the broker, and a bad one is a usage error
//! (exit code 2) naming the flag, the value and the expected form.

use crate::error::UsageError;
use crate::filter::{Filter, FilterError, FilterSpec};
use clap::{Args, Parser, Subcommand};
use courier::amqp::{AmqpUrl, DEFAULT_AMQP_URL};
use courier::topology::{Topology, TopologySource, BUILT_IN_NOTICE};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

/// courier-dlq: inspect, export and replay Courier's dead letters without losing one.
///
/// Inspection (stats, list, show, --dry-run) never removes or reorders a message: it holds at
/// most --limit messages unacknowledged and gives them all back in place. A pass (replay,
/// export, purge) handles only the messages that were in the queue when it started, so a
/// replay can never loop; every copy is publisher-confirmed before the original is acked, so a
/// crash or a lost connection at any point loses nothing (at worst a message exists twice).
///
/// Typical session:
///   courier-dlq stats                               what is there, grouped by reason and error
///   courier-dlq list --reason max-attempts          one row per message
///   courier-dlq show 8f3c2a...                      every property, header and the body
///   courier-dlq edit 8f3c2a...                      fix it in $EDITOR (then replay it)
///   courier-dlq replay --error-contains 503 --dry-run
///   courier-dlq replay --error-contains 503 --rate 200/s
///   courier-dlq export --out dlq.jsonl --remove     archive, then import dlq.jsonl later
///   courier-dlq groups                              failures grouped by cause, each with an id
///   courier-dlq replay --group 96da919e             act on one group
///   courier-dlq audit                               who changed the queue, when, what moved
///
/// Filters (every selecting command): --reason, --from-queue, --error-contains, --older-than,
/// --newer-than, --message-id, --header K=V, --group ID. Values of one flag are alternatives
/// (repeat the flag or separate with commas); different flags must all match.
///
/// Exit codes: 0 done, 1 failed (or some messages could not be moved), 2 usage error.
#[derive(Debug, Parser)]
#[command(
    name = "courier-dlq",
    version,
    verbatim_doc_comment,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command understands.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Broker URL. The password is never printed: logs and errors show `user:***@host`.
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, global = true, hide_env_values = true, hide_default_value = true)]
    pub amqp_url: String,
    /// Topology file; the dead-letter queue is read from it unless --queue is given.
    /// Default: topology/notifications.toml in the working directory if it is there, else the
    /// copy of it built into this binary.
    // No clap default: "not given" must stay distinguishable from "given", so that a file the
    // user names is never replaced by the built-in copy.
    #[arg(long, env = "COURIER_TOPOLOGY", value_name = "FILE", global = true)]
    pub topology: Option<PathBuf>,
    /// Prefix of every exchange and queue name (e.g. `staging.`), as for `courier`.
    #[arg(
        long,
        env = "COURIER_PREFIX",
        default_value = "",
        global = true,
        hide_default_value = true
    )]
    pub prefix: String,
    /// The dead-letter queue to work on. Default: the topology's (notifications.dlq, prefixed).
    /// A name from the topology file gets the --prefix added.
    #[arg(long, env = "COURIER_DLQ", global = true)]
    pub queue: Option<String>,
    /// Where every command that changes the dead-letter queue (replay, edit, export --remove,
    /// import, purge) appends its audit line. Default: $XDG_STATE_HOME/courier/dlq-audit.jsonl, else
    /// ~/.local/state/courier/dlq-audit.jsonl.
    #[arg(
        long,
        env = "COURIER_DLQ_AUDIT_LOG",
        value_name = "FILE",
        global = true
    )]
    pub audit_log: Option<PathBuf>,
    /// Also publish each audit line (confirmed) to this queue, e.g. notifications.audit (not
    /// prefixed; declare it yourself: a durable queue the trail can be read from).
    #[arg(
        long,
        env = "COURIER_DLQ_AUDIT_QUEUE",
        value_name = "QUEUE",
        global = true
    )]
    pub audit_queue: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Stats(StatsArgs),
    Groups(GroupsArgs),
    List(ListArgs),
    Show(ShowArgs),
    Edit(EditArgs),
    // Boxed: its flags make it several times the size of the others.
    Replay(Box<ReplayArgs>),
    Export(ExportArgs),
    Import(ImportArgs),
    Purge(PurgeArgs),
    Audit(AuditArgs),
    Console(ConsoleArgs),
}

/// A web page for the fleet and its dead letters: queue depths and rates, the failure groups,
/// every message, and replay / export / purge with a preview first.
///
/// Runs the same code as the other commands, with the same guarantees: inspection gives every
/// message back in place, a pass takes only what was there when it started and acks nothing
/// before its copy is safe, every action goes to the audit trail (as "USER via console").
///
/// Security: it listens on 127.0.0.1 unless told otherwise; every request needs the token
/// (COURIER_CONSOLE_TOKEN or --token, else one generated now and printed once, in the URL to
/// open); actions are POSTs with a CSRF token; --read-only hides and refuses every action.
///
///   courier-dlq console
///   courier-dlq console --prefix demo. --read-only
///   COURIER_CONSOLE_TOKEN=... courier-dlq console --listen 0.0.0.0:8080   (behind TLS!)
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ConsoleArgs {
    /// Address to listen on. Anything but a loopback address makes the console reachable from
    /// other machines, with the token as its only protection: put TLS in front of it.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Show, never change: no action buttons, and every action request is refused.
    #[arg(long)]
    pub read_only: bool,
    /// The token every request must carry (at least 16 characters). Default: a random one,
    /// printed once at start in the URL to open.
    #[arg(long, env = "COURIER_CONSOLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Who the audit trail names for the console's actions (as "USER via console").
    /// Default: $USER, else $LOGNAME.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Management API base URL, for the fleet's numbers (RabbitMQ's own: nothing is counted
    /// by consuming). Uses the AMQP credentials. Default: the AMQP host, port 15672, http.
    #[arg(long, env = "COURIER_MANAGEMENT_URL", value_name = "URL")]
    pub management_url: Option<String>,
    /// How often the fleet's numbers are read; the chart keeps the last hour of them.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub refresh: Duration,
    /// Dead letters a page examines at most (held unacknowledged, then given back in place;
    /// at most 65535); a larger queue is sampled, and the page says so.
    #[arg(long, default_value_t = 10_000)]
    pub limit: u64,
}

/// Print the audit trail: one line for every command that changed the dead-letter queue
/// (replay, edit, export --remove, import, purge), with who, when, the command line (passwords
/// redacted), the filter, what moved and the outcome.
///
///   courier-dlq audit
///   courier-dlq audit --json --limit 1000 | jq 'select(.command == "purge")'
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct AuditArgs {
    /// Show the last N lines.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// The lines as they are stored, one JSON object each.
    #[arg(long)]
    pub json: bool,
}

/// Which messages a command selects.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Only this reason: max-attempts, permanent, malformed, crash-loop, rejected, expired
    /// (x-courier-reason), or the broker's maxlen, delivery_limit (x-death).
    #[arg(long, value_name = "REASON", help_heading = "Filters")]
    pub reason: Vec<String>,
    /// Only messages that failed in this work queue (x-courier-original-queue, or the queue in
    /// x-death). With or without the --prefix.
    #[arg(long, value_name = "QUEUE", help_heading = "Filters")]
    pub from_queue: Vec<String>,
    /// Only messages whose last error (x-courier-error) contains this text (case-insensitive).
    #[arg(long, value_name = "TEXT", help_heading = "Filters")]
    pub error_contains: Vec<String>,
    /// Only messages dead-lettered at least this long ago, e.g. 30m, 2h, 7days. The time is
    /// x-courier-dead-lettered-at, else the x-death time, else the timestamp property.
    #[arg(long, value_name = "DURATION", help_heading = "Filters")]
    pub older_than: Option<String>,
    /// Only messages dead-lettered less than this long ago.
    #[arg(long, value_name = "DURATION", help_heading = "Filters")]
    pub newer_than: Option<String>,
    /// Only this message id (repeatable).
    #[arg(long, value_name = "ID", help_heading = "Filters")]
    pub message_id: Vec<String>,
    /// Only messages whose header NAME has this value (strings, numbers, true/false).
    #[arg(long, value_name = "NAME=VALUE", help_heading = "Filters")]
    pub header: Vec<String>,
    /// Only this failure group: its id as `courier-dlq groups` lists it (8 hex digits; the same
    /// cause has the same id in every run and on every machine).
    #[arg(long, value_name = "ID", help_heading = "Filters")]
    pub group: Vec<String>,
}

impl FilterArgs {
    /// The flags given, as JSON (for the audit trail).
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        let mut list = |k: &str, v: &[String]| {
            if !v.is_empty() {
                m.insert(k.to_owned(), serde_json::json!(v));
            }
        };
        list("reason", &self.reason);
        list("from_queue", &self.from_queue);
        list("error_contains", &self.error_contains);
        list("message_id", &self.message_id);
        list("header", &self.header);
        list("group", &self.group);
        if let Some(d) = &self.older_than {
            m.insert("older_than".to_owned(), serde_json::json!(d));
        }
        if let Some(d) = &self.newer_than {
            m.insert("newer_than".to_owned(), serde_json::json!(d));
        }
        serde_json::Value::Object(m)
    }

    /// Validates the flags.
    ///
    /// # Errors
    /// [`FilterError`] naming the flag, the value and the expected form.
    pub fn build(&self, prefix: &str) -> Result<Filter, FilterError> {
        Filter::parse(
            &FilterSpec {
                reason: self.reason.clone(),
                from_queue: self.from_queue.clone(),
                error_contains: self.error_contains.clone(),
                older_than: self.older_than.clone(),
                newer_than: self.newer_than.clone(),
                message_id: self.message_id.clone(),
                header: self.header.clone(),
                group: self.group.clone(),
            },
            prefix,
        )
    }
}

/// Count the dead letters, oldest and newest, grouped by reason, original queue and error.
///
/// Looks at the first --limit messages (and says so when the queue holds more); every message
/// stays where it was.
///   courier-dlq stats
///   courier-dlq stats --from-queue notifications.email --json
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct StatsArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    /// Examine at most this many messages (held unacknowledged, then given back; at most 65535).
    #[arg(long, default_value_t = 10_000)]
    pub limit: u64,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Management API base URL, for the count of unacknowledged messages (AMQP counts only the
    /// ready ones). Uses the AMQP credentials. Default: the AMQP host, port 15672, http; when it
    /// does not answer, the count is shown as unknown.
    #[arg(long, env = "COURIER_MANAGEMENT_URL", value_name = "URL")]
    pub management_url: Option<String>,
}

/// The dead letters grouped by cause, each group with a stable id to act on.
///
/// A cause is the reason and the normalised error: an HTTP status (`HTTP 503`), a transport
/// error with the endpoint's host (`POST https://api.example.com: connection refused`), or the
/// error's first line with quoted values, UUIDs, hex strings, ids and numbers masked. The id
/// (8 hex digits) is the same for the same cause in every run and on every machine, so
/// `--group ID` selects a group on every selecting command. Looks at the first --limit
/// messages; every message stays where it was.
///   courier-dlq groups
///   courier-dlq replay --group 96da919e --dry-run
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct GroupsArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    /// Examine at most this many messages (held unacknowledged, then given back; at most 65535).
    #[arg(long, default_value_t = 10_000)]
    pub limit: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One row per dead letter: id, age, reason, original queue, attempts, error, body size.
///
///   courier-dlq list --reason permanent --limit 50
///   courier-dlq list --json | jq .summary.error        (one JSON object a line, with headers
///                                                        and body, in the export format)
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ListArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    /// Examine at most this many messages (held unacknowledged, then given back; at most 65535).
    #[arg(long, default_value_t = 1000)]
    pub limit: u64,
    /// One JSON object a line (the export format, with a `summary`), instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Everything about one message: properties, every header, the body.
///
/// Headers include x-courier-* and the broker's x-death history, decoded; the body is
/// pretty-printed when it is JSON. The message stays where it is.
///
///   courier-dlq show 8f3c2a9e61d04f0c
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ShowArgs {
    /// The message_id to show.
    pub message_id: String,
    /// Search at most this many messages from the head of the queue (at most 65535).
    #[arg(long, default_value_t = 10_000)]
    pub limit: u64,
    /// Print the message in the export format instead.
    #[arg(long)]
    pub json: bool,
}

/// Fix one dead letter in $EDITOR, then put the fixed copy back in the dead-letter queue.
///
/// Writes the body (pretty-printed when it is JSON) to a temporary file and opens it with
/// $EDITOR (else $VISUAL, else vi); with --headers, a second file holds the headers as a JSON
/// object. When the editor exits, the result is checked (a JSON body must stay JSON; header
/// values must be strings, integers or true/false) and the dead letter is replaced: the edited
/// copy is published to the dead-letter queue and confirmed BEFORE the original is acked, with
/// the same message id and x-courier-edited incremented. A crash leaves the original, or both;
/// never neither. The copy goes to the tail of the queue. Nothing changes when the files are
/// unchanged, or when the edit is invalid (the error gives line and column).
///
///   courier-dlq edit 8f3c2a9e61d04f0c
///   EDITOR=nano courier-dlq edit 8f3c2a9e61d04f0c --headers
///   courier-dlq replay --message-id 8f3c2a9e61d04f0c      then send it on
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct EditArgs {
    /// The message_id of the dead letter to edit.
    pub message_id: String,
    /// Also edit the headers (a JSON object; x-courier-* may be changed too: they are what
    /// `replay` reads for the destination and what `stats`/`groups` group by).
    #[arg(long)]
    pub headers: bool,
    /// Search at most this many messages from the head of the queue (at most 65535).
    #[arg(long, default_value_t = 10_000)]
    pub limit: u64,
}

/// Options of a pass (replay, export, purge).
#[derive(Debug, Clone, Args)]
pub struct PassArgs {
    /// Act on at most this many selected messages (the others stay, in order).
    #[arg(long)]
    pub limit: Option<u64>,
    /// Show what would happen, change nothing (inspection: examines up to 65535 messages).
    #[arg(long)]
    pub dry_run: bool,
    /// At most this many messages a second (or N/m, N/h), e.g. --rate 200/s.
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate: Option<Rate>,
    /// Publishes awaiting their broker confirm at once.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u16).range(1..=8192))]
    pub window: u16,
}

/// Send dead letters back to where they came from, or to --to-queue, with attempts reset.
///
/// The destination is x-courier-original-exchange / -routing-key, or for messages the broker
/// dead-lettered itself the exchange and routing key in x-death. The copy keeps the message's
/// id, priority, headers and body; it loses x-courier-attempts, -reason, -error, -first-failed-at,
/// -dead-lettered-at, -redeliveries and x-death, and gets x-courier-replayed incremented. Each
/// copy is confirmed (mandatory) before the dead letter is acked. A message whose destination no
/// longer routes stays in the dead-letter queue and is reported (exit code 1).
///
///   courier-dlq replay --dry-run
///   courier-dlq replay --reason max-attempts --error-contains "HTTP 503" --rate 100/s
///   courier-dlq replay --message-id 8f3c2a9e --to-queue notifications.email
///
/// Fix the copies on the way (the dead letters are not changed; try with --dry-run first,
/// which shows a before/after of the first 3 messages):
///   courier-dlq replay --error-contains "invalid address" --transform '.to |= ascii_downcase'
///   courier-dlq replay --from-queue notifications.email --set-routing-key sms --set-header tenant=beta
///
/// After an outage, replay a group with a canary: 10 first, watched for 2 minutes; then the
/// rest, ramping up, stopping by itself (exit code 3) if over 20 % of what it replayed fails
/// again. Run the same command again after any interruption: its journal keeps it from
/// replaying anything twice.
///   courier-dlq replay --group 3f9a1c2b --canary 10 --canary-wait 2m --ramp '10/s..500/s over 2m'
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub pass: PassArgs,
    /// Publish to this queue (default exchange) instead of the original destination.
    #[arg(long, value_name = "QUEUE", conflicts_with = "set_routing_key")]
    pub to_queue: Option<String>,
    #[command(flatten)]
    pub fixes: FixArgs,
    #[command(flatten)]
    pub smart: SmartArgs,
}

/// A replay that stops by itself when replayed messages fail again, and that an interrupted
/// run resumes (see docs/dlq.md, "Smart replay").
#[derive(Debug, Clone, Default, Args)]
pub struct SmartArgs {
    /// Replay N selected messages first, then watch them for --canary-wait: go on only if at
    /// most --max-failure-rate of them came back to the dead-letter queue (failed again); else
    /// stop with exit code 3, the rest untouched.
    #[arg(long, value_name = "N", help_heading = "Smart replay",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub canary: Option<u64>,
    /// How long a replayed message is watched: one that comes back to the dead-letter queue
    /// within it failed; one that does not counts as delivered. Make it longer than a failing
    /// message takes through the retry tiers (the replay warns when the topology's take longer).
    #[arg(long, value_name = "DURATION", default_value = "30s", help_heading = "Smart replay",
          value_parser = humantime::parse_duration)]
    pub canary_wait: std::time::Duration,
    /// Stop (exit code 3) when more than this share of the replayed messages came back, during
    /// the canary or after it. 0 to 1 (0.2 = 20 %). Default 0.2 with --canary; without
    /// --canary it turns the watch on by itself.
    #[arg(long, value_name = "SHARE", help_heading = "Smart replay", value_parser = parse_share)]
    pub max_failure_rate: Option<f64>,
    /// After the canary, go from one rate to another over a time, then hold it, e.g.
    /// --ramp '10/s..500/s over 2m'. Instead of --rate.
    #[arg(long, value_name = "FROM..TO over DURATION", help_heading = "Smart replay",
          value_parser = crate::send::parse_ramp, conflicts_with = "rate")]
    pub ramp: Option<crate::send::Ramp>,
    /// The replay's journal: what it moved, so that running it again after an interruption
    /// (Ctrl-C, a kill) replays none of that twice. Deleted when a replay ends by itself.
    /// Default: $XDG_STATE_HOME/courier/replay/<queue>.jsonl (else under ~/.local/state).
    #[arg(
        long,
        value_name = "FILE",
        env = "COURIER_DLQ_JOURNAL",
        help_heading = "Smart replay"
    )]
    pub journal: Option<PathBuf>,
    /// Ignore (and delete) an interrupted replay's journal: what it moved and what came back
    /// since is replayed like any other dead letter.
    #[arg(long, help_heading = "Smart replay")]
    pub fresh: bool,
}

impl SmartArgs {
    /// Whether the failure watch runs.
    pub fn watching(&self) -> bool {
        self.canary.is_some() || self.max_failure_rate.is_some()
    }

    /// The flags given, as JSON (for the audit trail's filter).
    pub fn to_json(&self) -> Vec<(&'static str, serde_json::Value)> {
        let mut v = Vec::new();
        if let Some(n) = self.canary {
            v.push(("canary", serde_json::json!(n)));
        }
        if self.watching() {
            v.push((
                "canary_wait",
                serde_json::json!(humantime::format_duration(self.canary_wait).to_string()),
            ));
            v.push((
                "max_failure_rate",
                serde_json::json!(self.max_failure_rate.unwrap_or(DEFAULT_MAX_FAILURE_RATE)),
            ));
        }
        if let Some(r) = &self.ramp {
            v.push(("ramp", serde_json::json!(r.to_string())));
        }
        v
    }
}

/// `--max-failure-rate` when `--canary` is given alone.
pub const DEFAULT_MAX_FAILURE_RATE: f64 = 0.2;

/// Parses a share between 0 and 1.
///
/// # Errors
/// What is expected.
pub fn parse_share(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?}: expected a share from 0 to 1, e.g. 0.2 for 20 %"
        )),
    }
}

/// Changes `replay` makes to every copy it publishes (the dead letter itself is not changed; a
/// copy that cannot be made stays in the queue and is reported).
#[derive(Debug, Clone, Default, Args)]
pub struct FixArgs {
    /// Set header NAME on every copy (repeatable). VALUE as for --header: true/false, an
    /// integer, else a string. E.g. --set-header tenant=beta.
    #[arg(long, value_name = "NAME=VALUE", help_heading = "Fixes")]
    pub set_header: Vec<String>,
    /// Publish every copy to its original exchange with this routing key instead of its own
    /// (e.g. `sms` to send failed emails as SMS). Not with --to-queue.
    #[arg(long, value_name = "KEY", help_heading = "Fixes")]
    pub set_routing_key: Option<String>,
    /// A jq program applied to each JSON body; the copy gets its result, e.g.
    /// --transform '.to |= ascii_downcase' or '.to = "ops@example.com"'. Compiled before the
    /// pass (an error is a usage error). A message whose body is not JSON, on which the program
    /// fails, or for which it yields no value or several, stays in the queue and is reported.
    #[arg(long, value_name = "JQ", help_heading = "Fixes")]
    pub transform: Option<String>,
}

impl FixArgs {
    /// Validates the flags (the program is compiled here, once).
    ///
    /// # Errors
    /// A usage error naming the flag.
    pub fn build(&self) -> Result<crate::fix::Fixes, UsageError> {
        let set_headers = self
            .set_header
            .iter()
            .map(|s| crate::fix::set_header(s))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(k) = &self.set_routing_key {
            if k.len() > 255 {
                return Err(UsageError(format!(
                    "--set-routing-key: {} bytes; a routing key holds at most 255",
                    k.len()
                )));
            }
        }
        let transform =
            match &self.transform {
                None => None,
                Some(code) => Some(crate::fix::Transform::compile(code).map_err(|e| {
                    UsageError(format!("--transform {code:?} does not compile: {e}"))
                })?),
            };
        Ok(crate::fix::Fixes {
            set_headers,
            routing_key: self.set_routing_key.clone(),
            transform,
        })
    }

    /// The flags given, as JSON (for the audit trail's filter).
    pub fn to_json(&self) -> Vec<(&'static str, serde_json::Value)> {
        let mut v = Vec::new();
        if !self.set_header.is_empty() {
            v.push(("set_header", serde_json::json!(self.set_header)));
        }
        if let Some(k) = &self.set_routing_key {
            v.push(("set_routing_key", serde_json::json!(k)));
        }
        if let Some(t) = &self.transform {
            v.push(("transform", serde_json::json!(t)));
        }
        v
    }
}

/// Write dead letters to a JSONL file, exactly (bytes, properties, header types).
///
/// With --remove a message is acked only after its line is written and the file fsynced;
/// without it, every message stays in the queue, in order. `import` reads the file back.
///
///   courier-dlq export --out dlq-2026-11-24.jsonl --remove --older-than 7days
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ExportArgs {
    /// The file to write (one JSON object a line). Refused if it exists, unless --append.
    #[arg(long, value_name = "FILE.jsonl")]
    pub out: PathBuf,
    /// Remove exported messages from the queue (after they are safely on disk).
    #[arg(long)]
    pub remove: bool,
    /// Add to an existing file (an unfinished last line left by a killed export is cut off).
    #[arg(long)]
    pub append: bool,
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub pass: PassArgs,
}

/// Publish the messages of an export file, with confirms, exactly as they were exported.
///
/// Default destination: the dead-letter queue (--queue, or the topology's); --to-queue sends
/// them elsewhere. Every line is checked before anything is published.
///
///   courier-dlq import dlq-2026-11-24.jsonl
///   courier-dlq import dlq.jsonl --to-queue notifications.dlq.review
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ImportArgs {
    /// A file written by `courier-dlq export` (or `list --json`).
    pub file: PathBuf,
    /// Publish into this queue instead of the dead-letter queue.
    #[arg(long, value_name = "QUEUE")]
    pub to_queue: Option<String>,
    /// At most this many messages a second (or N/m, N/h).
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate: Option<Rate>,
    /// Publishes awaiting their broker confirm at once.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u16).range(1..=8192))]
    pub window: u16,
}

/// Delete dead letters for good (the selected ones; the others stay, in order).
///
///   courier-dlq purge --reason malformed --dry-run
///   courier-dlq purge --reason malformed --yes
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub pass: PassArgs,
    /// Really delete. Without it, purge refuses (use --dry-run to see what it would delete).
    #[arg(long)]
    pub yes: bool,
}

/// A rate limit: `count` messages every `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Messages per period.
    pub count: NonZeroU32,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// Messages per second, for messages.
    pub fn per_second(&self) -> f64 {
        f64::from(self.count.get()) / self.per.as_secs_f64()
    }
}

/// Parses `200/s`, `200`, `30/m`, `1000/h`.
///
/// # Errors
/// What the expected form is.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let expected = "expected N/s, N/m or N/h with N a whole number above 0, e.g. 200/s";
    let (n, unit) = s.trim().split_once('/').unwrap_or((s.trim(), "s"));
    let per = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return Err(format!("{s:?}: unknown unit; {expected}")),
    };
    let count = n
        .trim()
        .replace('_', "")
        .parse::<u32>()
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| format!("{s:?}: {expected}"))?;
    Ok(Rate { count, per })
}

impl Global {
    /// The broker URL.
    ///
    /// # Errors
    /// A usage error for a URL that does not parse (redacted).
    pub fn url(&self) -> Result<AmqpUrl, UsageError> {
        self.amqp_url
            .parse::<AmqpUrl>()
            .map_err(|e| UsageError(format!("--amqp-url / AMQP_URL: {e}")))
    }

    /// The topology, if it can be read; `Err` keeps the reason for messages. Without
    /// --topology: the default file, else the built-in default, which is said once on stderr
    /// (this is called several times a run).
    pub fn topology(&self) -> Result<Topology, String> {
        static NOTICE: Once = Once::new();
        let source = TopologySource::resolve(self.topology.as_deref());
        if source.is_built_in() {
            NOTICE.call_once(|| eprintln!("note: {BUILT_IN_NOTICE}"));
        }
        source.load(&self.prefix).map_err(|e| e.to_string())
    }

    /// The dead-letter queue: --queue (prefixed when it names a topology queue without the
    /// prefix), else the topology's.
    ///
    /// # Errors
    /// A usage error when there is no --queue and the topology cannot be read.
    pub fn dlq(&self) -> Result<String, UsageError> {
        let topology = self.topology();
        match &self.queue {
            Some(q) => Ok(resolve_queue(topology.as_ref().ok(), &self.prefix, q)),
            None => topology.map(|t| t.dead_letter_queue).map_err(|e| {
                UsageError(format!(
                    "no dead-letter queue: pass --queue NAME, or a readable --topology ({e})"
                ))
            }),
        }
    }

    /// A queue named on the command line (--to-queue), resolved like --queue.
    pub fn queue_name(&self, q: &str) -> String {
        resolve_queue(self.topology().ok().as_ref(), &self.prefix, q)
    }
}

/// `q` itself if the topology declares it (or there is no prefix), the prefixed name if the
/// topology declares that, else `q` as given (any queue may be named).
pub fn resolve_queue(topology: Option<&Topology>, prefix: &str, q: &str) -> String {
    let Some(t) = topology else {
        return q.to_owned();
    };
    let prefixed = format!("{prefix}{q}");
    if t.queue(q).is_none() && !prefix.is_empty() && t.queue(&prefixed).is_some() {
        prefixed
    } else {
        q.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn rates_parse() {
        let r = parse_rate("200/s").expect("ok");
        assert_eq!((r.count.get(), r.per), (200, Duration::from_secs(1)));
        assert_eq!(parse_rate("50").expect("ok").per, Duration::from_secs(1));
        assert_eq!(parse_rate("30/m").expect("ok").per, Duration::from_secs(60));
        assert!((parse_rate("3600/h").expect("ok").per_second() - 1.0).abs() < 1e-9);
        assert!(parse_rate("0/s").expect_err("zero").contains("e.g. 200/s"));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10/d")
            .expect_err("unit")
            .contains("unknown unit"));
    }

    #[test]
    fn queue_names_get_the_prefix_only_when_the_topology_says_so() {
        let t = Topology::load(
            std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../topology/notifications.toml"
            )),
            "s.",
        )
        .expect("default topology");
        assert_eq!(
            resolve_queue(Some(&t), "s.", "notifications.dlq"),
            "s.notifications.dlq"
        );
        assert_eq!(
            resolve_queue(Some(&t), "s.", "s.notifications.dlq"),
            "s.notifications.dlq"
        );
        assert_eq!(resolve_queue(Some(&t), "s.", "elsewhere"), "elsewhere");
        assert_eq!(
            resolve_queue(None, "s.", "notifications.dlq"),
            "notifications.dlq"
        );
    }
}
