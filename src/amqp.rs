//! Broker URLs and connections.
//!
//! [`AmqpUrl`] is the only place that holds the AMQP password; its `Display` and `Debug` redact
//! it, so a URL can be logged or put in an error without leaking the secret.
//!
//! It is also the one place that knows a cluster's nodes: `AMQP_URL` may list several, comma
//! separated (`amqp://u:p@node1:5672/%2f,amqp://u:p@node2:5672/%2f`). [`AmqpUrl::connect`]
//! tries them in turn, starting with the node that answered last, and every clone of one
//! `AmqpUrl` shares that choice: when a connection is lost its owner calls
//! [`AmqpUrl::mark_lost`], and the next connect of any part of the process (consumer,
//! publisher, admin) starts at the next node instead of waiting on the dead or hung one.

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The default broker: a local RabbitMQ with the guest account, default vhost.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Heartbeat used unless the URL sets one: short enough that a frozen network (no FIN, no RST)
/// is noticed within ~20 s, long enough not to trip on a busy 2-core machine.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// Connect timeout unless the URL sets one.
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;

/// A parsed AMQP URL (one node, or a cluster's nodes) whose `Display`/`Debug` never show the
/// password.
#[derive(Clone)]
pub struct AmqpUrl {
    /// Every node, in the order given; never empty.
    nodes: Arc<[AMQPUri]>,
    /// The node to try first: the one that answered last. Shared by every clone, so a process
    /// moves to a surviving node together.
    preferred: Arc<AtomicUsize>,
}

/// Which of an [`AmqpUrl`]'s nodes a connection went to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Position in the URL's list.
    pub index: usize,
    /// `host:port`, for logs, `/metrics` and `/readyz` (no credentials).
    pub address: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

/// Why a URL or a connection failed; never contains the password.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The URL does not parse.
    #[error("invalid AMQP URL {url}: {reason} (expected amqp://user:password@host:5672/vhost)")]
    InvalidUrl {
        /// The URL with its password replaced.
        url: String,
        /// The parser's reason.
        reason: String,
    },
    /// The broker could not be reached or refused the connection.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The redacted URL.
        url: String,
        /// What failed (already redacted).
        reason: String,
    },
}

impl AmqpError {
    /// True when retrying later may help (network, broker down), false for a bad URL.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }
}

/// Replaces `user:password@` with `user:***@` in any URL-like text.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme) = rest.find("://") {
        let (head, tail) = rest.split_at(scheme + 3);
        out.push_str(head);
        let end = tail.find(['/', ' ', '"', '\'']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon]);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

impl FromStr for AmqpUrl {
    type Err = AmqpError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let mut nodes = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let invalid = |reason: String| AmqpError::InvalidUrl {
                url: redact(s),
                reason: if parts.len() > 1 {
                    format!(
                        "node {} of {} ({}): {reason}",
                        i + 1,
                        parts.len(),
                        redact(part)
                    )
                } else {
                    reason
                },
            };
            if part.is_empty() {
                return Err(invalid(
                    "empty node; separate nodes with single commas, no trailing comma".to_owned(),
                ));
            }
            if !part.contains("://") {
                return Err(invalid(
                    "every node is a whole URL with its scheme, e.g. amqp://user:password@node2:5672/%2f".to_owned(),
                ));
            }
            let mut uri = AMQPUri::from_str(part).map_err(|reason| invalid(redact(&reason)))?;
            if uri.query.heartbeat.is_none() {
                uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
            }
            if uri.query.connection_timeout.is_none() {
                uri.query.connection_timeout = Some(DEFAULT_CONNECT_TIMEOUT_MS);
            }
            // One process, one vhost and one login: nodes of one cluster share users and
            // vhosts, so a list that differs is a mistake, not a feature.
            if let Some(first) = nodes.first() {
                let first: &AMQPUri = first;
                if uri.vhost != first.vhost {
                    return Err(invalid(format!(
                        "vhost '{}' differs from the first node's '{}'; the nodes of one AMQP_URL are one cluster and share the vhost",
                        uri.vhost, first.vhost
                    )));
                }
                if uri.authority.userinfo.username != first.authority.userinfo.username {
                    return Err(invalid(
                        "user differs from the first node's; the nodes of one AMQP_URL are one cluster and share the login".to_owned(),
                    ));
                }
            }
            nodes.push(uri);
        }
        Ok(Self {
            nodes: nodes.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
        })
    }
}

