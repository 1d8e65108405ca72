//! `courier-bench`: Courier's throughput as a ratio of this broker's limit, measured in one run.
//!
//! On one machine the broker is the bottleneck, so absolute rates say more about the machine
//! than about Courier. The benchmark therefore runs the fastest straightforward plain-lapin
//! client ("the limit") and Courier against the same local broker, alternating, for several
//! rounds, and reports each ratio within a round and the median over rounds. Every scenario
//! uses persistent 512-byte messages on durable priority queues, publisher confirms and manual
//! acks, counts every message id (lost ones fail the run) and cleans up its queues.
//!
//! ```text
//! cargo run --release -p courier-bench -- --messages 100000 --rounds 3 --out docs/benchmarks/results.json
//! cargo run --release -p courier-bench -- chart --in docs/benchmarks/results.json --out docs/benchmarks/chart.svg
//! cargo run -p courier-bench -- --smoke      # CI: a few hundred messages, every scenario once
//! cargo run --release -p courier-bench -- --only cluster --messages 20000   # needs scripts/rabbitmq-cluster up
//! cargo run --release -p courier-bench -- --only shards --messages 50000    # needs rabbitmq_consistent_hash_exchange
//! ```
//!
//! # Layout
//! - [`plan`]: the shared environment, the baseline scenarios, the alternating rounds.
//! - [`raw`]: the plain-lapin publisher and consumer (the baseline, and the backlog fills).
//! - [`courier_lib`]: Courier's Publisher and Worker (success, retry, HTTP paths).
//! - [`dlq`]: `courier-dlq replay` / `export` timed as processes.
//! - [`peer`]: the Python pika consumer.
//! - [`memory`]: the `courier work` binary's peak RSS under a large backlog.
//! - [`binary`]: the `courier work` binary draining a backlog against raw lapin at prefetch
//!   200 and 500; and (the `traces` group) without and with a trace exporter whose collector
//!   is dead.
//! - [`cluster`]: the `courier work` binary end to end against raw lapin on a 3-node cluster
//!   with quorum queues (opt-in: only with `--only cluster`).
//! - [`shards`]: the `courier work` binary end to end against raw lapin on one channel spread
//!   over 1, 2 and 4 shard queues, plus 4 ordered shards (opt-in: only with `--only shards`).
//! - [`payload`], [`tally`]: the message body with its stamp; counting ids and latency.
//! - [`cpu`]: client and broker CPU per message, from `/proc`.
//! - [`broker`]: our prefixed objects on the shared broker, and their clean-up.
//! - [`sink`]: the HTTP scenario's local endpoint.
//! - [`report`], [`chart`]: the JSON, the tables and the SVG.

mod binary;
mod broker;
mod chart;
mod cluster;
mod courier_lib;
mod cpu;
mod dlq;
mod env;
mod memory;
mod payload;
mod peer;
mod plan;
mod raw;
mod report;
mod shards;
mod sink;
mod tally;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use courier::amqp::{AmqpUrl, DEFAULT_AMQP_URL};
use courier::topology::Topology;
use env::Env;
use plan::Selection;
use report::{Machine, NotMeasured, Params, Results, SCHEMA};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The default topology, embedded: the benchmark measures the shape users deploy.
const MAIN_TOPOLOGY: &str = include_str!("../../topology/notifications.toml");
/// The retry path's topology (a 10 ms first tier).
const RETRY_TOPOLOGY: &str = include_str!("../topology/retry.toml");

/// courier-bench: Courier's throughput as a ratio of this broker's limit (raw lapin), in one run.
///
/// Runs raw lapin and Courier against the same broker, alternating, for --rounds rounds, and
/// prints medians and per-round ratios; writes everything as JSON (--out). Every message id is
/// counted: a lost message fails the run (exit 1).
///
/// Scenario groups (--only): baseline, courier, retry, http, dlq, peer, memory, binary, traces,
/// and two that run only when --only names them, so never in --smoke or a run without --only:
/// cluster (a 3-node RabbitMQ cluster with quorum queues) and shards (one channel over 1, 2
/// and 4 shard queues; needs the broker plugin rabbitmq_consistent_hash_exchange).
#[derive(Debug, Parser)]
#[command(
    name = "courier-bench",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Draw the results JSON as an SVG chart.
    Chart(ChartArgs),
}

