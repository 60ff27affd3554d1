//! What the OTLP and Loki exporters share about talking HTTP to a backend: the client with its
//! timeout and TLS settings, the configured headers, and bearer or basic authentication.
//! Their retry policies differ and stay in the exporters.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{BasicAuth, Tls};

/// One backend endpoint and how to authenticate to it.
pub struct HttpTarget {
    http: reqwest::Client,
    url: String,
    headers: Vec<(String, String)>,
    bearer_token_file: String,
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
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("tokenmeter/", env!("CARGO_PKG_VERSION")));
        if !tls.ca_file.is_empty() {
            let err = |e: &dyn std::fmt::Display| {
                anyhow::anyhow!("{section}.tls.ca_file {}: {e}", tls.ca_file)
            };
            let pem = std::fs::read(&tls.ca_file).map_err(|e| err(&e))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(&e))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if tls.insecure_skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let basic_auth = if basic.username.is_empty() {
            None
        } else {
            let password = if basic.password_file.is_empty() {
                String::new()
            } else {
                std::fs::read_to_string(&basic.password_file)
                    .map_err(|e| anyhow::anyhow!("{section}.basic_auth.password_file: {e}"))?
                    .trim_end()
                    .to_string()
            };
            Some((basic.username.clone(), password))
        };
        Ok(HttpTarget {
            http: builder.build()?,
            url: url.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            bearer_token_file: bearer_token_file.to_string(),
            basic_auth,
            section,
        })
    }

    /// The endpoint as it may be shown (logs, `/status`): without userinfo or query.
    pub fn url(&self) -> String {
        display_endpoint(&self.url)
    }

    /// A POST of `body` with the configured headers and authentication. The bearer token file
    /// is read at every call: tokens may be rotated on disk.
    pub fn post(&self, content_type: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .post(&self.url)
            .header("Content-Type", content_type)
            .body(body);
        for (k, v) in &self.headers {
            r = r.header(k, v);
        }
        if !self.bearer_token_file.is_empty() {
            match std::fs::read_to_string(&self.bearer_token_file) {
                Ok(t) => r = r.bearer_auth(t.trim()),
                Err(e) => tracing::warn!(
                    "{}.bearer_token_file {}: {e}",
                    self.section,
                    self.bearer_token_file
                ),
            }
        }
        if let Some((u, p)) = &self.basic_auth {
            r = r.basic_auth(u, Some(p));
        }
        r
    }
}

/// Parses an endpoint as the HTTP client will use it: a URL with scheme `http` or `https`, a
/// host, a port in range, and valid as an HTTP request target. The error says what is wrong
/// without repeating the endpoint (its userinfo or query may hold credentials).
pub fn parse_endpoint(endpoint: &str) -> Result<reqwest::Url, String> {
    // url's messages are fixed texts ("invalid port number", ...), never the input.
    let url = reqwest::Url::parse(endpoint).map_err(|e| format!("not a valid URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must start with http:// or https://".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    // The client sends the request to this URI: what it refuses would fail every push.
    if url.as_str().parse::<axum::http::Uri>().is_err() {
        return Err("not a valid URL for an HTTP request".into());
    }
    Ok(url)
}

/// An endpoint as it may be shown in logs, `/status` and `check-config`: user, password and
/// query string (where tokens hide) removed; the text is withheld if it does not parse.
pub fn display_endpoint(endpoint: &str) -> String {
    if endpoint.is_empty() {
        return String::new();
    }
    match reqwest::Url::parse(endpoint) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "<redacted: not a URL>".to_string(),
    }
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

    #[test]
    fn endpoints_are_shown_without_userinfo_or_query() {
        assert_eq!(
            display_endpoint("https://user:s3cr3t@mimir.example:8080/otlp/v1/metrics?token=abc#x"),
            "https://mimir.example:8080/otlp/v1/metrics"
        );
        assert_eq!(
            display_endpoint("http://loki/loki/api/v1/push"),
            "http://loki/loki/api/v1/push"
        );
        assert_eq!(
            display_endpoint("not a url with s3cr3t"),
            "<redacted: not a URL>"
        );
        assert_eq!(display_endpoint(""), "");
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
