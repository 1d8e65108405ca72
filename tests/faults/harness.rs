//! Fault-suite harness: worker processes, broker control, a TCP proxy, result rows.

use crate::util::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A `courier work` child process whose stderr goes to a file (readable after a kill -9).
pub struct WorkerProc {
    pub child: DeadlineChild,
    pub log: PathBuf,
}

impl WorkerProc {
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
        Self { child, log }
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

/// Runs `rabbitmqctl` and asserts it succeeded.
pub fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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

/// Waits until every id has been answered 2xx by the sink or sits in the DLQ (counted by
/// draining it into `dead`), and returns the recovery time from `since`.
pub async fn settle(sink: &Sink, ids: &[String], timeout: Duration) -> Duration {
    let start = Instant::now();
    sink.wait_for(timeout, "every message delivered", |r| {
        let got: std::collections::HashSet<&str> = r
            .iter()
            .filter(|x| (200..300).contains(&x.status))
            .map(|x| x.message_id.as_str())
            .collect();
        ids.iter().all(|id| got.contains(id.as_str()))
    })
    .await;
    start.elapsed()
}

/// One row of docs/reliability.md.
#[derive(Debug, serde::Serialize)]
pub struct Row {
    pub fault: String,
    pub injection: String,
    pub sent: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub recovery_secs: f64,
}

/// Appends a row to `target/reliability.jsonl` and prints it.
pub fn record(row: Row) {
    let line = serde_json::to_string(&row).expect("row JSON");
    eprintln!("RELIABILITY {line}");
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reliability.jsonl");
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
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
    mode: Arc<AtomicU8>,
    generation: Arc<Mutex<u64>>,
    reset: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub async fn start(upstream: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(AtomicU8::new(ProxyMode::Pass as u8));
        let generation = Arc::new(Mutex::new(0u64));
        let reset = Arc::new(Mutex::new(0u64));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, g, r, s) = (
            mode.clone(),
            generation.clone(),
            reset.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept().await else {
                    break;
                };
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let born = *g.lock().expect("lock");
                let born_reset = *r.lock().expect("lock");
                tokio::spawn(pipe(
                    client,
                    server,
                    m.clone(),
                    g.clone(),
                    born,
                    r.clone(),
                    born_reset,
                ));
            }
        });
        Self {
            port,
            mode,
            generation,
            reset,
            stop,
        }
    }

    pub fn url(&self, query: &str) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f{query}", self.port)
    }

    /// Freezes every connection open now; later ones pass.
    pub fn freeze_existing(&self) {
        *self.generation.lock().expect("lock") += 1;
        self.mode.store(ProxyMode::Freeze as u8, Ordering::SeqCst);
    }

    /// Resets (RST) every connection open now.
    pub fn reset_existing(&self) {
        *self.reset.lock().expect("lock") += 1;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    mode: Arc<AtomicU8>,
    generation: Arc<Mutex<u64>>,
    born: u64,
    reset: Arc<Mutex<u64>>,
    born_reset: u64,
) {
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
            n = sr.read(&mut b) => match n { Ok(0) | Err(_) => return, Ok(n) => if cw.write_all(&b[..n]).await.is_err() { return } },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
