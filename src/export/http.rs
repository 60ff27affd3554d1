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

    pub fn url(&self) -> &str {
        &self.url
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

/// The `Retry-After` of a response, in seconds form.
pub fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}