#[derive(Debug, Args)]
struct ChartArgs {
    /// Results written by a run.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// The SVG to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Messages per scenario and round.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Rounds; baseline and Courier alternate within each, and the order flips every round.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Backlog for the memory scenario (the `courier work` binary, prefetch 1000); 0 skips it.
    /// [default: 1000000 for a full run (--messages 100000 or more), else 10 x --messages, so
    /// a quick run stays quick]
    #[arg(long)]
    memory_backlog: Option<u64>,
    /// CI mode: 300 messages, one round, every scenario except memory (and the Python peer
    /// only if pika imports) and cluster (unless --only cluster: it needs the cluster); no
    /// speed assertion, fails only on a lost message or an error.
    #[arg(long)]
    smoke: bool,
    /// Only these scenario groups (comma-separated): baseline, courier, retry, http, dlq,
    /// peer, memory, binary (the `courier work` binary against raw lapin, prefetch 200 and
    /// 500), traces (the binary's drain at prefetch 200 without a trace exporter and with one
    /// whose collector is dead, issue 18), cluster (the binary against raw lapin end to end on
    /// a 3-node cluster with quorum queues, see --cluster-url; opt-in: it runs only when named here, never by default nor
    /// in --smoke, and needs `scripts/rabbitmq-cluster up`), shards (the binary against raw
    /// lapin end to end on one channel spread over 1, 2 and 4 shard queues, and 4 ordered
    /// shards; opt-in like cluster; needs the plugin rabbitmq_consistent_hash_exchange).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write the results JSON [default: <target dir>/courier-bench/results.json].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Outstanding publisher confirms, for every publisher.
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// Prefetch of every consumer (Courier's default is 200).
    #[arg(long, default_value_t = 200)]
    prefetch: u16,
    /// Courier worker concurrency (its default is 64).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Give a scenario up when no message arrives for this many seconds.
    #[arg(long, default_value_t = 60)]
    stall_secs: u64,
    /// Broker URL.
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true, hide_default_value = true)]
    amqp_url: String,
    /// The cluster of the `cluster` group, its nodes comma-separated (as `scripts/rabbitmq-cluster
    /// env` prints AMQP_URL); separate from --amqp-url, which the other groups use. The group
    /// never starts it: when a node does not answer it fails at once, saying so [default: the
    /// three nodes of scripts/rabbitmq-cluster, amqp://guest:guest@127.0.0.1:5681/%2f, ...:5682,
    /// ...:5683]
    #[arg(long, env = "COURIER_BENCH_CLUSTER_URL", default_value = cluster::DEFAULT_URL, hide_env_values = true, hide_default_value = true)]
    cluster_url: String,
    /// Where the `courier` and `courier-dlq` binaries are [default: next to courier-bench].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Do not run `cargo build` for `courier` / `courier-dlq` first (use --bin-dir as is).
    #[arg(long)]
    no_build: bool,
}

const GROUPS: &[&str] = &[
    "baseline", "courier", "retry", "http", "dlq", "peer", "memory", "binary", "traces", "cluster",
    "shards",
];

/// Groups that run only when `--only` names them, so neither a run without `--only` nor
/// `--smoke` includes them: they need more than the broker of `--amqp-url` (the cluster), or
/// more of it than the other groups (shards: a plugin, and seven more scenarios per round).
const OPT_IN: &[&str] = &["cluster", "shards"];

impl RunArgs {
    fn wants(&self, group: &str) -> bool {
        (self.only.is_empty() && !OPT_IN.contains(&group)) || self.only.iter().any(|g| g == group)
    }
}

