//! PostgreSQL connections: the database URL (password never displayed), the pool the claims
//! run on, the `LISTEN` connection that wakes the relay, and readable driver errors.

use super::RelayError;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

/// How long a connection attempt may take before it counts as "database down".
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed PostgreSQL URL (`postgres://user:password@host:5432/db` or `key=value` form) whose
/// `Display` and `Debug` never show the password.
#[derive(Clone)]
pub struct DbUrl {
    /// The driver's configuration (holds the password: never log it).
    config: tokio_postgres::Config,
    /// The URL as given, password replaced, for logs and errors.
    shown: String,
}

/// Replaces the password of a `postgres://` URL or a `password=` key with `***`.
pub fn redact(text: &str) -> String {
    let text = crate::amqp::redact(text);
    // key=value connection strings: `host=db password=secret user=app`.
    let mut out = Vec::new();
    for word in text.split(' ') {
        match word.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                out.push(format!("{key}=***"));
            }
            _ => out.push(word.to_owned()),
        }
    }
    out.join(" ")
}

impl FromStr for DbUrl {
    type Err = RelayError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shown = redact(s);
        let mut config = tokio_postgres::Config::from_str(s).map_err(|e| RelayError::BadUrl {
            url: shown.clone(),
            reason: redact(&e.to_string()),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A dead peer (no FIN, no RST) must fail the claim's transaction, not hang it.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        Ok(Self { config, shown })
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl DbUrl {
    /// The driver configuration with `application_name` set, so `pg_stat_activity` says which
    /// process holds a claim.
    fn named(&self, application_name: &str) -> tokio_postgres::Config {
        let mut c = self.config.clone();
        c.application_name(application_name);
        c
    }

    /// A pool of `size` connections, opened on first use (so a database that is down at start
    /// is retried like one that goes down later).
    ///
    /// # Errors
    /// [`RelayError::BadUrl`] if the pool cannot be built from the URL.
    pub fn pool(&self, application_name: &str, size: usize) -> Result<Pool, RelayError> {
        let manager = Manager::from_config(
            self.named(application_name),
            NoTls,
            ManagerConfig {
                // A connection that died while idle fails its next query, which the relay
                // retries on another: Verified's extra round trip per claim buys nothing.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(size.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT * 2))
            .wait_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| RelayError::BadUrl {
                url: self.shown.clone(),
                reason: e.to_string(),
            })
    }

    /// One connection outside the pool (migrations and tests).
    ///
    /// # Errors
    /// [`RelayError::Db`] when the database cannot be reached.
    pub async fn connect(
        &self,
        application_name: &str,
    ) -> Result<tokio_postgres::Client, RelayError> {
        let (client, conn) = self
            .named(application_name)
            .connect(NoTls)
            .await
            .map_err(|e| self.error("connecting", &e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "database connection ended");
            }
        });
        Ok(client)
    }

    /// The error for a driver failure while doing `what`.
    pub fn error(&self, what: impl Into<String>, e: &tokio_postgres::Error) -> RelayError {
        RelayError::Db {
            url: self.shown.clone(),
            what: what.into(),
            reason: describe(e),
        }
    }

    /// Keeps a `LISTEN` on `channel` open until `cancel`, waking `wake` on every notification
    /// and once after each (re)connect (rows inserted while it was away are found by that
    /// claim). A lost connection is reopened with backoff; meanwhile polling finds new rows.
    pub async fn listen(
        self,
        application_name: String,
        channel: String,
        wake: Arc<Notify>,
        cancel: CancellationToken,
    ) {
        let mut delays = super::backoff::DATABASE.delays();
        let config = self.named(&application_name);
        loop {
            let connected = tokio::select! {
                () = cancel.cancelled() => return,
                r = config.connect(NoTls) => r,
            };
            let failure = match connected {
                Ok((client, mut conn)) => {
                    let notified = wake.clone();
                    // The connection must be polled for LISTEN to complete and for
                    // notifications to arrive: a task of its own reads it.
                    let mut driver = tokio::spawn(async move {
                        let mut messages =
                            futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                        while let Some(m) = messages.next().await {
                            match m {
                                Ok(AsyncMessage::Notification(_)) => notified.notify_one(),
                                Ok(_) => {}
                                Err(e) => return describe(&e),
                            }
                        }
                        "the server closed the connection".to_owned()
                    });
                    match client.batch_execute(&format!("LISTEN \"{channel}\"")).await {
                        Ok(()) => {
                            tracing::debug!(%channel, "listening for new outbox rows");
                            delays.reset();
                            wake.notify_one();
                            tokio::select! {
                                () = cancel.cancelled() => {
                                    driver.abort();
                                    return;
                                }
                                r = &mut driver => r.unwrap_or_else(|e| e.to_string()),
                            }
                        }
                        Err(e) => {
                            driver.abort();
                            describe(&e)
                        }
                    }
                }
                Err(e) => describe(&e),
            };
            let wait = delays.next_delay();
            tracing::warn!(url = %self, error = %failure, retry_in = ?wait, "LISTEN connection to the database lost; polling until it is back");
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// A driver error as one line: the server's message, SQLSTATE and hint when the server
/// answered, else the I/O cause (tokio-postgres' own `Display` is often just "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(hint) = db.hint() {
            s.push_str("; hint: ");
            s.push_str(hint);
        }
        return redact(&s);
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    redact(&s)
}

/// The SQLSTATE of a server error, if the server answered.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|db| db.code().code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_shown() {
        let url: DbUrl = "postgres://app:s3cret@db:5432/orders"
            .parse()
            .expect("valid");
        assert_eq!(url.to_string(), "postgres://app:***@db:5432/orders");
        assert!(!format!("{url:?}").contains("s3cret"));
        let kv: DbUrl = "host=db user=app password=s3cret dbname=orders"
            .parse()
            .expect("valid");
        assert_eq!(
            kv.to_string(),
            "host=db user=app password=*** dbname=orders"
        );
    }

    #[test]
    fn a_bad_url_names_itself_without_its_password() {
        let e = "postgres://app:s3cret@db:notaport/x"
            .parse::<DbUrl>()
            .expect_err("bad port");
        let text = e.to_string();
        assert!(text.contains("postgres://app:***@db"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}
