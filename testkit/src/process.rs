//! Child processes with a deadline. A hung child (a worker that never drains, a tool waiting on
//! a broker that will not answer) must fail its test, with its stderr, within a bound, and never
//! eat the CI budget: [`output_within`] for run-to-completion commands, [`spawn_within`] for
//! children a test drives, killed at the deadline or when dropped. [`PipeLog`] reads a driven
//! child's stderr as it comes, so a test waits for what the child says instead of sleeping.

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Deadline for a command a test runs to completion, unless it says otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);

/// Deadline for a child a test drives (a worker, a pass it interrupts), unless it says otherwise:
/// longer than any test keeps one running, far shorter than the CI budget.
pub const CHILD_DEADLINE: Duration = Duration::from_secs(300);

/// `cmd.spawn_within(deadline)` for builder chains: [`spawn_within`] as a method.
pub trait SpawnWithin {
    /// Spawns the command; the child is killed at `deadline` or when dropped.
    fn spawn_within(&mut self, deadline: Duration) -> DeadlineChild;
}

impl SpawnWithin for Command {
    fn spawn_within(&mut self, deadline: Duration) -> DeadlineChild {
        spawn_within(self, deadline)
    }
}

/// Runs `cmd` to completion with stdin closed (as `Command::output` does), capturing its output; if it
/// is still running after `deadline`, kills it and panics with what it printed.
pub fn output_within(cmd: &mut Command, deadline: Duration) -> Output {
    use std::os::unix::process::CommandExt;
    let what = format!("{cmd:?}");
    // Its own process group, so the deadline kills whatever it started too: a grandchild that
    // kept the pipes open would otherwise hold the readers (and the test) until it ended.
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    // Read both pipes on their own threads, so a child filling one pipe cannot block.
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > deadline => {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .status();
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err.join().unwrap_or_default();
                panic!(
                    "{what} still running after {deadline:?}; killed. Its stderr:\n{}",
                    String::from_utf8_lossy(&stderr)
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// A child that is killed at its deadline (a watchdog thread) or when dropped, whichever comes
/// first. Derefs to [`Child`] for its pipes, `wait`, `kill` and `id`.
pub struct DeadlineChild {
    child: Child,
    /// Tells the watchdog the child was reaped, so it never signals a reused pid.
    done: Arc<AtomicBool>,
    /// Set by the watchdog when it killed the child.
    expired: Arc<AtomicBool>,
}

/// Spawns `cmd`; the child is SIGKILLed once `deadline` has passed.
pub fn spawn_within(cmd: &mut Command, deadline: Duration) -> DeadlineChild {
    let what = format!("{cmd:?}");
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let done = Arc::new(AtomicBool::new(false));
    let expired = Arc::new(AtomicBool::new(false));
    let pid = child.id();
    let (d, x) = (done.clone(), expired.clone());
    std::thread::spawn(move || {
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if d.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !d.load(Ordering::Acquire) {
            x.store(true, Ordering::Release);
            eprintln!("testkit: {what} still running after {deadline:?}; killing it");
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    });
    DeadlineChild {
        child,
        done,
        expired,
    }
}

impl DeadlineChild {
    /// True when the watchdog killed the child.
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }

    /// Waits for the child and returns its output (pipes that were set to `piped`).
    pub fn wait_with_output(mut self) -> std::io::Result<Output> {
        let child = std::mem::replace(&mut self.child, placeholder());
        let out = child.wait_with_output();
        self.done.store(true, Ordering::Release);
        out
    }
}

/// A reaped, harmless child to leave in place of one handed out by value.
fn placeholder() -> Child {
    let mut c = Command::new("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("`true` runs");
    let _ = c.wait();
    c
}

impl std::ops::Deref for DeadlineChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for DeadlineChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for DeadlineChild {
    fn drop(&mut self) {
        if !self.done.load(Ordering::Acquire) {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
            self.done.store(true, Ordering::Release);
        }
    }
}

/// A child's output pipe, read on its own thread as the child writes it. A test waits for a
/// line that proves the child got somewhere ([`PipeLog::wait_for`]) rather than sleeping for a
/// guess of how long that takes, and reads everything once the child is gone
/// ([`PipeLog::finish`]).
pub struct PipeLog {
    bytes: Arc<Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

impl PipeLog {
    /// Starts reading `pipe` (e.g. `child.stderr.take()`); panics if the pipe was not piped.
    pub fn new(pipe: Option<impl Read + Send + 'static>) -> Self {
        let mut pipe = pipe.expect("the stream to read is piped");
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let sink = bytes.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // Ends at EOF: the child exited (or closed the stream), or the read failed.
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
        Self { bytes, reader }
    }

    /// What the child wrote so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }

    /// Waits until the child has written `needle`, or panics after `timeout` with what it wrote.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the child did not write {needle:?} within {timeout:?}; it wrote:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the child wrote, once the stream ended: call it after the child exited.
    pub fn finish(self) -> String {
        let Self { bytes, reader } = self;
        let _ = reader.join();
        let text = String::from_utf8_lossy(&bytes.lock().unwrap()).into_owned();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_within_returns_what_the_child_printed() {
        let o = output_within(
            Command::new("sh").args(["-c", "echo out; echo err >&2"]),
            Duration::from_secs(10),
        );
        assert!(o.status.success());
        assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
        assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    }

    #[test]
    fn a_hung_child_fails_with_its_stderr() {
        let r = std::panic::catch_unwind(|| {
            output_within(
                Command::new("sh").args(["-c", "echo stuck >&2; sleep 30"]),
                Duration::from_millis(300),
            )
        });
        let msg = r
            .err()
            .and_then(|p| p.downcast::<String>().ok())
            .expect("panics with a message");
        assert!(msg.contains("stuck"), "{msg}");
    }

    #[tokio::test]
    async fn pipe_log_sees_a_line_before_the_child_exits() {
        let mut c = spawn_within(
            Command::new("sh")
                .args(["-c", "echo ready >&2; read _; echo bye >&2"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped()),
            Duration::from_secs(10),
        );
        let log = PipeLog::new(c.stderr.take());
        // The child blocks on stdin until told to go on: "ready" must be seen while it runs.
        log.wait_for("ready", Duration::from_secs(5)).await;
        assert!(c.try_wait().expect("try_wait").is_none());
        drop(c.stdin.take());
        c.wait().expect("waits");
        assert_eq!(log.finish(), "ready\nbye\n");
    }

    #[test]
    fn spawn_within_kills_at_the_deadline() {
        let started = Instant::now();
        let mut c = spawn_within(Command::new("sleep").arg("30"), Duration::from_millis(300));
        let status = c.wait().expect("waits");
        assert!(!status.success());
        assert!(c.expired());
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