/// The repository root (the bench crate's parent), for `cargo build` and `git describe`.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// Builds `bin` of package `package` in our own profile, unless told not to; returns its path.
async fn binary(args: &RunArgs, package: &str, bin: &str) -> Result<PathBuf, String> {
    let dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
            .ok_or("cannot locate the benchmark's own directory")?,
    };
    if !args.no_build {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = tokio::process::Command::new(cargo);
        cmd.current_dir(repo_root())
            .args(["build", "--quiet", "-p", package, "--bin", bin]);
        if profile() == "release" {
            cmd.arg("--release");
        }
        let status = cmd.status().await.map_err(|e| format!("cargo: {e}"))?;
        if !status.success() {
            return Err(format!("`cargo build -p {package} --bin {bin}` failed"));
        }
    }
    let path = dir.join(bin);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{} is not built", path.display()))
    }
}

/// Output of a command, trimmed, if it succeeds.
fn command_output(program: &str, args: &[&str], dir: &Path) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `secs` since the epoch as RFC 3339 UTC (days-to-civil, Howard Hinnant's algorithm), to
/// avoid a date-time dependency for one timestamp.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn default_out() -> PathBuf {
    // target/<profile>/courier-bench -> target/courier-bench/results.json
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir)
        .join("courier-bench")
        .join("results.json")
}

