//! Test support shared by `tests/`, `dlq-tool/tests` and the bench, so each exists once:
//! - the broker under test ([`amqp_url`], [`management_url`]) and [`unique_prefix`], so tests
//!   run in parallel on one broker without seeing each other's objects;
//! - [`Fixture`]: a prefixed topology applied to the real broker and deleted on drop, also when
//!   the test panicked ([`Cleanup`] alone for objects a test declares itself);
//! - [`queues`]: the broker's own view (depth over AMQP, queues, bindings and connections over the
//!   management API);
//! - [`sink`]: a real local HTTP server that records and answers as a test says;
//! - [`process`]: child processes with a deadline, so a hung child fails its test with its
//!   stderr instead of eating the CI budget;
//! - [`vhost`]: a virtual host of a test's own, deleted on drop;
//! - [`worker`]: a real worker in the test's process, delivering to a sink.
//!
//! Panics are the error channel here: a failed set-up is a failed test.

#![allow(clippy::unwrap_used)]

pub mod process;
pub mod queues;
pub mod sink;
pub mod vhost;
pub mod worker;

use courier::amqp::AmqpUrl;
use courier::broker::Admin;
use courier::topology::Topology;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The broker under test: `AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| courier::amqp::DEFAULT_AMQP_URL.to_owned())
}

/// [`amqp_url`], parsed.
pub fn parsed_url() -> AmqpUrl {
    amqp_url().parse().expect("AMQP_URL parses")
}

/// The management API of the broker under test (`COURIER_TEST_MANAGEMENT_URL`).
pub fn management_url() -> String {
    std::env::var("COURIER_TEST_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:15672".to_owned())
}

/// A path in the repository, wherever the calling crate sits in the workspace.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A local TCP port nothing listens on right now (bound once, then released): for a server
/// the test starts, or for an endpoint that must refuse connections.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// `127.0.0.1:<free_port()>`.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A prefix no other test (or test run) uses: `t.<name>.<pid>.<counter>.<nanos>.`
pub fn unique_prefix(name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t.{name}.{}.{}.{nanos}.",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deletes queues and exchanges when dropped, even if the test panicked. It runs its own
/// runtime on its own thread, so it also works from inside a `#[tokio::test]`.
#[derive(Debug, Default)]
pub struct Cleanup {
    /// Queues to delete (messages included).
    pub queues: Vec<String>,
    /// Exchanges to delete.
    pub exchanges: Vec<String>,
}

impl Cleanup {
    /// Every object of `t`.
    pub fn for_topology(t: &Topology) -> Self {
        Self {
            queues: t.queues.iter().map(|q| q.name.clone()).collect(),
            exchanges: t.exchanges.iter().map(|e| e.name.clone()).collect(),
        }
    }

    /// One more queue to delete.
    pub fn add_queue(&mut self, name: &str) {
        self.queues.push(name.to_owned());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut self.queues);
        let exchanges = std::mem::take(&mut self.exchanges);
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(admin) = Admin::connect(&parsed_url(), "courier test cleanup").await else {
                    return;
                };
                for q in queues {
                    let _ = admin.delete_queue(&q).await;
                }
                for e in exchanges {
                    let _ = admin.delete_exchange(&e).await;
                }
                admin.close().await;
            });
        });
        let _ = handle.join();
    }
}

/// A prefixed copy of a topology file applied to the broker under test, deleted on drop.
pub struct Fixture {
    /// The loaded, prefixed topology.
    pub topology: Topology,
    /// Its unique prefix.
    pub prefix: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Deletes it (and whatever the test added) on drop.
    pub cleanup: Cleanup,
}

impl Fixture {
    /// Applies `file` (relative to the repository) under a new prefix made from `name`.
    pub async fn apply(name: &str, file: &str) -> Self {
        let prefix = unique_prefix(name);
        let file = repo_path(file);
        let topology = Topology::load(&file, &prefix).expect("test topology valid");
        // Armed before applying: a half-applied topology is deleted too.
        let cleanup = Cleanup::for_topology(&topology);
        courier::broker::apply(&parsed_url(), &topology)
            .await
            .expect("topology applies");
        Self {
            topology,
            prefix,
            file,
            cleanup,
        }
    }

    /// `short` under this fixture's prefix.
    pub fn name(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    /// The dead-letter queue.
    pub fn dlq(&self) -> String {
        self.topology.dead_letter_queue.clone()
    }
}
