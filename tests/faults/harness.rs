//! Fault-suite harness: worker processes, broker control, a TCP proxy, result rows.

use crate::util::*;
use courier::envelope;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A `courier work` child process whose stderr goes to a file (readable after a kill -9).
pub struct WorkerProc {
    pub child: DeadlineChild,
    pub log: PathBuf,
    /// `host:port` of its /metrics, when started with [`WorkerProc::spawn_watched`].
    metrics: Option<String>,
}

impl WorkerProc {
    /// A worker serving /metrics, so a case can see what it holds before killing it.
    pub fn spawn_watched(t: &TestTopology, url: &str, endpoint: &str, extra: &[&str]) -> Self {
        let addr = free_addr().to_string();
        let mut args = extra.to_vec();
        args.extend(["--metrics-addr", addr.as_str()]);
        let mut w = Self::spawn(t, url, endpoint, &args);
        w.metrics = Some(addr);
        w
    }

    /// Waits until the worker is handling at least one message (`courier_in_flight` > 0):
    /// those deliveries are unacked, so a kill now leaves work for the broker to redeliver.
    /// Returns how many it held.
    pub async fn wait_holding(&self, timeout: Duration) -> u64 {
        let addr = self.metrics_addr();
        let deadline = Instant::now() + timeout;
        loop {
            let held: u64 = match reqwest::get(format!("http://{addr}/metrics")).await {
                Ok(r) => r
                    .text()
                    .await
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.starts_with("courier_in_flight{"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>() as u64,
                Err(_) => 0,
            };
            if held > 0 {
                return held;
            }
            assert!(
                Instant::now() < deadline,
                "the worker never held a message: the fault would land on an idle worker"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `host:port` of its /metrics, /readyz (spawned with [`WorkerProc::spawn_watched`]).
    pub fn metrics_addr(&self) -> &str {
        self.metrics.as_deref().expect("spawned with spawn_watched")
    }

    pub fn spawn(t: &TestTopology, url: &str, endpoint: &str, extra: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!("{}worker-{}.log", t.prefix, rand_suffix()));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_courier"))
            .args([
                "work",
                "--queue",
                "notifications.email",
                "--handler",
                "http",
                "--endpoint",
                endpoint,
            ])
            .args(["--shutdown-timeout", "10s"])
            .args(extra)
            .env("AMQP_URL", url)
            .env("COURIER_PREFIX", &t.prefix)
            .env("COURIER_TOPOLOGY", &t.file)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn_within(CHILD_DEADLINE);
        Self {
            child,
            log,
            metrics: None,
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn term(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "worker did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The `rabbitmqctl` of the broker under test: `COURIER_TEST_RABBITMQCTL` (a command line, e.g.
/// `scripts/rabbitmq4 ctl` for the 4.x broker), else `rabbitmqctl`.
fn ctl_command() -> Command {
    let line = std::env::var("COURIER_TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let mut words = line.split_whitespace();
    let mut cmd = Command::new(words.next().unwrap_or("rabbitmqctl"));
    cmd.args(words);
    cmd
}

/// Runs `rabbitmqctl` against the broker under test and asserts it succeeded.
pub fn rabbitmqctl(args: &[&str]) {
    let out = ctl_command().args(args).output().expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A broker-wide fault in force until dropped. Dropping it (the case's end, or a panic
/// anywhere in the case) runs the restoring command, so a failed case never leaves the broker
/// alarmed or stopped for the ones after it.
pub struct BrokerFault {
    restore: Option<Vec<String>>,
}

impl BrokerFault {
    /// Runs `fault` now; `restore` runs on [`BrokerFault::end`] or on drop.
    pub fn inject(fault: &[&str], restore: &[&str]) -> Self {
        rabbitmqctl(fault);
        Self {
            restore: Some(restore.iter().map(|s| s.to_string()).collect()),
        }
    }

    /// Ends the fault now, asserting the restore worked.
    pub fn end(mut self) {
        if let Some(args) = self.restore.take() {
            rabbitmqctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
}

impl Drop for BrokerFault {
    fn drop(&mut self) {
        if let Some(args) = self.restore.take() {
            // Also on panic: never assert here (a panic while panicking aborts).
            let _ = ctl_command().args(args).output();
        }
    }
}

/// The broker's memory high watermark as `set_vm_memory_high_watermark` takes it back: a
/// fraction (`0.4` on 3.x, `0.6` on 4.x by default) or `absolute N`.
pub fn memory_watermark() -> Vec<String> {
    let out = ctl_command()
        .args([
            "-q",
            "eval",
            "vm_memory_monitor:get_vm_memory_high_watermark().",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success(), "reading the watermark: {text}");
    if let Some(n) = text
        .strip_prefix("{absolute,")
        .and_then(|t| t.strip_suffix('}'))
    {
        return vec!["absolute".into(), n.trim().into()];
    }
    assert!(text.parse::<f64>().is_ok(), "unexpected watermark {text:?}");
    vec![text]
}

/// Waits until the broker accepts AMQP connections again.
pub async fn wait_broker(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(c) = parsed_url().connect("fault probe").await {
            let _ = c.close(200, "probe".into()).await;
            return;
        }
        assert!(Instant::now() < deadline, "broker did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every id has been answered 2xx by the sink, up to `timeout`, and returns the
/// time that took. It never fails the case itself: what is missing then shows in the census,
/// as lost or as still queued, in the assertion that follows.
pub async fn settle(sink: &Sink, ids: &[String], timeout: Duration) -> Duration {
    let start = Instant::now();
    let want: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    while start.elapsed() < timeout {
        let got: std::collections::HashSet<String> = sink
            .all()
            .into_iter()
            .filter(|x| (200..300).contains(&x.status))
            .map(|x| x.message_id)
            .collect();
        if want.iter().all(|id| got.contains(*id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

/// Waits until `queue` holds at least `n` ready messages, up to `timeout`, and returns the time
/// that took. Like [`settle`], it never fails the case: a shortfall shows in the census.
pub async fn settle_depth(queue: &str, n: u32, timeout: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout && depth(queue).await < n {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

/// How the proxy treats traffic.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ProxyMode {
    Pass = 0,
    /// Existing connections stop moving bytes, without FIN or RST (a dead network path).
    /// New connections work, as after a re-route.
    Freeze = 1,
}

/// A TCP proxy to the broker, for faults the broker cannot simulate itself.
pub struct Proxy {
    pub port: u16,
    /// Connections being forwarded now (frozen ones included).
    live: Arc<AtomicUsize>,
    mode: Arc<AtomicU8>,
    generation: Arc<Mutex<u64>>,
    reset: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// A proxy to the broker under test (`AMQP_URL`'s host and port).
    pub async fn start() -> Self {
        Self::start_with_delay(Duration::ZERO).await
    }

    /// A proxy that holds every chunk from the broker for `delay` before passing it on: confirms
    /// come back slowly, so a publisher through it cannot finish before a fault however fast
    /// the machine is.
    pub async fn start_with_delay(delay: Duration) -> Self {
        let uri = parsed_url().uri().clone();
        let upstream = format!("{}:{}", uri.authority.host, uri.authority.port);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(AtomicU8::new(ProxyMode::Pass as u8));
        let generation = Arc::new(Mutex::new(0u64));
        let reset = Arc::new(Mutex::new(0u64));
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(AtomicUsize::new(0));
        let (m, g, r, s, l) = (
            mode.clone(),
            generation.clone(),
            reset.clone(),
            stop.clone(),
            live.clone(),
        );
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept().await else {
                    break;
                };
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let born = *g.lock().expect("lock");
                let born_reset = *r.lock().expect("lock");
                let l = l.clone();
                l.fetch_add(1, Ordering::SeqCst);
                let (m, g, r) = (m.clone(), g.clone(), r.clone());
                tokio::spawn(async move {
                    let controls = Controls {
                        mode: m,
                        generation: g,
                        born,
                        reset: r,
                        born_reset,
                        delay,
                    };
                    pipe(client, server, controls).await;
                    l.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            port,
            live,
            mode,
            generation,
            reset,
            stop,
        }
    }

    pub fn url(&self, query: &str) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f{query}", self.port)
    }

    /// Freezes every connection open now; later ones pass. Returns how many it froze.
    pub fn freeze_existing(&self) -> usize {
        let open = self.live.load(Ordering::SeqCst);
        *self.generation.lock().expect("lock") += 1;
        self.mode.store(ProxyMode::Freeze as u8, Ordering::SeqCst);
        open
    }

    /// Resets (RST) every connection open now. Returns how many were open.
    pub fn reset_existing(&self) -> usize {
        let open = self.live.load(Ordering::SeqCst);
        *self.reset.lock().expect("lock") += 1;
        open
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What a forwarded connection checks between chunks: the proxy's mode and counters, and the
/// values they had when the connection was born (a freeze or reset hits older ones only).
struct Controls {
    mode: Arc<AtomicU8>,
    generation: Arc<Mutex<u64>>,
    born: u64,
    reset: Arc<Mutex<u64>>,
    born_reset: u64,
    delay: Duration,
}

async fn pipe(client: TcpStream, server: TcpStream, controls: Controls) {
    let Controls {
        mode,
        generation,
        born,
        reset,
        born_reset,
        delay,
    } = controls;
    let frozen = move || {
        mode.load(Ordering::SeqCst) == ProxyMode::Freeze as u8
            && *generation.lock().expect("lock") > born
    };
    let was_reset = move || *reset.lock().expect("lock") > born_reset;
    // Linger 0: closing a socket sends RST, so a "reset" is a real reset, not a clean FIN.
    #[allow(deprecated)]
    {
        let _ = client.set_linger(Some(Duration::ZERO));
        let _ = server.set_linger(Some(Duration::ZERO));
    }
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut a = [0u8; 16384];
    let mut b = [0u8; 16384];
    loop {
        if was_reset() {
            return;
        }
        if frozen() {
            // Hold the sockets open and silent forever: no FIN, no RST.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        tokio::select! {
            n = cr.read(&mut a) => match n { Ok(0) | Err(_) => return, Ok(n) => if sw.write_all(&a[..n]).await.is_err() { return } },
            n = sr.read(&mut b) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if cw.write_all(&b[..n]).await.is_err() { return }
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// The `courier-dlq` binary of this workspace (built by the workspace test run before this one).
/// `courier-dlq`, with its audit trail in the temporary directory (never the user's own).
pub fn dlq_command() -> std::process::Command {
    let mut c = std::process::Command::new(dlq_bin());
    c.env(
        "COURIER_DLQ_AUDIT_LOG",
        std::env::temp_dir().join("courier-tests-dlq-audit.jsonl"),
    );
    c
}

pub fn dlq_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("courier-dlq");
    if !bin.exists() {
        let ok = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "dlq-tool", "--bin", "courier-dlq"])
            .status()
            .expect("cargo build")
            .success();
        assert!(ok, "cannot build courier-dlq");
    }
    bin
}

/// Fills the DLQ with `n` worker-style dead letters whose origin is the email queue.
pub async fn seed_dead_letters(t: &TestTopology, tag: &str, n: usize) -> Vec<String> {
    let p = publisher().await;
    let origin = envelope::Origin {
        exchange: t.exchange(),
        routing_key: "email".into(),
        queue: t.name("notifications.email"),
    };
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let futs = ids.iter().map(|id| {
        let mut m = job("", &t.dlq(), id, 0);
        let h = envelope::dead_letter_headers(
            None,
            5,
            envelope::Reason::MaxAttempts,
            "HTTP 503",
            &origin,
            envelope::now_millis(),
        );
        m.properties = m.properties.with_headers(h);
        p.publish(m)
    });
    for r in futures_util::future::join_all(futs).await {
        r.expect("seeded");
    }
    ids
}