/// Runs every round and the memory scenario; cleans up whatever happens.
async fn run(mut args: RunArgs) -> anyhow::Result<Results> {
    if args.smoke {
        args.messages = 300;
        args.rounds = 1;
        args.memory_backlog = Some(0);
        args.stall_secs = args.stall_secs.min(20);
    }
    let memory_backlog = args.memory_backlog.unwrap_or(if args.messages >= 100_000 {
        1_000_000
    } else {
        args.messages.saturating_mul(10).min(1_000_000)
    });
    for g in &args.only {
        anyhow::ensure!(
            GROUPS.contains(&g.as_str()),
            "--only {g}: unknown group; use {}",
            GROUPS.join(", ")
        );
    }
    anyhow::ensure!(args.messages > 0, "--messages must be at least 1");
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    anyhow::ensure!(
        args.prefetch > 0 && args.window > 0 && args.concurrency > 0,
        "--prefetch, --window and --concurrency must be at least 1"
    );
    let url: AmqpUrl = args.amqp_url.parse()?;
    // The cluster first: when it is not there, say so before building or measuring anything.
    let cluster_checked = if args.wants("cluster") {
        Some(cluster::check(&args.cluster_url).await?)
    } else {
        None
    };
    let cluster_info = cluster_checked.as_ref().map(|c| c.info.clone());
    let started_at = rfc3339(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    let load_before = plan::load_average();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if load_before.is_some_and(|l| l > cpus as f64) {
        eprintln!(
            "courier-bench: the machine is busy (load {:.2} on {cpus} CPUs): expect noisy numbers; ratios within a round still compare like with like",
            load_before.unwrap_or_default()
        );
    }

    // What can run: binaries and the Python peer are optional, and said so when missing.
    let mut not_measured = Vec::new();
    let dlq = if args.wants("dlq") {
        let bin = match binary(&args, "dlq-tool", "courier-dlq").await {
            Ok(b) => dlq::usable(&b).await.map(|()| b),
            Err(e) => Err(e),
        };
        if let Err(why) = &bin {
            for id in ["dlq.replay", "dlq.export"] {
                not_measured.push(NotMeasured {
                    id: id.to_owned(),
                    why: format!("not measured yet: {why}"),
                });
            }
        }
        Some(bin)
    } else {
        None
    };
    let peer = if args.wants("peer") {
        let p = peer::available().await;
        if let Err(why) = &p {
            not_measured.push(NotMeasured {
                id: "peer.pika".to_owned(),
                why: why.clone(),
            });
        }
        Some(p)
    } else {
        None
    };
    let wants_memory = args.wants("memory") && memory_backlog > 0;
    let built = if wants_memory
        || ["binary", "traces", "cluster", "shards"]
            .iter()
            .any(|g| args.wants(g))
    {
        Some(binary(&args, "courier", "courier").await)
    } else {
        None
    };
    let courier_bin = built.clone().filter(|_| wants_memory);
    let binary_bin = built.clone().filter(|_| args.wants("binary"));
    let traces_bin = built.clone().filter(|_| args.wants("traces"));
    let cluster_bin = built.clone().filter(|_| args.wants("cluster"));
    let shards_bin = built.filter(|_| args.wants("shards"));
    for (bin, ids) in [
        (&binary_bin, &binary::IDS[..]),
        (&traces_bin, &[binary::TRACES.0, binary::TRACES.1][..]),
        (&cluster_bin, &cluster::IDS[..]),
        (&shards_bin, &shards::IDS[..]),
    ] {
        if let Some(Err(why)) = bin {
            for id in ids {
                not_measured.push(NotMeasured {
                    id: (*id).to_owned(),
                    why: why.clone(),
                });
            }
        }
    }

    let pid = std::process::id();
    let prefix = format!("bench.{pid}.");
    let main = Topology::parse(MAIN_TOPOLOGY, "topology/notifications.toml", &prefix)?;
    let retry = Topology::parse(
        RETRY_TOPOLOGY,
        "bench/topology/retry.toml",
        &format!("{prefix}retry."),
    )?;
    let tmp = std::env::temp_dir().join(format!("courier-bench-{pid}"));
    std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let main_topology_file = tmp.join("notifications.toml");
    std::fs::write(&main_topology_file, MAIN_TOPOLOGY)?;
    let retry_topology_file = tmp.join("retry.toml");
    std::fs::write(&retry_topology_file, RETRY_TOPOLOGY)?;
    let scratch = broker::Scratch::connect(&url).await?;
    let broker_pids = cpu::find_brokers(&url);
    let rabbitmq = courier::broker::probe_version(&url)
        .await
        .ok()
        .flatten()
        .map(|v| v.to_string());
    let env = Env {
        url,
        url_text: args.amqp_url.clone(),
        scratch,
        main,
        retry,
        main_topology_file,
        retry_topology_file,
        messages: args.messages,
        window: args.window,
        prefetch: args.prefetch,
        concurrency: args.concurrency,
        stall: Duration::from_secs(args.stall_secs.max(1)),
        tmp: tmp.clone(),
        broker_pids,
    };
    let cluster = match (cluster_checked, cluster_bin) {
        (Some(checked), Some(Ok(bin))) => {
            Some(cluster::Cluster::connect(&env, checked, bin).await?)
        }
        _ => None,
    };
    let shards = match shards_bin {
        Some(Ok(bin)) => Some(shards::Shards::connect(&env, bin).await?),
        _ => None,
    };
    let selection = Selection {
        baseline: args.wants("baseline"),
        courier: args.wants("courier"),
        retry: args.wants("retry"),
        http: args.wants("http"),
        dlq,
        peer,
        binary: binary_bin,
        traces: traces_bin,
        cluster,
        shards,
    };

    let body = async {
        env.scratch.apply(&env.main).await?;
        env.scratch.apply(&env.retry).await?;
        if let Some(c) = &selection.cluster {
            c.apply().await?;
        }
        if let Some(s) = &selection.shards {
            s.apply().await?;
        }
        let mut rounds = Vec::new();
        for r in 1..=args.rounds {
            rounds.push(plan::round(&env, &selection, r, args.rounds).await);
        }
        let memory = match courier_bin {
            Some(Ok(bin)) => {
                let m = memory::run(&env, &bin, memory_backlog, 1000).await;
                eprintln!(
                    "[memory] peak RSS {:.1} MiB with a backlog of {} ({:.0} msg/s){}",
                    m.peak_rss_mib,
                    m.backlog,
                    m.rate,
                    m.error
                        .as_ref()
                        .map(|e| format!(": FAILED {e}"))
                        .unwrap_or_default()
                );
                Some(m)
            }
            Some(Err(why)) => {
                not_measured.push(NotMeasured {
                    id: "memory".to_owned(),
                    why,
                });
                None
            }
            None => None,
        };
        anyhow::Ok((rounds, memory))
    };
    // Ctrl-C still deletes our queues (and drops child processes, which kills them).
    let outcome = tokio::select! {
        r = body => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    env.scratch.cleanup().await;
    if let Some(c) = &selection.cluster {
        c.cleanup().await;
    }
    if let Some(s) = &selection.shards {
        s.cleanup().await;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let (rounds, memory) = outcome?;

    let (summary, ratios) = report::summarise(&rounds);
    let ok = rounds
        .iter()
        .flat_map(|r| &r.measurements)
        .all(report::Measurement::ok)
        && memory
            .as_ref()
            .is_none_or(|m| m.error.is_none() && m.left_in_queue == 0);
    let root = repo_root();
    Ok(Results {
        schema: SCHEMA,
        started_at,
        git: command_output("git", &["describe", "--always", "--dirty"], &root),
        machine: Machine {
            cpus,
            rabbitmq,
            kernel: command_output("uname", &["-r"], &root),
            load_before,
            load_after: plan::load_average(),
            profile: profile().to_owned(),
            cluster: cluster_info,
        },
        params: Params {
            messages: args.messages,
            rounds: args.rounds,
            body_bytes: payload::BODY_BYTES,
            window: args.window,
            prefetch: args.prefetch,
            concurrency: args.concurrency,
            smoke: args.smoke,
        },
        rounds,
        summary,
        ratios,
        memory,
        not_measured,
        ok,
    })
}

fn write_json(path: &Path, results: &Results) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(results)?;
    std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))
}

