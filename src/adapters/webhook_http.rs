//! The HTTP client that posts webhooks, with the SMTP probe's rule against server-side request
//! forgery (`domain::probe::is_internal`): a name is resolved by this client's own resolver,
//! which drops internal addresses, so the address checked is the address connected to (a name
//! that resolves to a public address when checked and to 127.0.0.1 when connecting — DNS
//! rebinding — cannot slip through); a literal address is checked before the request; redirects
//! are never followed; each attempt is bounded in time, and at most [`MAX_RESPONSE_BYTES`] of an
//! answer are read.

use crate::domain::probe::is_internal;
use crate::domain::webhooks::check_url;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The most of a receiver's answer that is read (and then dropped): the status is what counts.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL is not allowed (scheme, credentials, an internal address): never sent.
    #[error("refused: {0}")]
    Refused(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// No connection, or it broke (a name that resolves to nothing allowed included).
    #[error("{0}")]
    Connect(String),
    #[error("the HTTP client could not be built: {0}")]
    Build(String),
}

impl crate::adapters::Retryable for WebhookError {
    fn is_retryable(&self) -> bool {
        matches!(self, WebhookError::Timeout | WebhookError::Connect(_))
    }
}

/// A receiver's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
}

/// Resolves names with the system resolver and keeps only addresses that may be connected to.
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| allow_private || !is_internal(a.ip()))
                .collect();
            if allowed.is_empty() {
                let why = if found.is_empty() {
                    format!("{host} resolves to no address")
                } else {
                    format!("{host} resolves to internal addresses only")
                };
                return Err(why.into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Posts signed webhook bodies.
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    allow_private: bool,
}

impl WebhookClient {
    /// `timeout` bounds a whole attempt: connecting, sending, and reading the answer.
    pub fn new(timeout: Duration, allow_private: bool) -> Result<Self, WebhookError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("bdjobs-webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .build()
            .map_err(|e| WebhookError::Build(e.to_string()))?;
        Ok(Self {
            http,
            allow_private,
        })
    }

    /// POSTs `body` as JSON with `headers` to `url`. Returns the answer (any status) and how
    /// long the attempt took.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: String,
    ) -> (Result<Answer, WebhookError>, Duration) {
        let started = Instant::now();
        let result = self.attempt(url, headers, body).await;
        (result, started.elapsed())
    }

    async fn attempt(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: String,
    ) -> Result<Answer, WebhookError> {
        // Literal addresses never reach the resolver: checked here (with the scheme rules).
        let url = check_url(url, self.allow_private).map_err(WebhookError::Refused)?;
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let mut response = request.send().await.map_err(classify)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Read a bounded part of the answer so the connection can be reused; a receiver that
        // streams more (or stalls) costs at most the attempt's timeout.
        let mut read = 0usize;
        while read < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(Answer {
            status,
            retry_after,
        })
    }
}

fn classify(e: reqwest::Error) -> WebhookError {
    if e.is_timeout() {
        return WebhookError::Timeout;
    }
    // The chain holds the resolver's own reason (internal addresses only, no address).
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    if text.contains("resolves to internal addresses only") {
        return WebhookError::Refused(text);
    }
    WebhookError::Connect(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::Retryable;

    #[tokio::test]
    async fn a_literal_internal_address_is_refused_before_any_connection() {
        let client = WebhookClient::new(Duration::from_secs(1), false).unwrap();
        let (result, _) = client
            .post("https://127.0.0.1:9/hook", &[], "{}".into())
            .await;
        let e = result.unwrap_err();
        assert!(matches!(e, WebhookError::Refused(_)), "{e}");
        assert!(!e.is_retryable());
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_at_connect_time() {
        // A URL naming `localhost` is refused by name already; any other name that resolves to
        // loopback (a rebinding one included) is caught here, at the connection's own lookup.
        let resolver = GuardedResolver {
            allow_private: false,
        };
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let refused = reqwest::dns::Resolve::resolve(&resolver, name).await;
        let why = refused.err().expect("loopback is refused").to_string();
        assert!(why.contains("internal addresses only"), "{why}");
        let allowed = GuardedResolver {
            allow_private: true,
        };
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        assert!(reqwest::dns::Resolve::resolve(&allowed, name).await.is_ok());
    }
}