impl AmqpUrl {
    /// The first node's parsed URI, for lapin. Holds the password: never log it.
    pub fn uri(&self) -> &AMQPUri {
        &self.nodes[0]
    }

    /// Every node's URI, the one to try first first (see [`AmqpUrl::connect`]), each with its
    /// [`Node`]. Hold passwords: never log them.
    pub fn nodes_in_turn(&self) -> Vec<(Node, &AMQPUri)> {
        let n = self.nodes.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        (0..n)
            .map(|k| {
                let i = (start + k) % n;
                (self.node(i), &self.nodes[i])
            })
            .collect()
    }

    /// How many nodes the URL lists.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    fn node(&self, index: usize) -> Node {
        let a = &self.nodes[index].authority;
        let address = if a.host.contains(':') {
            format!("[{}]:{}", a.host, a.port)
        } else {
            format!("{}:{}", a.host, a.port)
        };
        Node { index, address }
    }

    /// The password, so that errors from elsewhere can be scrubbed of it.
    fn password(&self) -> &str {
        &self.uri().authority.userinfo.password
    }

    /// Removes the password (of any node) from any text (a broker or library error).
    pub fn scrub(&self, text: &str) -> String {
        let mut text = redact(text);
        for uri in self.nodes.iter() {
            let password = &uri.authority.userinfo.password;
            if password.len() >= 3 {
                text = text.replace(password.as_str(), "***");
            }
        }
        text
    }

    /// The management API's base URL guessed from this URL: the first node's host, port 15672,
    /// http.
    pub fn management_guess(&self) -> String {
        format!("http://{}:15672", self.uri().authority.host)
    }

    /// The username (not secret).
    pub fn username(&self) -> &str {
        &self.uri().authority.userinfo.username
    }

    /// The vhost (not secret).
    pub fn vhost(&self) -> &str {
        &self.uri().vhost
    }

    /// The password, for the management API's basic auth only.
    pub fn password_for_http(&self) -> &str {
        self.password()
    }

    /// Opens a connection named `name` (shown in the management UI's connection list), to the
    /// first node that answers; see [`AmqpUrl::connect_node`].
    ///
    /// # Errors
    /// [`AmqpError::Connect`], redacted, when no node is reachable or every node refuses us.
    pub async fn connect(&self, name: &str) -> Result<Connection, AmqpError> {
        self.connect_node(name).await.map(|(conn, _)| conn)
    }

    /// Opens a connection named `name` and says which node took it.
    ///
    /// Nodes are tried in turn, starting with the preferred one (the last that answered, or
    /// the next after one [marked lost](AmqpUrl::mark_lost)); each has the URL's connection
    /// timeout (10 s unless `connection_timeout` says otherwise). Before a node is tried, the
    /// preference moves past it, so a caller that gives up mid-attempt (its own deadline) does
    /// not start at a hung node again.
    ///
    /// # Errors
    /// [`AmqpError::Connect`], redacted, naming every node's failure.
    pub async fn connect_node(&self, name: &str) -> Result<(Connection, Node), AmqpError> {
        let n = self.nodes.len();
        let mut failures = Vec::new();
        for (node, uri) in self.nodes_in_turn() {
            self.preferred
                .store((node.index + 1) % n, Ordering::Relaxed);
            let props = ConnectionProperties::default().with_connection_name(name.into());
            match Connection::connect_uri(uri.clone(), props).await {
                Ok(conn) => {
                    self.preferred.store(node.index, Ordering::Relaxed);
                    return Ok((conn, node));
                }
                Err(e) => failures.push((node, self.scrub(&e.to_string()))),
            }
        }
        let reason = if n == 1 {
            failures.pop().map(|(_, r)| r).unwrap_or_default()
        } else {
            failures
                .iter()
                .map(|(node, r)| format!("{node}: {r}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        Err(AmqpError::Connect {
            url: self.to_string(),
            reason,
        })
    }

    /// Says that a connection to `node` was lost: unless another part of the process has
    /// already moved on, the next connect starts at the node after it. A node that died
    /// refuses at once, but a hung one (frozen, partitioned) would hold every connect for its
    /// full timeout.
    pub fn mark_lost(&self, node: &Node) {
        let n = self.nodes.len();
        if n > 1 {
            let _ = self.preferred.compare_exchange(
                node.index,
                (node.index + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, uri) in self.nodes.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let a = &uri.authority;
            let scheme = match uri.scheme {
                lapin::uri::AMQPScheme::AMQP => "amqp",
                lapin::uri::AMQPScheme::AMQPS => "amqps",
            };
            let vhost: String = percent_encoding::utf8_percent_encode(
                &uri.vhost,
                percent_encoding::NON_ALPHANUMERIC,
            )
            .collect();
            write!(
                f,
                "{scheme}://{}:***@{}:{}/{vhost}",
                a.userinfo.username, a.host, a.port
            )?;
        }
        Ok(())
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_debug_hide_the_password() {
        let url: AmqpUrl = "amqp://alice:s3cret-pw@broker:5672/prod"
            .parse()
            .expect("valid");
        assert_eq!(url.to_string(), "amqp://alice:***@broker:5672/prod");
        assert!(!format!("{url:?}").contains("s3cret-pw"));
        assert_eq!(
            url.scrub("auth failed for s3cret-pw"),
            "auth failed for ***"
        );
    }

    #[test]
    fn redact_handles_free_text() {
        assert_eq!(
            redact("failed: amqp://bob:hunter2@h:5672/%2f refused"),
            "failed: amqp://bob:***@h:5672/%2f refused"
        );
        assert_eq!(redact("no url here"), "no url here");
        assert_eq!(redact("http://host:15672/api"), "http://host:15672/api");
    }

    #[test]
    fn invalid_url_error_hides_the_password() {
        let err = "amqp://bob:hunter2@h:notaport/"
            .parse::<AmqpUrl>()
            .expect_err("invalid");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn a_node_list_parses_and_hides_every_password() {
        let url: AmqpUrl =
            "amqp://u:pw-one@h1:5681/%2f, amqp://u:pw-two@h2:5682/%2f,amqp://u:pw-two@h3/%2f"
                .parse()
                .expect("valid");
        assert_eq!(url.node_count(), 3);
        assert_eq!(
            url.to_string(),
            "amqp://u:***@h1:5681/%2F,amqp://u:***@h2:5682/%2F,amqp://u:***@h3:5672/%2F"
        );
        assert_eq!(url.scrub("pw-one and pw-two"), "*** and ***");
        let order: Vec<String> = url
            .nodes_in_turn()
            .iter()
            .map(|(n, _)| n.address.clone())
            .collect();
        assert_eq!(order, ["h1:5681", "h2:5682", "h3:5672"]);
        for (_, uri) in url.nodes_in_turn() {
            assert_eq!(uri.query.heartbeat, Some(DEFAULT_HEARTBEAT_SECS));
        }
    }

    #[test]
    fn a_lost_node_is_tried_last_by_every_clone() {
        let url: AmqpUrl = "amqp://u:p@h1/%2f,amqp://u:p@h2/%2f,amqp://u:p@h3/%2f"
            .parse()
            .expect("valid");
        let clone = url.clone();
        let (first, _) = url.nodes_in_turn().swap_remove(0);
        url.mark_lost(&first);
        let order: Vec<usize> = clone.nodes_in_turn().iter().map(|(n, _)| n.index).collect();
        assert_eq!(order, [1, 2, 0]);
        // A second report of the same loss (the publisher after the consumer) changes nothing.
        url.mark_lost(&first);
        assert_eq!(clone.nodes_in_turn()[0].0.index, 1);
    }

    #[test]
    fn a_bad_node_list_names_the_node() {
        for (list, says) in [
            ("amqp://u:p@h1/%2f,", "empty node"),
            ("amqp://u:secret-pw@h1/%2f,h2:5672", "whole URL"),
            ("amqp://u:p@h1/%2f,amqp://u:p@h2/other", "vhost 'other'"),
            ("amqp://u:p@h1/%2f,amqp://v:p@h2/%2f", "user differs"),
            (
                "amqp://u:p@h1/%2f,amqp://u:secret-pw@h2:x/%2f",
                "node 2 of 2",
            ),
        ] {
            let err = list.parse::<AmqpUrl>().expect_err(list).to_string();
            assert!(err.contains(says), "{list}: {err}");
            assert!(!err.contains("secret-pw"), "{err}");
        }
    }

    #[test]
    fn defaults_heartbeat() {
        let url: AmqpUrl = DEFAULT_AMQP_URL.parse().expect("valid");
        assert_eq!(url.uri().query.heartbeat, Some(DEFAULT_HEARTBEAT_SECS));
        assert_eq!(url.vhost(), "/");
    }
}
