//! What the OTLP and Loki exporters share about talking HTTP to a backend: the client with its
//! timeout and TLS settings, the configured headers, and bearer or basic authentication.
//! Their retry policies differ and stay in the exporters.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::endpoint::{display_endpoint, parse_endpoint, pem_certificates, BasicAuth, Tls};

/// One backend endpoint and how to authenticate to it.
pub struct HttpTarget {
    http: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    bearer_token_file: String,
    /// User name and password file (empty: no password).
    basic_auth: Option<(String, String)>,
    /// Config section (`otlp`, `loki`), for messages.
    section: &'static str,
}

impl HttpTarget {
    pub fn new(
        section: &'static str,
        url: &str,
        timeout: Duration,
        headers: &BTreeMap<String, String>,
        bearer_token_file: &str,
        basic: &BasicAuth,
        tls: &Tls,
    ) -> anyhow::Result<Self> {
        let url = parse_endpoint(url).map_err(|e| anyhow::anyhow!("{section}.endpoint: {e}"))?;
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("tokenmeter/", env!("CARGO_PKG_VERSION")));
        if !tls.ca_file.is_empty() {
            let pem = std::fs::read(&tls.ca_file)
                .map_err(|e| anyhow::anyhow!("{section}.tls.ca_file {}: {e}", tls.ca_file))?;
            let certs = pem_certificates(&pem)
                .map_err(|e| anyhow::anyhow!("{section}.tls.ca_file {}: {e}", tls.ca_file))?;
            for der in certs {
                builder = builder.add_root_certificate(reqwest::Certificate::from_der(&der)?);
            }
        }
        if tls.insecure_skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let mut header_map = HeaderMap::new();
        for (k, v) in headers {
            // Checked by the config too; the value is never shown.
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| anyhow::anyhow!("{section}.headers.{k}: not a valid header name"))?;
            let mut value = HeaderValue::from_str(v).map_err(|_| {
                anyhow::anyhow!("{section}.headers.{k}: the value is not a valid header value")
            })?;
            value.set_sensitive(true);
            header_map.append(name, value);
        }
        let basic_auth = (!basic.username.is_empty())
            .then(|| (basic.username.clone(), basic.password_file.clone()));
        Ok(HttpTarget {
            http: builder.build()?,
            url,
            headers: header_map,
            bearer_token_file: bearer_token_file.to_string(),
            basic_auth,
            section,
        })
    }

    /// The endpoint as it may be shown (logs, `/status`): without userinfo or query.
    pub fn url(&self) -> String {
        display_endpoint(self.url.as_str())
    }

    /// A POST of `body` with the configured headers; the secret files (bearer token, basic
    /// auth password) are read when it is sent, at every attempt, so rotated secrets work.
    pub fn post(&self, content_type: &str, body: Vec<u8>) -> Post<'_> {
        let request = self
            .http
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        Post {
            target: self,
            request,
        }
    }

    /// A secret file's content; the error names the key and the path, never the content.
    fn read_secret(&self, key: &str, path: &str) -> Result<String, PushError> {
        let fail = |why: String| PushError {
            message: format!("{}.{key} {path}: {why}", self.section),
            source: None,
        };
        let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        if !meta.is_file() {
            return Err(fail("not a regular file".into()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        Ok(text)
    }
}

/// A request being built: [`HttpTarget::post`], then [`Post::send`].
pub struct Post<'a> {
    target: &'a HttpTarget,
    request: reqwest::RequestBuilder,
}

impl Post<'_> {
    /// One more header (as [`reqwest::RequestBuilder::header`]).
    pub fn header<K, V>(mut self, key: K, value: V) -> Self
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: Into<axum::http::Error>,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<axum::http::Error>,
    {
        self.request = self.request.header(key, value);
        self
    }

    /// Reads the secret files and sends. A secret file that cannot be read (or holds what
    /// cannot be a header) fails this attempt with an error naming the key and path, and is
    /// retried like any failure.
    pub async fn send(self) -> Result<reqwest::Response, PushError> {
        let t = self.target;
        let mut r = self.request;
        if !t.bearer_token_file.is_empty() {
            let token = t.read_secret("bearer_token_file", &t.bearer_token_file)?;
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
                    PushError {
                        message: format!(
                            "{}.bearer_token_file {}: the token (not shown) is not a valid HTTP \
                         header value",
                            t.section, t.bearer_token_file
                        ),
                        source: None,
                    }
                })?;
            value.set_sensitive(true);
            r = r.header(reqwest::header::AUTHORIZATION, value);
        }
        if let Some((user, password_file)) = &t.basic_auth {
            let password = if password_file.is_empty() {
                String::new()
            } else {
                let mut p = t.read_secret("basic_auth.password_file", password_file)?;
                p.truncate(p.trim_end().len());
                p
            };
            r = r.basic_auth(user, Some(password));
        }
        r.send().await.map_err(|e| PushError::http(e, &t.url))
    }
}

