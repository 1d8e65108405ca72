//! Which RabbitMQ is on the other end.
//!
//! lapin does not expose the `server-properties` of `connection.start`, so the version is read
//! from a short connection of our own: open the socket (TLS too, through lapin's own transport),
//! send the protocol header, parse the first frame, close. No credentials are sent.

use crate::amqp::AmqpUrl;
use amq_protocol::frame::{parse_frame, AMQPFrame};
use lapin::protocol::{connection::AMQPMethod, AMQPClass};
use lapin::tcp::AMQPUriTcpExt;
use lapin::types::AMQPValue;
use std::fmt;
use std::io::{Read, Write};
use std::time::Duration;

/// A RabbitMQ version as `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BrokerVersion {
    /// Major version (3, 4).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl BrokerVersion {
    /// Parses `3.10.8`, `4.0.0-rc.1`, `3.13.7+1.g123`: leading numbers only.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split(['.', '-', '+']).map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next().flatten().unwrap_or(0);
        let patch = parts.next().flatten().unwrap_or(0);
        Some(Self {
            major,
            minor,
            patch,
        })
    }

    /// Quorum queues support message priorities from RabbitMQ 4.0.
    pub fn quorum_priorities(self) -> bool {
        self.major >= 4
    }

    /// How many message priority levels a quorum queue has on this version (RabbitMQ's quorum
    /// queue documentation for 3.13, 4.0-4.2 and 4.3). Quorum queues never take
    /// `x-max-priority`: 3.x and 4.0-4.2 refuse it (406 PRECONDITION_FAILED), 4.3 ignores it.
    /// - 0 on 3.x: no message priorities, messages leave in publish order;
    /// - 2 on 4.0-4.2, always on: priority 0-4 (or none) is normal, 5 and above is high; while
    ///   both wait, two high messages are delivered for every normal one (and a high message
    ///   published before a normal one always goes first);
    /// - 32 from 4.3: strict levels 0-31 (higher values count as 31); a message without a
    ///   priority counts as 4, where a classic queue counts it as 0.
    pub fn quorum_priority_levels(self) -> u8 {
        match (self.major, self.minor) {
            (0..=3, _) => 0,
            (4, 0..=2) => 2,
            _ => 32,
        }
    }

    /// Quorum queues have message TTL and `x-dead-letter-strategy = at-least-once` from
    /// RabbitMQ 3.10: retry tiers that are quorum queues need both.
    pub fn quorum_ttl_and_at_least_once(self) -> bool {
        (self.major, self.minor) >= (3, 10)
    }
}

impl fmt::Display for BrokerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why the version could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VersionProbeError {
    /// Could not connect or read.
    #[error("cannot read the broker version from {url}: {reason}")]
    Io {
        /// The redacted URL.
        url: String,
        /// What failed.
        reason: String,
    },
}

/// Reads the broker's version from its `connection.start` frame.
///
/// # Errors
/// [`VersionProbeError`] if the broker cannot be reached or does not speak AMQP 0-9-1.
pub async fn probe_version(url: &AmqpUrl) -> Result<Option<BrokerVersion>, VersionProbeError> {
    Ok(probe_server(url).await?.version)
}

/// What a broker says of itself in `connection.start`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// `version`, when it parses.
    pub version: Option<BrokerVersion>,
    /// `cluster_name`: tells two brokers on one host apart (the management API reports it too).
    pub cluster_name: Option<String>,
}

/// Reads the broker's `connection.start` server properties.
///
/// # Errors
/// [`VersionProbeError`] if the broker cannot be reached or does not speak AMQP 0-9-1.
pub async fn probe_server(url: &AmqpUrl) -> Result<ServerInfo, VersionProbeError> {
    // The nodes in the order a connection would try them: the version is the answering node's
    // (a rolling upgrade can leave a cluster's nodes on two versions for a while).
    let mut last = None;
    for (_, uri) in url.nodes_in_turn() {
        match probe_node(uri.clone(), url.to_string()).await {
            Ok(info) => return Ok(info),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| VersionProbeError::Io {
        url: url.to_string(),
        reason: "no node to probe".to_owned(),
    }))
}

async fn probe_node(
    uri: lapin::uri::AMQPUri,
    redacted: String,
) -> Result<ServerInfo, VersionProbeError> {
    let fail = move |reason: String| VersionProbeError::Io {
        url: redacted.clone(),
        reason,
    };
    let read = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let mut stream = uri.connect().map_err(|e| e.to_string())?;
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        // TcpStream derefs to the std socket under any TLS layer.
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"AMQP\x00\x00\x09\x01")
            .map_err(|e| e.to_string())?;
        // A frame header is 7 bytes: type, channel (2), size (4).
        let mut header = [0u8; 7];
        stream.read_exact(&mut header).map_err(|e| e.to_string())?;
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
        if size > 1 << 20 {
            return Err(format!(
                "first frame of {size} bytes is not a connection.start"
            ));
        }
        let mut frame = header.to_vec();
        frame.resize(7 + size + 1, 0);
        stream
            .read_exact(&mut frame[7..])
            .map_err(|e| e.to_string())?;
        Ok(frame)
    })
    .await
    .map_err(|e| fail(e.to_string()))?
    .map_err(&fail)?;
    let (_, parsed) =
        parse_frame(read.as_slice()).map_err(|e| fail(format!("not an AMQP 0-9-1 broker: {e}")))?;
    match parsed {
        AMQPFrame::Method(0, AMQPClass::Connection(AMQPMethod::Start(start))) => {
            let props = start.server_properties.inner();
            let text = |key: &str| {
                props.get(key).and_then(|v| match v {
                    AMQPValue::LongString(s) => {
                        Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
                    _ => None,
                })
            };
            Ok(ServerInfo {
                version: text("version").as_deref().and_then(BrokerVersion::parse),
                cluster_name: text("cluster_name"),
            })
        }
        _ => Err(fail("the first frame was not connection.start".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            BrokerVersion::parse("3.10.8"),
            Some(BrokerVersion {
                major: 3,
                minor: 10,
                patch: 8
            })
        );
        assert_eq!(BrokerVersion::parse("4.0.0-rc.1").map(|v| v.major), Some(4));
        assert_eq!(BrokerVersion::parse("garbage"), None);
        assert!(!BrokerVersion::parse("3.13.7").is_some_and(|v| v.quorum_priorities()));
        assert!(BrokerVersion::parse("4.1.0").is_some_and(|v| v.quorum_priorities()));
    }

    #[test]
    fn quorum_features_by_version() {
        let v = |s: &str| BrokerVersion::parse(s).expect("version");
        assert_eq!(v("3.13.7").quorum_priority_levels(), 0);
        assert_eq!(v("4.0.5").quorum_priority_levels(), 2);
        assert_eq!(v("4.2.4").quorum_priority_levels(), 2);
        assert_eq!(v("4.3.0").quorum_priority_levels(), 32);
        assert_eq!(v("5.0.0").quorum_priority_levels(), 32);
        assert!(!v("3.9.29").quorum_ttl_and_at_least_once());
        assert!(v("3.10.0").quorum_ttl_and_at_least_once());
        assert!(v("4.0.5").quorum_ttl_and_at_least_once());
    }
}
