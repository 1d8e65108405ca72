//! Broker URLs and connections.
//!
//! [`AmqpUrl`] is the only place that holds the AMQP password; its `Display` and `Debug` redact
//! it, so a URL can be logged or put in an error without leaking the secret.

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use std::fmt;
use std::str::FromStr;

/// The default broker: a local RabbitMQ with the guest account, default vhost.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Heartbeat used unless the URL sets one: short enough that a frozen network (no FIN, no RST)
/// is noticed within ~20 s, long enough not to trip on a busy 2-core machine.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// Connect timeout unless the URL sets one.
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;

/// A parsed AMQP URL whose `Display`/`Debug` never show the password.
#[derive(Clone)]
pub struct AmqpUrl {
    uri: AMQPUri,
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
        let mut uri = AMQPUri::from_str(s).map_err(|reason| AmqpError::InvalidUrl {
            url: redact(s),
            reason: redact(&reason),
        })?;
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
        }
        if uri.query.connection_timeout.is_none() {
            uri.query.connection_timeout = Some(DEFAULT_CONNECT_TIMEOUT_MS);
        }
        Ok(Self { uri })
    }
}

impl AmqpUrl {
    /// The parsed URI, for lapin. Holds the password: never log it.
    pub fn uri(&self) -> &AMQPUri {
        &self.uri
    }

    /// The password, so that errors from elsewhere can be scrubbed of it.
    fn password(&self) -> &str {
        &self.uri.authority.userinfo.password
    }

    /// Removes the password from any text (a broker or library error).
    pub fn scrub(&self, text: &str) -> String {
        let text = redact(text);
        let password = self.password();
        if password.len() >= 3 {
            text.replace(password, "***")
        } else {
            text
        }
    }

    /// The management API's base URL guessed from this URL: same host, port 15672, http.
    pub fn management_guess(&self) -> String {
        format!("http://{}:15672", self.uri.authority.host)
    }

    /// The username (not secret).
    pub fn username(&self) -> &str {
        &self.uri.authority.userinfo.username
    }

    /// The vhost (not secret).
    pub fn vhost(&self) -> &str {
        &self.uri.vhost
    }

    /// The password, for the management API's basic auth only.
    pub fn password_for_http(&self) -> &str {
        self.password()
    }

    /// Opens a connection named `name` (shown in the management UI's connection list).
    ///
    /// # Errors
    /// [`AmqpError::Connect`], redacted, when the broker is unreachable or refuses us.
    pub async fn connect(&self, name: &str) -> Result<Connection, AmqpError> {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        Connection::connect_uri(self.uri.clone(), props)
            .await
            .map_err(|e| AmqpError::Connect {
                url: self.to_string(),
                reason: self.scrub(&e.to_string()),
            })
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.uri.authority;
        let scheme = match self.uri.scheme {
            lapin::uri::AMQPScheme::AMQP => "amqp",
            lapin::uri::AMQPScheme::AMQPS => "amqps",
        };
        let vhost: String = percent_encoding::utf8_percent_encode(
            &self.uri.vhost,
            percent_encoding::NON_ALPHANUMERIC,
        )
        .collect();
        write!(
            f,
            "{scheme}://{}:***@{}:{}/{vhost}",
            a.userinfo.username, a.host, a.port
        )
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
    fn defaults_heartbeat() {
        let url: AmqpUrl = DEFAULT_AMQP_URL.parse().expect("valid");
        assert_eq!(url.uri().query.heartbeat, Some(DEFAULT_HEARTBEAT_SECS));
        assert_eq!(url.vhost(), "/");
    }
}
