//! A minimal client for RabbitMQ's management HTTP API, for what AMQP cannot tell: bindings.
//!
//! Optional everywhere: Courier works without the management plugin, and says what it could
//! not verify.

use crate::amqp::AmqpUrl;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::time::Duration;

/// Management API endpoint plus credentials (the AMQP ones unless told otherwise).
#[derive(Clone)]
pub struct Management {
    /// `http://host:15672`, without a trailing slash.
    base: String,
    /// Basic-auth user.
    user: String,
    /// Basic-auth password; never printed.
    password: String,
    /// vhost whose objects we look at.
    vhost: String,
    /// Pooled HTTP client with a short timeout: this is a diagnostic, not a hot path.
    client: reqwest::Client,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Management({})", self.base)
    }
}

/// Why the management API could not answer.
#[derive(Debug, thiserror::Error)]
#[error("management API at {base}: {reason}")]
pub struct ManagementError {
    base: String,
    reason: String,
}

#[derive(Deserialize)]
struct Binding {
    source: String,
    destination: String,
    destination_type: String,
    routing_key: String,
}

impl Management {
    /// A client for `base` (e.g. `http://127.0.0.1:15672`) using the AMQP URL's credentials.
    pub fn new(base: &str, amqp: &AmqpUrl) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            user: amqp.username().to_owned(),
            password: amqp.password_for_http().to_owned(),
            vhost: amqp.vhost().to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    fn err(&self, reason: impl ToString) -> ManagementError {
        ManagementError {
            base: self.base.clone(),
            reason: crate::amqp::redact(&reason.to_string()),
        }
    }

    /// Every (exchange, queue, routing key) binding in the vhost.
    ///
    /// # Errors
    /// [`ManagementError`] if the API is unreachable, refuses the credentials or answers oddly.
    pub async fn bindings(&self) -> Result<BTreeSet<(String, String, String)>, ManagementError> {
        let vhost: String =
            percent_encoding::utf8_percent_encode(&self.vhost, percent_encoding::NON_ALPHANUMERIC)
                .collect();
        let resp = self
            .client
            .get(format!("{}/api/bindings/{vhost}", self.base))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| self.err(e))?;
        if !resp.status().is_success() {
            return Err(self.err(format!("HTTP {}", resp.status())));
        }
        let bindings: Vec<Binding> = resp.json().await.map_err(|e| self.err(e))?;
        Ok(bindings
            .into_iter()
            .filter(|b| b.destination_type == "queue")
            .map(|b| (b.source, b.destination, b.routing_key))
            .collect())
    }
}