/// Why an attempt got no response: a secret file that cannot be read, or the HTTP client's
/// error with its causes (`error sending request: ...: tcp connect error: Connection refused`).
/// The text never holds the endpoint's userinfo or query string.
#[derive(Debug)]
pub struct PushError {
    message: String,
    source: Option<reqwest::Error>,
}

impl PushError {
    fn http(e: reqwest::Error, url: &reqwest::Url) -> Self {
        // reqwest's own text would repeat the URL with its credentials; its causes are kept.
        let e = e.without_url();
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            let text = c.to_string();
            if !message.ends_with(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            cause = c.source();
        }
        PushError {
            message: scrub(&message, url),
            source: Some(e),
        }
    }

    /// The HTTP client's error, if the attempt got as far as sending.
    pub fn reqwest_error(&self) -> Option<&reqwest::Error> {
        self.source.as_ref()
    }
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PushError {}

/// `text` with the endpoint's credentials (userinfo, query) removed wherever they appear.
fn scrub(text: &str, url: &reqwest::Url) -> String {
    let mut out = text.replace(url.as_str(), &display_endpoint(url.as_str()));
    let secrets = [url.password(), url.query(), Some(url.username())];
    for secret in secrets.into_iter().flatten().filter(|s| !s.is_empty()) {
        out = out.replace(secret, "<redacted>");
    }
    out
}

/// The `Retry-After` of a response, capped at `max` (see [`parse_retry_after`]).
pub fn retry_after(resp: &reqwest::Response, max: Duration) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    parse_retry_after(v, std::time::SystemTime::now(), max)
}

