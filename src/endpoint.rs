//! What an HTTP endpoint is, for the config that checks it and the exporters that call it:
//! the URL rules, how an endpoint is shown without its credentials, a CA bundle's
//! certificates, and the authentication and TLS settings of one backend.
//!
//! Owns: nothing but these definitions (a leaf: imports no other module of the crate). Must
//! not open connections: `export::http` does.

use serde::{Deserialize, Serialize};

/// Basic authentication to a backend; the password is read from a file, never the config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    pub password_file: String,
}

/// TLS to a backend: a CA bundle to trust beside the system's, or no verification at all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    pub ca_file: String,
    pub insecure_skip_verify: bool,
}

/// The certificates of a PEM bundle, each checked as a trust anchor as the TLS stack will
/// (rustls); at least one. The error never shows the content.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|_| "not a valid PEM certificate bundle".to_string())?;
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| format!("a certificate of the bundle is not usable as a CA ({e})"))?;
        certs.push(cert.as_ref().to_vec());
    }
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into());
    }
    Ok(certs)
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
