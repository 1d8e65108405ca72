//! A virtual host of a test's own, for tests that need an empty broker namespace (an import of
//! definitions, unprefixed names): created over the management API with the test user's
//! permissions, and deleted with everything in it when dropped, also after a panic.

use crate::queues::percent_encode;
use crate::{management_url, parsed_url, unique_prefix};

/// A fresh vhost, deleted on drop.
pub struct ScratchVhost {
    /// Its name (unique per test and run).
    pub name: String,
}

impl ScratchVhost {
    /// Creates a vhost named after `name` and gives the test user all permissions on it.
    pub async fn create(name: &str) -> Self {
        let vhost = Self {
            name: unique_prefix(name).trim_end_matches('.').to_owned(),
        };
        // `vhost` is armed before the first request: a half-made vhost is deleted too.
        let url = parsed_url();
        let client = reqwest::Client::new();
        let put = |path: String, body: serde_json::Value| {
            client
                .put(format!("{}{path}", management_url()))
                .basic_auth(url.username(), Some(url.password_for_http()))
                .json(&body)
                .send()
        };
        let r = put(
            format!("/api/vhosts/{}", percent_encode(&vhost.name)),
            serde_json::json!({}),
        )
        .await
        .expect("management API answers");
        assert!(r.status().is_success(), "create vhost: {}", r.status());
        let r = put(
            format!(
                "/api/permissions/{}/{}",
                percent_encode(&vhost.name),
                percent_encode(url.username())
            ),
            serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await
        .expect("management API answers");
        assert!(r.status().is_success(), "grant permissions: {}", r.status());
        vhost
    }

    /// `AMQP_URL` of the broker under test with this vhost instead of its own.
    pub fn amqp_url(&self) -> String {
        let url = parsed_url();
        let a = &url.uri().authority;
        format!(
            "{}://{}:{}@{}:{}/{}",
            url.uri().scheme,
            percent_encode(url.username()),
            percent_encode(url.password_for_http()),
            a.host,
            a.port,
            percent_encode(&self.name)
        )
    }
}

impl Drop for ScratchVhost {
    fn drop(&mut self) {
        let path = format!(
            "{}/api/vhosts/{}",
            management_url(),
            percent_encode(&self.name)
        );
        // Its own runtime on its own thread, so it also works from inside a `#[tokio::test]`.
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let url = parsed_url();
                let _ = reqwest::Client::new()
                    .delete(path)
                    .basic_auth(url.username(), Some(url.password_for_http()))
                    .send()
                    .await;
            });
        });
        let _ = handle.join();
    }
}