/// `Retry-After` as seconds or an HTTP date, never more than `max` (a peer cannot make the
/// agent wait longer than its own backoff limit) and never a panic, whatever the value.
pub fn parse_retry_after(
    value: &str,
    now: std::time::SystemTime,
    max: Duration,
) -> Option<Duration> {
    let v = value.trim();
    let wait = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(v).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A receiver on a free local port that answers 204 and keeps each request's
    /// `Authorization` header.
    async fn receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::sync::{Arc, Mutex};
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let app = axum::Router::new().route(
            "/push",
            axum::routing::post({
                let seen = seen.clone();
                move |headers: axum::http::HeaderMap| async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    seen.lock().unwrap().push(auth);
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/push"), seen)
    }

    /// The error of a push through `t` that must fail.
    async fn failed_push(t: &HttpTarget) -> String {
        t.post("text/plain", vec![])
            .send()
            .await
            .unwrap_err()
            .to_string()
    }

    fn target(url: &str, token_file: &str, basic: &BasicAuth) -> HttpTarget {
        let _ = rustls::crypto::ring::default_provider().install_default();
        HttpTarget::new(
            "otlp",
            url,
            Duration::from_secs(5),
            &BTreeMap::new(),
            token_file,
            basic,
            &Tls::default(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn secret_files_are_read_at_every_push_so_rotation_works() {
        let (url, seen) = receiver().await;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        let password = dir.path().join("password");
        std::fs::write(&token, "tok-one\n").unwrap();
        std::fs::write(&password, "pw-one\n").unwrap();
        let bearer = target(&url, token.to_str().unwrap(), &BasicAuth::default());
        let basic = target(
            &url,
            "",
            &BasicAuth {
                username: "agent".into(),
                password_file: password.to_str().unwrap().into(),
            },
        );
        for t in [&bearer, &basic] {
            let r = t.post("text/plain", b"x".to_vec()).send().await.unwrap();
            assert_eq!(r.status(), 204);
        }
        std::fs::write(&token, "tok-two\n").unwrap();
        std::fs::write(&password, "pw-two").unwrap();
        for t in [&bearer, &basic] {
            t.post("text/plain", b"x".to_vec()).send().await.unwrap();
        }
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "Bearer tok-one".to_string(),
                "Basic YWdlbnQ6cHctb25l".to_string(), /* agent:pw-one */
                "Bearer tok-two".to_string(),
                "Basic YWdlbnQ6cHctdHdv".to_string(), /* agent:pw-two */
            ]
        );
    }

    #[tokio::test]
    async fn a_secret_file_that_cannot_be_read_fails_the_attempt_naming_key_and_path() {
        let (url, seen) = receiver().await;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "tok-s3cret").unwrap();
        let t = target(&url, token.to_str().unwrap(), &BasicAuth::default());
        t.post("text/plain", vec![]).send().await.unwrap();
        std::fs::remove_file(&token).unwrap();
        let text = failed_push(&t).await;
        assert!(text.contains("otlp.bearer_token_file"), "{text}");
        assert!(text.contains(token.to_str().unwrap()), "{text}");
        // A token that cannot be a header value: refused, not shown.
        std::fs::write(&token, "tok-s3cret\u{7f}x").unwrap();
        let text = failed_push(&t).await;
        assert!(
            text.contains("otlp.bearer_token_file") && !text.contains("s3cret"),
            "{text}"
        );
        std::fs::write(&token, "tok-back").unwrap();
        t.post("text/plain", vec![]).send().await.unwrap();
        assert_eq!(
            seen.lock().unwrap().len(),
            2,
            "no request without the token"
        );
        // A password file that is a directory.
        let basic = BasicAuth {
            username: "agent".into(),
            password_file: dir.path().to_str().unwrap().into(),
        };
        let text = failed_push(&target(&url, "", &basic)).await;
        assert!(text.contains("otlp.basic_auth.password_file"), "{text}");
    }

    #[tokio::test]
    async fn a_failed_push_says_why_without_the_credentials() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://agent:pa55w0rd@127.0.0.1:{port}/push?token=q5ecret");
        let t = target(&url, "", &BasicAuth::default());
        let text = failed_push(&t).await;
        assert!(text.to_lowercase().contains("connection refused"), "{text}");
        for secret in ["agent", "pa55w0rd", "q5ecret"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert_eq!(t.url(), format!("http://127.0.0.1:{port}/push"));
    }

    #[test]
    fn the_ca_file_must_hold_a_certificate_the_client_can_use() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pem = include_str!("../../tests/fixtures/test-ca.pem");
        assert_eq!(pem_certificates(pem.as_bytes()).unwrap().len(), 1);
        assert_eq!(
            pem_certificates(format!("{pem}{pem}").as_bytes())
                .unwrap()
                .len(),
            2
        );
        assert!(pem_certificates(b"").is_err());
        assert!(pem_certificates(b"s3cret").is_err());
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let new = |ca: &std::path::Path| {
            HttpTarget::new(
                "loki",
                "https://loki/push",
                Duration::from_secs(1),
                &BTreeMap::new(),
                "",
                &BasicAuth::default(),
                &Tls {
                    ca_file: ca.to_str().unwrap().into(),
                    insecure_skip_verify: false,
                },
            )
        };
        std::fs::write(&ca, pem).unwrap();
        new(&ca).unwrap();
        std::fs::write(&ca, "s3cret").unwrap();
        let e = new(&ca).err().unwrap().to_string();
        assert!(
            e.contains("loki.tls.ca_file") && !e.contains("s3cret"),
            "{e}"
        );
    }

    #[test]
    fn scrub_removes_the_credentials_wherever_they_appear() {
        let url = reqwest::Url::parse("https://agent:pa55w0rd@mimir/otlp?token=q5ecret").unwrap();
        let text = scrub(
            &format!("failed for {url}: pa55w0rd, token=q5ecret, agent"),
            &url,
        );
        assert!(text.contains("https://mimir/otlp"), "{text}");
        for secret in ["agent", "pa55w0rd", "q5ecret"] {
            assert!(!text.contains(secret), "{text}");
        }
    }

    #[test]
    fn retry_after_is_capped_and_reads_both_forms() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let max = Duration::from_secs(300);
        assert_eq!(
            parse_retry_after("120", now, max),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("86400", now, max),
            Some(max),
            "a day is capped"
        );
        assert_eq!(
            parse_retry_after("18446744073709551615", now, max),
            Some(max)
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now, max),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now, max), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now, max), None);
    }

    proptest! {
        #[test]
        fn any_retry_after_value_is_bounded_and_never_panics(v in ".{0,64}", secs in any::<u64>()) {
            let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            let max = Duration::from_secs(30);
            for value in [v.clone(), secs.to_string(), format!(" {secs} ")] {
                if let Some(d) = parse_retry_after(&value, now, max) {
                    prop_assert!(d <= max);
                    // and the jitter on top of it cannot overflow
                    let _ = crate::export::otlp::jitter(d);
                }
            }
        }
    }
}
