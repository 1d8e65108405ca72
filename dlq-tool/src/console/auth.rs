//! Who may use the console: the token, sessions, and a CSRF token per session.
//!
//! - The token is required on every request: `?token=` once (the URL the console printed),
//!   which opens a session and redirects to the same page without it, so the token does not stay
//!   in the address bar or the history; then the session cookie (`HttpOnly`, `SameSite=Strict`,
//!   a random id that is not the token). Scripts may send the token in a header instead
//!   (`Authorization: Bearer TOKEN`); such requests can read, but have no session, so no action.
//! - Anything else gets 401.
//! - Every action is a POST whose form carries the session's CSRF token; a POST without it (or
//!   with another session's) gets 403. `SameSite=Strict` already keeps other sites' forms from
//!   sending the cookie; the CSRF token also covers a browser that ignores it.
//!
//! Tokens are compared in constant time. Sessions live in memory: a restart logs everyone out.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The shortest token `--token` accepts.
pub const MIN_TOKEN: usize = 16;

/// The session cookie's name.
const COOKIE: &str = "courier_console";

/// Sessions kept at most; the oldest goes first (a session is one browser's login).
const MAX_SESSIONS: usize = 256;

/// `bytes` random bytes as hex, from the OS-seeded CSPRNG.
pub fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// Compares two secrets without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The console's token and its open sessions.
pub struct Auth {
    /// The token every request needs (or a session opened with it).
    token: String,
    /// Open sessions: their id (the cookie) → their CSRF token and when they were opened.
    sessions: Mutex<HashMap<String, (String, Instant)>>,
}

/// The request's session, for handlers (a request authenticated by the header has none).
#[derive(Clone, Debug)]
pub struct Session {
    /// The CSRF token its forms carry.
    pub csrf: String,
}

impl Auth {
    /// The console's lock, with `token`.
    pub fn new(token: String) -> Self {
        Self {
            token,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a session: its id (for the cookie).
    fn open(&self) -> String {
        let id = random_hex(32);
        let mut s = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.len() >= MAX_SESSIONS {
            if let Some(oldest) = s
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            {
                s.remove(&oldest);
            }
        }
        s.insert(id.clone(), (random_hex(32), Instant::now()));
        id
    }

    /// The session of cookie value `id`, if it is open.
    fn session(&self, id: &str) -> Option<Session> {
        let s = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.iter()
            .find(|(k, _)| same(k, id))
            .map(|(_, (csrf, _))| Session { csrf: csrf.clone() })
    }

    /// Whether `given` is the token.
    fn is_token(&self, given: &str) -> bool {
        same(given, &self.token)
    }
}

/// The value of cookie `name` in the request's headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `token` query parameter, and the rest of the query without it.
fn token_in_query(query: &str) -> Option<(String, String)> {
    let mut token = None;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.strip_prefix("token=") {
            Some(t) => token = Some(t.to_owned()),
            None if !pair.is_empty() => rest.push(pair),
            None => {}
        }
    }
    token.map(|t| (t, rest.join("&")))
}

/// The answer to a request without the token.
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "401 Unauthorized: the Courier console needs its token. Open the URL it printed when it \
         started (http://HOST:PORT/?token=...), or send `Authorization: Bearer TOKEN`.\n",
    )
        .into_response()
}

/// Middleware: lets a request through with a session (or the token in a header), opens a
/// session for `?token=`, answers 401 otherwise.
pub async fn require(State(auth): State<Arc<Auth>>, mut request: Request, next: Next) -> Response {
    let uri = request.uri().clone();
    if let Some((given, rest)) = uri.query().and_then(token_in_query) {
        if !auth.is_token(&given) {
            return unauthorized();
        }
        let id = auth.open();
        let to = if rest.is_empty() {
            uri.path().to_owned()
        } else {
            format!("{}?{rest}", uri.path())
        };
        return (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, to),
                (
                    header::SET_COOKIE,
                    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict"),
                ),
            ],
        )
            .into_response();
    }
    if let Some(session) = cookie(request.headers(), COOKIE).and_then(|id| auth.session(id)) {
        request.extensions_mut().insert(session);
        return next.run(request).await;
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_some_and(|t| auth.is_token(t.trim())) {
        return next.run(request).await;
    }
    unauthorized()
}

/// Whether a POST's `csrf` field is its session's token; `Err` says why not (answer 403 with
/// it, [`forbidden`]).
pub fn check_csrf(session: Option<&Session>, given: Option<&str>) -> Result<(), &'static str> {
    match (session, given) {
        (Some(s), Some(g)) if same(&s.csrf, g) => Ok(()),
        (None, _) => Err(
            "403 Forbidden: actions need a session (open the console's URL in a browser); a request with the token in a header can only read",
        ),
        _ => Err(
            "403 Forbidden: the form's CSRF token is missing or is not this session's; reload the page and try again",
        ),
    }
}

/// A 403 with `why`.
pub fn forbidden(why: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{why}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_taken_out_of_the_query() {
        assert_eq!(
            token_in_query("token=abc&group=96da919e"),
            Some(("abc".to_owned(), "group=96da919e".to_owned()))
        );
        assert_eq!(
            token_in_query("token=abc"),
            Some(("abc".to_owned(), String::new()))
        );
        assert_eq!(token_in_query("group=1"), None);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same("abcdef", "abcdef"));
        assert!(!same("abcdef", "abcdeg"));
        assert!(!same("abc", "abcdef"));
    }

    #[test]
    fn sessions_have_their_own_csrf_tokens() {
        let auth = Auth::new("t".repeat(16));
        let (a, b) = (auth.open(), auth.open());
        let (sa, sb) = (
            auth.session(&a).expect("open"),
            auth.session(&b).expect("open"),
        );
        assert_ne!(sa.csrf, sb.csrf);
        assert!(check_csrf(Some(&sa), Some(&sa.csrf)).is_ok());
        assert!(check_csrf(Some(&sa), Some(&sb.csrf)).is_err());
        assert!(check_csrf(Some(&sa), None).is_err());
        assert!(check_csrf(None, Some(&sa.csrf)).is_err());
        assert!(auth.session("nope").is_none());
    }
}
