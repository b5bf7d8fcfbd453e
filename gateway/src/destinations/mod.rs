//! Destinations: sends the records of finished async invocations to their function's
//! `on_success` / `on_failure` destinations (a NATS subject of its namespace, an HTTPS
//! webhook), from the store's outbox ([`fnmesh_store::DeliveryStore`]).
//!
//! The [`Dispatcher`] is a background worker of every gateway: every
//! [`DestinationsConfig::poll_interval`] it claims due deliveries (leased, so gateways sharing
//! a store never send one twice unless one dies holding it), loads their records, sends each
//! one and settles it: `delivered`; `failed` when the receiver refused it (a 4xx other than
//! 408 and 429) or the host is not allowed; otherwise tried again after a backoff doubling from
//! [`DestinationsConfig::retry_base`] up to [`DestinationsConfig::retry_max`], until
//! [`DestinationsConfig::max_attempts`] tries. Delivery is at least once: receivers dedupe on
//! the `Fnmesh-Delivery` header.
//!
//! A webhook is sent only to a host on the operator's [`Allowlist`], and only to addresses it
//! allows (checked in the client's resolver, where the connection is made); redirects are not
//! followed. Its body is signed with HMAC-SHA256 over `"<timestamp>.<body>"`, keyed by the
//! function secret the destination names ([`fnmesh_core::destination::signature`]). A NATS
//! destination is published on `fnmesh.v1.dest.<namespace>.<subject>` by a gateway with a NATS
//! connection (gateways alone may publish there; see `fnmesh nats init`).

pub mod allowlist;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::Utc;
use fnmesh_core::destination::{
    self, DeliveryTarget, DestinationEvent, WebhookUrl, DELIVERY_HEADER, EVENT_HEADER,
    INVOCATION_HEADER, SIGNATURE_HEADER,
};
use fnmesh_core::invocation::InvocationResult;
use fnmesh_core::secrets::{secret_aad, Keyring};
use fnmesh_core::subjects;
use fnmesh_store::{ClaimedDelivery, MetadataStore, Settle};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

pub use allowlist::{Allowlist, AllowlistError, Refused};

use crate::metrics::GatewayMetrics;

/// Deliveries claimed per pass at most.
const BATCH: u32 = 64;
/// Deliveries sent at once.
const CONCURRENCY: usize = 16;
/// How long a claimed delivery is held before another gateway may take it.
const LEASE: Duration = Duration::from_secs(60);
/// How long a NATS publish may take to reach the server.
const NATS_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest error message kept with a delivery.
const MAX_ERROR_LEN: usize = 512;

/// How destinations are delivered.
#[derive(Debug, Clone)]
pub struct DestinationsConfig {
    /// Which webhook hosts and addresses may be reached (`FNMESH_WEBHOOK_ALLOWLIST`).
    pub allowlist: Allowlist,
    /// Tries of a delivery before it is given up (`FNMESH_DESTINATION_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// The pause after the first failed try, doubled after each
    /// (`FNMESH_DESTINATION_RETRY_BASE_MS`).
    pub retry_base: Duration,
    /// The longest pause between tries.
    pub retry_max: Duration,
    /// How often due deliveries are looked for.
    pub poll_interval: Duration,
    /// How long one webhook request may take.
    pub request_timeout: Duration,
}

