//! CPU time per message, for the client and for the broker.
//!
//! On a 2-core machine shared by broker and clients, every CPU-second a client spends is taken
//! from the broker, so "µs of client CPU per message" explains a throughput ratio better than
//! the ratio itself, and "µs of broker CPU per message" shows what a scenario asks of the broker
//! (a retry costs the broker more than a plain delivery, whoever the client is).
//!
//! Read from `/proc`: this process's own time (in-process scenarios), its waited-for children's
//! time (scenarios run as processes), and the local broker's (`beam.smp`) when it runs here
//! (a cluster's nodes summed).

use courier::amqp::AmqpUrl;

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

/// The local broker's process id, if RabbitMQ runs on this machine: the first `beam.smp`.
pub fn find_broker() -> Option<u32> {
    beams().into_iter().next()
}

/// Every `beam.smp` process, by pid.
fn beams() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "beam.smp")
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Inodes of the sockets listening on TCP `port` (any address), from `/proc/net/tcp{,6}`.
fn listening_inodes(port: u16) -> Vec<u64> {
    let wanted = format!("{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    // local_address is "ADDR:PORT" in hex; state 0A is LISTEN; inode is field 9.
                    let local_port = f.get(1)?.rsplit(':').next()?;
                    (local_port == wanted && *f.get(3)? == "0A")
                        .then(|| f.get(9)?.parse().ok())
                        .flatten()
                })
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// The `beam.smp` that listens on `port`, if one does and its file descriptors can be read
/// (they can as root or as the broker's user).
fn beam_listening_on(port: u16, beams: &[u32]) -> Option<u32> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    beams.iter().copied().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.filter_map(Result::ok).any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|l| wanted.iter().any(|w| l.as_os_str() == w.as_str()))
            })
        })
    })
}

/// The local broker processes behind `url`: for every node on this machine (127.0.0.1,
/// localhost, ::1), the `beam.smp` listening on its port. With several brokers on the machine
/// (the default one and a cluster's nodes) this tells them apart. Empty when a node is remote
/// or cannot be told; a single-node URL then falls back to [`find_broker`].
pub fn find_brokers(url: &AmqpUrl) -> Vec<u32> {
    let beams = beams();
    let nodes = url.nodes_in_turn();
    let mut found = Vec::new();
    for (_, uri) in &nodes {
        let a = &uri.authority;
        let local = matches!(a.host.as_str(), "127.0.0.1" | "localhost" | "::1" | "[::1]");
        match local.then(|| beam_listening_on(a.port, &beams)).flatten() {
            Some(pid) if !found.contains(&pid) => found.push(pid),
            Some(_) => {}
            None if nodes.len() == 1 => return find_broker().into_iter().collect(),
            None => return Vec::new(),
        }
    }
    found
}

/// CPU seconds at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// This process (all threads).
    own: f64,
    /// Children this process has waited for.
    children: f64,
    /// The broker (every node, summed), if local.
    broker: Option<f64>,
}

/// Reads the counters now; `brokers` are the broker's processes (a cluster's nodes are
/// summed; none known, or one gone, gives no broker figure).
pub fn sample(brokers: &[u32]) -> Sample {
    let me = times("self").unwrap_or_default();
    let broker = if brokers.is_empty() {
        None
    } else {
        brokers
            .iter()
            .map(|p| times(&p.to_string()).map(|t| t[0] + t[1]))
            .sum::<Option<f64>>()
    };
    Sample {
        own: me[0] + me[1],
        children: me[2] + me[3],
        broker,
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
        let before = sample(&[]);
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(60) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = sample(&[]);
        let per = before.per_message(&after, 1, false);
        assert!(per.client_us.is_some_and(|us| us > 0.0));
        assert!(per.broker_us.is_none());
    }
}