fn chart(args: &ChartArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("read {}", args.input.display()))?;
    let results: Results = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a courier-bench results file",
            args.input.display()
        )
    })?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, chart::svg(&results))
        .with_context(|| format!("write {}", args.out.display()))?;
    eprintln!("courier-bench: wrote {}", args.out.display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,lapin=error,lapin::channel=off,lapin::returned_messages=off",
        )
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    if let Some(Command::Chart(args)) = &cli.command {
        return match chart(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // Multi-threaded like `courier work`: the same scheduler for Courier and the baseline.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = cli.run.out.clone().unwrap_or_else(default_out);
    let result = runtime.block_on(run(cli.run));
    runtime.shutdown_timeout(Duration::from_secs(2));
    let results = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", courier::amqp::redact(&format!("{e:#}")));
            return ExitCode::FAILURE;
        }
    };
    println!("{}", report::markdown(&results));
    if let Err(e) = write_json(&out, &results) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    eprintln!("courier-bench: wrote {}", out.display());
    if results.ok {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "courier-bench: FAILED: a scenario lost messages or did not complete (see above)"
        );
        ExitCode::FAILURE
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
    fn the_cluster_group_is_opt_in() {
        let args = |argv: &[&str]| {
            Cli::try_parse_from(std::iter::once("courier-bench").chain(argv.iter().copied()))
                .expect("arguments")
                .run
        };
        let all = args(&[]);
        assert!(all.wants("binary") && !all.wants("cluster"));
        assert!(!args(&["--smoke"]).wants("cluster"));
        assert!(all.wants("traces") && args(&["--smoke"]).wants("traces"));
        let only = args(&["--smoke", "--only", "binary,cluster"]);
        assert!(only.wants("cluster") && only.wants("binary") && !only.wants("courier"));
        assert!(!all.wants("shards") && !args(&["--smoke"]).wants("shards"));
        assert!(args(&["--only", "shards"]).wants("shards"));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn embedded_topologies_validate() {
        let main = Topology::parse(MAIN_TOPOLOGY, "main", "p.").expect("main topology");
        assert!(main.work_queue("p.notifications.email").is_some());
        let retry = Topology::parse(RETRY_TOPOLOGY, "retry", "p.").expect("retry topology");
        assert_eq!(retry.retry.tiers[0], Duration::from_millis(10));
    }
}