impl Default for DestinationsConfig {
    fn default() -> Self {
        Self {
            allowlist: Allowlist::default(),
            max_attempts: 10,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(600),
            poll_interval: Duration::from_millis(500),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl DestinationsConfig {
    /// The pause after try `attempt` (1-based) failed.
    fn backoff(&self, attempt: u32) -> Duration {
        let doubled = self
            .retry_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        doubled.min(self.retry_max)
    }
}

/// Why a try failed.
#[derive(Debug)]
enum Failure {
    /// Worth trying again later.
    Retry(String),
    /// Never worth trying again.
    Permanent(String),
}

/// The background worker that sends due deliveries.
pub(crate) struct Dispatcher {
    store: Arc<dyn MetadataStore>,
    keyring: Option<Arc<Keyring>>,
    nats: Arc<OnceLock<async_nats::Client>>,
    config: DestinationsConfig,
    metrics: Arc<GatewayMetrics>,
    /// Built on the first webhook (it needs the process's TLS provider).
    http: OnceLock<Result<reqwest::Client, String>>,
}

impl Dispatcher {
    pub(crate) fn new(
        store: Arc<dyn MetadataStore>,
        keyring: Option<Arc<Keyring>>,
        nats: Arc<OnceLock<async_nats::Client>>,
        config: DestinationsConfig,
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        Self {
            store,
            keyring,
            nats,
            config,
            metrics,
            http: OnceLock::new(),
        }
    }

    /// Sends due deliveries until `stop` is cancelled. Tries in flight then are abandoned
    /// (a webhook may take its whole timeout): their deliveries come due again when their
    /// lease runs out, so shutdown never waits on a receiver.
    pub(crate) async fn run(self, stop: CancellationToken) {
        loop {
            let claimed = tokio::select! {
                _ = stop.cancelled() => return,
                claimed = self.pass() => claimed,
            };
            if claimed < BATCH as usize {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(self.config.poll_interval) => {}
                }
            }
        }
    }

    /// Claims one batch of due deliveries and sends them; how many were claimed.
    pub(crate) async fn pass(&self) -> usize {
        let now = Utc::now();
        let lease_until = now + chrono::Duration::from_std(LEASE).unwrap_or_default();
        let claimed = match self.store.claim_deliveries(now, lease_until, BATCH).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "claiming destination deliveries failed");
                return 0;
            }
        };
        if claimed.is_empty() {
            return 0;
        }
        let keys: Vec<_> = claimed
            .iter()
            .map(|c| (c.namespace.clone(), c.invocation_id))
            .collect();
        let records = match self.store.get_invocations(&keys).await {
            Ok(records) => records,
            Err(e) => {
                // Claimed but not sent: each comes due again when its lease runs out.
                tracing::warn!(error = %e, "reading the records of destination deliveries failed");
                return claimed.len();
            }
        };
        let count = claimed.len();
        futures::stream::iter(claimed.into_iter().zip(records))
            .for_each_concurrent(CONCURRENCY, |(claim, record)| async move {
                self.deliver(&claim, record.as_ref()).await;
            })
            .await;
        count
    }

    /// Sends one delivery and settles it.
    async fn deliver(&self, claim: &ClaimedDelivery, record: Option<&InvocationResult>) {
        let kind = match claim.target {
            DeliveryTarget::Nats { .. } => "nats",
            DeliveryTarget::Webhook { .. } => "webhook",
        };
        let sent = match record {
            None => Err(Failure::Permanent(
                "the invocation's record is gone".to_owned(),
            )),
            Some(record) => self.send(claim, record).await,
        };
        let now = Utc::now();
        let (settle, outcome) = match sent {
            Ok(()) => (Settle::Delivered, "delivered"),
            Err(Failure::Permanent(error)) => (Settle::Failed { error: cap(error) }, "failed"),
            Err(Failure::Retry(error)) if claim.attempt >= self.config.max_attempts => (
                Settle::Failed {
                    error: cap(format!("{error} (gave up after {} tries)", claim.attempt)),
                },
                "failed",
            ),
            Err(Failure::Retry(error)) => (
                Settle::Retry {
                    at: now
                        + chrono::Duration::from_std(self.config.backoff(claim.attempt))
                            .unwrap_or_default(),
                    error: cap(error),
                },
                "retry",
            ),
        };
        self.metrics.observe_destination(kind, outcome);
        match &settle {
            Settle::Failed { error } => tracing::warn!(
                delivery.id = %claim.id, invocation.id = %claim.invocation_id, destination = kind,
                attempt = claim.attempt, error = %error, "destination delivery failed"
            ),
            Settle::Retry { error, .. } => tracing::info!(
                delivery.id = %claim.id, invocation.id = %claim.invocation_id, destination = kind,
                attempt = claim.attempt, error = %error, "destination delivery will be tried again"
            ),
            Settle::Delivered => tracing::debug!(
                delivery.id = %claim.id, invocation.id = %claim.invocation_id, destination = kind,
                "destination delivered"
            ),
        }
        match self
            .store
            .settle_delivery(&claim.id, claim.attempt, &settle, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::debug!(delivery.id = %claim.id, "delivery settled elsewhere"),
            // It comes due again when its lease runs out (sent twice at worst).
            Err(e) => {
                tracing::warn!(delivery.id = %claim.id, error = %e, "settling a delivery failed")
            }
        }
    }

    async fn send(
        &self,
        claim: &ClaimedDelivery,
        record: &InvocationResult,
    ) -> Result<(), Failure> {
        let event = DestinationEvent {
            kind: claim.on.event().to_owned(),
            delivery_id: claim.id.clone(),
            invocation: record.clone(),
        };
        let body = serde_json::to_vec(&event)
            .map_err(|e| Failure::Permanent(format!("encoding the record: {e}")))?;
        match &claim.target {
            DeliveryTarget::Nats { subject } => self.send_nats(claim, subject, body).await,
            DeliveryTarget::Webhook { url, secret } => {
                self.send_webhook(claim, record, url, secret, body).await
            }
        }
    }

    async fn send_nats(
        &self,
        claim: &ClaimedDelivery,
        subject: &str,
        body: Vec<u8>,
    ) -> Result<(), Failure> {
        let subject = subjects::destination(&claim.namespace, subject)
            .ok_or_else(|| Failure::Permanent(format!("{subject:?} is not a valid subject")))?;
        let client = self.nats.get().ok_or_else(|| {
            Failure::Permanent(
                "this gateway has no NATS connection to publish destinations on (run it with \
                 --nats-url)"
                    .to_owned(),
            )
        })?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(EVENT_HEADER, claim.on.event());
        headers.insert(DELIVERY_HEADER, claim.id.as_str());
        headers.insert(INVOCATION_HEADER, claim.invocation_id.to_string().as_str());
        let publish = async {
            client
                .publish_with_headers(subject, headers, body.into())
                .await
                .map_err(|e| e.to_string())?;
            client.flush().await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(NATS_TIMEOUT, publish).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::Retry(format!("NATS publish failed: {e}"))),
            Err(_) => Err(Failure::Retry("NATS publish timed out".to_owned())),
        }
    }

    async fn send_webhook(
        &self,
        claim: &ClaimedDelivery,
        record: &InvocationResult,
        raw_url: &str,
        secret: &str,
        body: Vec<u8>,
    ) -> Result<(), Failure> {
        let url = WebhookUrl::parse(raw_url)
            .map_err(|e| Failure::Permanent(format!("invalid webhook URL: {e}")))?;
        // The allowlist may have changed since the function was deployed.
        self.config
            .allowlist
            .check_url(&url)
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        self.check_addresses(&url).await?;
        let key = self.signing_key(record, secret).await?;
        let client = self.http_client()?;
        let timestamp = Utc::now().timestamp();
        let response = client
            .post(url.url().clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, claim.on.event())
            .header(DELIVERY_HEADER, claim.id.as_str())
            .header(INVOCATION_HEADER, claim.invocation_id.to_string())
            .header(
                SIGNATURE_HEADER,
                destination::signature(&key, timestamp, &body),
            )
            .body(body)
            .send()
            .await
            // Without the URL: its query may hold a token.
            .map_err(|e| Failure::Retry(format!("webhook request failed: {}", describe(&e))))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let message = format!("webhook answered HTTP {}", status.as_u16());
        let permanent =
            status.is_client_error() && !matches!(status.as_u16(), 408 | 409 | 425 | 429);
        Err(if permanent {
            Failure::Permanent(message)
        } else {
            Failure::Retry(message)
        })
    }

    /// Refuses for good a host whose every address is one the allowlist does not allow (the
    /// client's resolver checks again where it connects, so a name that changes its answer in
    /// between is still refused, as a failed try).
    async fn check_addresses(&self, url: &WebhookUrl) -> Result<(), Failure> {
        let host = url.host();
        if host.parse::<std::net::IpAddr>().is_ok() {
            return Ok(()); // checked with the URL
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), url.port()))
            .await
            .map_err(|e| Failure::Retry(format!("resolving {host}: {e}")))?
            .collect();
        let allowlist = &self.config.allowlist;
        match addrs.iter().find(|a| allowlist.check_ip(a.ip()).is_ok()) {
            Some(_) => Ok(()),
            None => match addrs.first() {
                Some(addr) => Err(Failure::Permanent(Refused::Address(addr.ip()).to_string())),
                None => Err(Failure::Retry(format!("{host} resolves to no address"))),
            },
        }
    }

    /// The value of the function secret `name`, opened: the webhook's HMAC key.
    async fn signing_key(&self, record: &InvocationResult, name: &str) -> Result<Vec<u8>, Failure> {
        let keyring = self.keyring.as_ref().ok_or_else(|| {
            Failure::Retry("this gateway has no secrets key to open the signing secret".to_owned())
        })?;
        let sealed = self
            .store
            .sealed_secrets(&record.namespace, &record.function)
            .await
            .map_err(|e| Failure::Retry(format!("reading the signing secret: {e}")))?;
        let secret = sealed
            .0
            .iter()
            .find(|s| s.name.as_str() == name)
            .ok_or_else(|| {
                Failure::Retry(format!(
                    "the function has no secret {name:?} to sign the webhook with"
                ))
            })?;
        keyring
            .open(
                &secret_aad(&record.namespace, &record.function, &secret.name),
                &secret.value,
            )
            .map_err(|e| Failure::Retry(format!("opening the signing secret: {e}")))
    }

    fn http_client(&self) -> Result<&reqwest::Client, Failure> {
        self.http
            .get_or_init(|| {
                reqwest::Client::builder()
                    .dns_resolver(Arc::new(CheckedResolver {
                        allowlist: Arc::new(self.config.allowlist.clone()),
                    }))
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(self.config.request_timeout)
                    .connect_timeout(self.config.request_timeout.min(Duration::from_secs(5)))
                    .user_agent(concat!("fnmesh-destinations/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Failure::Retry(format!("building the webhook client: {e}")))
    }
}

/// A request error with its causes, without the URL.
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "request error".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn cap(mut text: String) -> String {
    if text.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Resolves webhook hosts and keeps only the addresses the allowlist allows, so the client
/// never connects elsewhere (whatever the name resolved to at deploy).
struct CheckedResolver {
    allowlist: Arc<Allowlist>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowlist = self.allowlist.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match allowlist.check_ip(addr.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let error: Box<dyn std::error::Error + Send + Sync> = match refused {
                    Some(refused) => Box::new(refused),
                    None => format!("{host} resolves to no address").into(),
                };
                return Err(error);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = DestinationsConfig {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            ..DestinationsConfig::default()
        };
        let pauses: Vec<u64> = (1..=8).map(|n| config.backoff(n).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(config.backoff(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn errors_are_capped_on_a_char_boundary() {
        let long = "é".repeat(400);
        let capped = cap(long);
        assert!(capped.len() <= MAX_ERROR_LEN);
        assert!(capped.chars().all(|c| c == 'é'));
    }
}
