//! CPU time per message, for the client and for the broker.
//!
//! On a 2-core machine shared by broker and clients, every CPU-second a client spends is taken
//! from the broker, so "µs of client CPU per message" explains a throughput ratio better than
//! the ratio itself, and "µs of broker CPU per message" shows what a scenario asks of the broker
//! (a retry costs the broker more than a plain delivery, whoever the client is).
//!
//! Read from `/proc`: this process's own time (in-process scenarios), its waited-for children's
//! time (scenarios run as processes), and the local broker's (`beam.smp`) when it runs here.

/// Clock ticks per second of `/proc/*/stat` times (`getconf CLK_TCK`; 100 on Linux).
fn ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime, stime, cutime, cstime of `/proc/<which>/stat`, in seconds.
fn times(which: &str) -> Option<[f64; 4]> {
    let stat = std::fs::read_to_string(format!("/proc/{which}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its ')' are plain.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) .. cstime (17) are indices 11..=14 here.
    let tick = ticks_per_second();
    let get = |i: usize| -> Option<f64> { Some(f.get(i)?.parse::<f64>().ok()? / tick) };
    Some([get(11)?, get(12)?, get(13)?, get(14)?])
}

/// CPU seconds (user + system) process `pid` has used so far, while it runs.
pub fn process_seconds(pid: u32) -> Option<f64> {
    times(&pid.to_string()).map(|t| t[0] + t[1])
}

/// The local broker's process id, if RabbitMQ runs on this machine.
pub fn find_broker() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "beam.smp")
        })
}

/// CPU seconds at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// This process (all threads).
    own: f64,
    /// Children this process has waited for.
    children: f64,
    /// The broker, if local.
    broker: Option<f64>,
}

/// Reads the counters now.
pub fn sample(broker: Option<u32>) -> Sample {
    let me = times("self").unwrap_or_default();
    Sample {
        own: me[0] + me[1],
        children: me[2] + me[3],
        broker: broker
            .and_then(|p| times(&p.to_string()))
            .map(|t| t[0] + t[1]),
    }
}

/// CPU per message over a measured section.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerMessage {
    /// Client µs per message.
    pub client_us: Option<f64>,
    /// Broker µs per message.
    pub broker_us: Option<f64>,
}

impl Sample {
    /// CPU per message from `self` to `later`, for `n` messages; `child` when the client was
    /// a child process (its time shows up once it has been waited for).
    pub fn per_message(&self, later: &Sample, n: u64, child: bool) -> PerMessage {
        let client = if child {
            later.children - self.children
        } else {
            later.own - self.own
        };
        self.per_message_of(later, n, client)
    }

    /// [`Sample::per_message`] counting this process and its waited-for children together (a
    /// scenario whose client work is split between them: a publisher here, a worker there).
    pub fn per_message_all(&self, later: &Sample, n: u64) -> PerMessage {
        let client = (later.own - self.own) + (later.children - self.children);
        self.per_message_of(later, n, client)
    }

    fn per_message_of(&self, later: &Sample, n: u64, client: f64) -> PerMessage {
        let n = n.max(1) as f64;
        PerMessage {
            client_us: Some(client * 1e6 / n),
            broker_us: match (self.broker, later.broker) {
                (Some(a), Some(b)) => Some((b - a) * 1e6 / n),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_grows_with_work() {
        let before = sample(None);
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(60) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = sample(None);
        let per = before.per_message(&after, 1, false);
        assert!(per.client_us.is_some_and(|us| us > 0.0));
        assert!(per.broker_us.is_none());
    }
}
