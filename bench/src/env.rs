//! What every scenario shares: the broker, the run's topologies under its prefix, the sizes
//! of the run. Scenarios ([`crate::courier_lib`], [`crate::dlq`], [`crate::peer`], ...) and the
//! plan that runs them all depend on this module, and it on none of them.

use crate::broker::Scratch;
use crate::cpu;
use courier::amqp::AmqpUrl;
use courier::topology::Topology;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Every scenario publishes with this routing key (the `email` channel).
pub const ROUTING_KEY: &str = "email";

/// What every scenario shares.
pub struct Env {
    /// The broker.
    pub url: AmqpUrl,
    /// The same URL as given, for child processes (the parsed one never shows its password).
    pub url_text: String,
    /// Declares, inspects and finally deletes our objects.
    pub scratch: Scratch,
    /// The default topology (`topology/notifications.toml`) under the run's prefix.
    pub main: Topology,
    /// The retry-path topology (`bench/topology/retry.toml`) under its own prefix.
    pub retry: Topology,
    /// `main` as a file, for the child processes' `--topology`.
    pub main_topology_file: PathBuf,
    /// `retry` as a file, for the `binary` group's retry worker.
    pub retry_topology_file: PathBuf,
    /// Messages per scenario.
    pub messages: u64,
    /// Outstanding confirms of every publisher.
    pub window: usize,
    /// Prefetch of every consumer.
    pub prefetch: u16,
    /// Courier worker concurrency.
    pub concurrency: usize,
    /// Give up on a scenario when no message arrives for this long.
    pub stall: Duration,
    /// Scratch files (peer script, export files, logs); removed at the end.
    pub tmp: PathBuf,
    /// The local broker's processes (a cluster's nodes), for their CPU time; empty when it
    /// runs elsewhere.
    pub broker_pids: Vec<u32>,
}

impl Env {
    /// The work queue the benchmark uses in `topology`: `<prefix>notifications.email`.
    pub fn work_queue<'a>(&self, topology: &'a Topology) -> &'a str {
        let wanted = format!("{}notifications.email", topology.prefix);
        topology
            .work_queue(&wanted)
            .or_else(|| topology.work_queues.first())
            .map_or("", |q| q.name.as_str())
    }

    /// The main topology's publishing exchange, `<prefix>notifications`.
    pub fn main_exchange(&self) -> String {
        self.main
            .exchanges
            .first()
            .map(|e| e.name.clone())
            .unwrap_or_default()
    }

    /// The retry topology's email work queue, its first (10 ms) tier queue, and the origin a
    /// worker records on a copy of a message from it: what a retry-hop baseline needs to do
    /// the worker's work by hand.
    ///
    /// # Errors
    /// When the retry topology has no tier (it always has, unless its file changes).
    pub fn retry_route(&self) -> anyhow::Result<(String, String, courier::envelope::Origin)> {
        let work = self.work_queue(&self.retry).to_owned();
        let tier = self
            .retry
            .work_queue(&work)
            .and_then(|w| w.retry_queues.first())
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("the retry topology has no tier"))?;
        let origin = courier::envelope::Origin {
            exchange: self
                .retry
                .exchanges
                .first()
                .map(|e| e.name.clone())
                .unwrap_or_default(),
            routing_key: ROUTING_KEY.to_owned(),
            queue: work.clone(),
        };
        Ok((work, tier, origin))
    }

    /// Fails, naming the queue, when any queue of `topology` still holds a ready message.
    ///
    /// # Errors
    /// A queue that is not empty, or the broker gone.
    pub async fn expect_empty(&self, topology: &Topology) -> anyhow::Result<()> {
        for q in &topology.queues {
            let left = self.scratch.depth(&q.name).await?;
            anyhow::ensure!(left == 0, "{left} messages left in {}", q.name);
        }
        Ok(())
    }

    /// CPU counters now (this process, its children, the broker).
    pub fn cpu(&self) -> cpu::Sample {
        cpu::sample(&self.broker_pids)
    }

    /// `courier work --handler noop --prefetch P` on the main topology's email queue, as the
    /// binary scenarios run it: stdin and stdout closed, stderr to `log`, killed on drop.
    /// Callers add their flags and environment.
    pub fn noop_worker(
        &self,
        courier: &Path,
        prefetch: u16,
        log: std::fs::File,
    ) -> tokio::process::Command {
        self.worker(
            courier,
            (&self.main, &self.main_topology_file),
            &["--handler", "noop"],
            prefetch,
            log,
        )
    }

    /// `courier work --queue notifications.email <handler> --prefetch P` on `topology` (given
    /// with its file), otherwise as [`Env::noop_worker`].
    pub fn worker(
        &self,
        courier: &Path,
        (topology, file): (&Topology, &Path),
        handler: &[&str],
        prefetch: u16,
        log: std::fs::File,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(courier);
        cmd.arg("--prefix")
            .arg(&topology.prefix)
            .arg("--topology")
            .arg(file)
            .args(["work", "--queue", "notifications.email"])
            .args(handler)
            .args(["--prefetch", &prefetch.to_string()])
            .env("AMQP_URL", &self.url_text)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        cmd
    }

    /// Empties every queue a failed scenario could have left messages in.
    pub async fn reset(&self) {
        for q in self.main.queues.iter().chain(&self.retry.queues) {
            let _ = self.scratch.purge(&q.name).await;
        }
    }
}
