//! Destinations of finished async invocations (`config.destinations`): where a gateway sends
//! an invocation's record once it has succeeded (`on_success`) or failed for good
//! (`on_failure`) — a NATS subject in the function's namespace and/or an HTTPS webhook, signed
//! with HMAC-SHA256 over a timestamp and the body ([`signature`]).
//!
//! The types here are the configuration (validated with the function's config), what a
//! delivery targets ([`DeliveryTarget`], stored with each delivery), its state
//! ([`DeliveryStatus`], shown on the record) and the message sent ([`DestinationEvent`]).
//! Delivering is the gateway's (`gateway::destinations`); which hosts a webhook may reach is
//! the operator's allowlist there.

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::invocation::{InvocationResult, InvocationStatus};
use crate::secrets::SecretName;

/// Header of a signed delivery: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "Fnmesh-Signature";
/// Header naming the event (`invocation.succeeded` or `invocation.failed`).
pub const EVENT_HEADER: &str = "Fnmesh-Event";
/// Header carrying the delivery's id (the same on every retry: receivers dedupe on it).
pub const DELIVERY_HEADER: &str = "Fnmesh-Delivery";
/// Header carrying the invocation's id.
pub const INVOCATION_HEADER: &str = "Fnmesh-Invocation-Id";

/// Longest webhook URL.
pub const MAX_URL_LEN: usize = 2048;
/// Most tokens of a destination subject.
pub const MAX_SUBJECT_TOKENS: usize = 8;
/// Longest token of a destination subject.
pub const MAX_SUBJECT_TOKEN_LEN: usize = 64;

/// A function's destinations (`config.destinations`), used by its async invocations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Destinations {
    /// Where the record of an invocation that succeeded goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<Destination>,
    /// Where the record of an invocation that failed for good goes (`failed`, `timeout` or
    /// `dead_lettered`, after its retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<Destination>,
}

/// One condition's destination: a NATS subject and/or a webhook.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Destination {
    /// A subject in the function's namespace, published on as
    /// `fnmesh.v1.dest.<namespace>.<subject>`: 1 to 8 tokens of `[A-Za-z0-9_-]`, dot-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<String>,
    /// An HTTPS webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
}

/// A webhook destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Webhook {
    /// `https://host[:port]/path`; its host must be on the operator's allowlist
    /// (`FNMESH_WEBHOOK_ALLOWLIST`), which is also the only way to allow plain `http`.
    pub url: String,
    /// The name of one of the function's secrets: its value is the HMAC-SHA256 key the
    /// deliveries are signed with.
    pub secret: String,
}

/// When a delivery is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DeliveryCondition {
    /// The invocation succeeded.
    Success,
    /// The invocation failed for good.
    Failure,
}

impl DeliveryCondition {
    /// `success` or `failure`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }

    /// Parses [`Self::as_str`].
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "success" => Some(Self::Success),
            "failure" => Some(Self::Failure),
            _ => None,
        }
    }

    /// Whether a record that ended with `status` is sent to this condition's destination
    /// (`cancelled` is sent to neither: the caller asked for it).
    pub fn matches(self, status: InvocationStatus) -> bool {
        match self {
            Self::Success => status == InvocationStatus::Succeeded,
            Self::Failure => matches!(
                status,
                InvocationStatus::Failed
                    | InvocationStatus::Timeout
                    | InvocationStatus::DeadLettered
            ),
        }
    }

    /// The event name sent ([`EVENT_HEADER`]).
    pub fn event(self) -> &'static str {
        match self {
            Self::Success => "invocation.succeeded",
            Self::Failure => "invocation.failed",
        }
    }
}

/// What one delivery is sent to, as stored with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DeliveryTarget {
    /// A NATS subject of the function's namespace (the part after
    /// `fnmesh.v1.dest.<namespace>.`).
    Nats {
        /// The subject's tokens after the namespace.
        subject: String,
    },
    /// A webhook.
    Webhook {
        /// Its URL.
        url: String,
        /// The function secret whose value signs it.
        secret: String,
    },
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DeliveryState {
    /// The invocation has not finished.
    Waiting,
    /// Due to be sent (again, after a failed try, at `next_attempt_at`).
    Pending,
    /// Sent and accepted (a 2xx answer; for NATS, the server took the message).
    Delivered,
    /// Given up: the receiver refused it, or every try failed.
    Failed,
    /// Not sent: the invocation ended the other way (or was cancelled).
    Skipped,
}

impl DeliveryState {
    /// The state's name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    /// Parses [`Self::as_str`].
    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "waiting" => Self::Waiting,
            "pending" => Self::Pending,
            "delivered" => Self::Delivered,
            "failed" => Self::Failed,
            "skipped" => Self::Skipped,
            _ => return None,
        })
    }
}

/// One delivery of an invocation, as its record shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryStatus {
    /// The delivery's id (the [`DELIVERY_HEADER`] sent).
    pub id: String,
    /// Its condition.
    pub on: DeliveryCondition,
    /// What it is sent to.
    pub target: DeliveryTarget,
    /// Where it is.
    pub state: DeliveryState,
    /// Tries made.
    pub attempts: u32,
    /// Why the last failed try failed (kept once delivered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it is tried next (`pending` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The body of a delivery (JSON), to a webhook or a NATS subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationEvent {
    /// `invocation.succeeded` or `invocation.failed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The delivery's id: the same on every retry of it.
    pub delivery_id: String,
    /// The invocation's record as it ended (what `GET /v1/invocations/{id}` shows).
    pub invocation: InvocationResult,
}

/// A configuration that cannot be used, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config.destinations.{field}: {reason}")]
pub struct DestinationError {
    /// The field (`on_success.webhook.url`, …).
    pub field: String,
    /// Why.
    pub reason: String,
}

impl Destinations {
    /// Whether no destination is set.
    pub fn is_empty(&self) -> bool {
        self.on_success.is_none() && self.on_failure.is_none()
    }

    /// Checks every destination's shape (not the operator's allowlist: the gateway does).
    pub fn validate(&self) -> Result<(), DestinationError> {
        for (name, destination) in [
            ("on_success", &self.on_success),
            ("on_failure", &self.on_failure),
        ] {
            let Some(destination) = destination else {
                continue;
            };
            let err = |field: &str, reason: String| DestinationError {
                field: format!("{name}{field}"),
                reason,
            };
            if destination.nats.is_none() && destination.webhook.is_none() {
                return Err(err("", "name a nats subject, a webhook or both".to_owned()));
            }
            if let Some(subject) = &destination.nats {
                check_subject(subject).map_err(|reason| err(".nats", reason))?;
            }
            if let Some(webhook) = &destination.webhook {
                WebhookUrl::parse(&webhook.url).map_err(|reason| err(".webhook.url", reason))?;
                SecretName::parse(&webhook.secret)
                    .map_err(|e| err(".webhook.secret", e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Every delivery an invocation makes, in a fixed order (success before failure, NATS
    /// before webhook).
    pub fn targets(&self) -> Vec<(DeliveryCondition, DeliveryTarget)> {
        let mut targets = Vec::new();
        for (on, destination) in [
            (DeliveryCondition::Success, &self.on_success),
            (DeliveryCondition::Failure, &self.on_failure),
        ] {
            let Some(destination) = destination else {
                continue;
            };
            if let Some(subject) = &destination.nats {
                targets.push((
                    on,
                    DeliveryTarget::Nats {
                        subject: subject.clone(),
                    },
                ));
            }
            if let Some(webhook) = &destination.webhook {
                targets.push((
                    on,
                    DeliveryTarget::Webhook {
                        url: webhook.url.clone(),
                        secret: webhook.secret.clone(),
                    },
                ));
            }
        }
        targets
    }

    /// Every webhook URL named.
    pub fn webhook_urls(&self) -> impl Iterator<Item = &str> {
        [&self.on_success, &self.on_failure]
            .into_iter()
            .flatten()
            .filter_map(|d| d.webhook.as_ref().map(|w| w.url.as_str()))
    }
}

/// A destination subject's tokens: 1..=8 of `[A-Za-z0-9_-]{1,64}`, dot-separated (no
/// wildcards, no empty token).
pub fn check_subject(subject: &str) -> Result<(), String> {
    let tokens: Vec<&str> = subject.split('.').collect();
    if tokens.len() > MAX_SUBJECT_TOKENS {
        return Err(format!("at most {MAX_SUBJECT_TOKENS} tokens"));
    }
    for token in tokens {
        let ok = !token.is_empty()
            && token.len() <= MAX_SUBJECT_TOKEN_LEN
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(format!(
                "{:?} is not a subject of [A-Za-z0-9_-] tokens (1..=64 each) separated by dots",
                subject.chars().take(80).collect::<String>()
            ));
        }
    }
    Ok(())
}

/// A webhook URL, parsed: `http` or `https`, a host, no user or password, no fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(url::Url);

impl WebhookUrl {
    /// Parses and checks a URL.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.len() > MAX_URL_LEN {
            return Err(format!("longer than {MAX_URL_LEN} bytes"));
        }
        let url = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err("the scheme must be https".to_owned());
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the URL has no host".to_owned());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("credentials in the URL are not allowed (sign with the secret)".to_owned());
        }
        if url.fragment().is_some() {
            return Err("the URL has a fragment".to_owned());
        }
        Ok(Self(url))
    }

    /// The URL.
    pub fn url(&self) -> &url::Url {
        &self.0
    }

    /// Whether it is plain `http`.
    pub fn is_plain_http(&self) -> bool {
        self.0.scheme() == "http"
    }

    /// Its host, lowercase (IPv6 without brackets).
    pub fn host(&self) -> String {
        match self.0.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string().to_ascii_lowercase(),
            None => String::new(),
        }
    }

    /// Its port (the scheme's default when none is given).
    pub fn port(&self) -> u16 {
        self.0.port_or_known_default().unwrap_or(443)
    }
}

/// The [`SIGNATURE_HEADER`] value of `body` sent at `timestamp` (unix seconds), signed with
/// `key`: `t=<timestamp>,v1=<hex HMAC-SHA256(key, "<timestamp>." + body)>`.
pub fn signature(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(key, timestamp, body))
    )
}

/// HMAC-SHA256 keyed by `key`, fed `"<timestamp>."` and `body`.
fn keyed(key: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    #[allow(clippy::expect_used)] // HMAC takes keys of any length
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("an HMAC key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn mac(key: &[u8], timestamp: i64, body: &[u8]) -> Vec<u8> {
    keyed(key, timestamp, body).finalize().into_bytes().to_vec()
}

/// Checks a [`SIGNATURE_HEADER`] value as a receiver would: the MAC matches (compared in
/// constant time) and the timestamp is within `tolerance_secs` of `now` (unix seconds).
pub fn verify(key: &[u8], header: &str, body: &[u8], now: i64, tolerance_secs: i64) -> bool {
    let mut timestamp = None;
    let mut given = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => given = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(timestamp), Some(given)) = (timestamp, given) else {
        return false;
    };
    if (now - timestamp).abs() > tolerance_secs {
        return false;
    }
    keyed(key, timestamp, body).verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(url: &str) -> Destination {
        Destination {
            nats: None,
            webhook: Some(Webhook {
                url: url.to_owned(),
                secret: "HOOK_KEY".to_owned(),
            }),
        }
    }

    #[test]
    fn validates_subjects_urls_and_secret_names() {
        let ok = Destinations {
            on_success: Some(Destination {
                nats: Some("orders.done".to_owned()),
                webhook: Some(Webhook {
                    url: "https://hooks.example.com/fnmesh?x=1".to_owned(),
                    secret: "HOOK_KEY".to_owned(),
                }),
            }),
            on_failure: Some(webhook("http://127.0.0.1:9000/h")),
        };
        ok.validate().unwrap();
        assert_eq!(ok.targets().len(), 3);
        for bad_subject in ["", "a..b", "a.*", "a.>", "a b", &"x.".repeat(9)] {
            let d = Destinations {
                on_success: Some(Destination {
                    nats: Some(bad_subject.to_owned()),
                    webhook: None,
                }),
                on_failure: None,
            };
            let e = d.validate().unwrap_err();
            assert_eq!(e.field, "on_success.nats", "{bad_subject:?}");
        }
        for bad_url in [
            "ftp://x.example/",
            "https://user:pw@x.example/",
            "https://x.example/#frag",
            "not a url",
            "file:///etc/passwd",
        ] {
            let d = Destinations {
                on_success: None,
                on_failure: Some(webhook(bad_url)),
            };
            let e = d.validate().unwrap_err();
            assert_eq!(e.field, "on_failure.webhook.url", "{bad_url:?}");
        }
        let mut bad_secret = webhook("https://x.example/");
        bad_secret.webhook.as_mut().unwrap().secret = "lower".to_owned();
        let d = Destinations {
            on_success: Some(bad_secret),
            on_failure: None,
        };
        assert_eq!(d.validate().unwrap_err().field, "on_success.webhook.secret");
        let empty = Destinations {
            on_success: Some(Destination::default()),
            on_failure: None,
        };
        assert_eq!(empty.validate().unwrap_err().field, "on_success");
    }

    #[test]
    fn conditions_match_terminal_statuses() {
        use InvocationStatus::*;
        assert!(DeliveryCondition::Success.matches(Succeeded));
        for s in [Failed, Timeout, DeadLettered] {
            assert!(DeliveryCondition::Failure.matches(s));
            assert!(!DeliveryCondition::Success.matches(s));
        }
        assert!(!DeliveryCondition::Failure.matches(Succeeded));
        assert!(!DeliveryCondition::Failure.matches(Cancelled));
        assert!(!DeliveryCondition::Success.matches(Cancelled));
    }

    #[test]
    fn signatures_verify_and_reject_tampering_and_old_timestamps() {
        let header = signature(b"k3y", 1_700_000_000, b"{\"a\":1}");
        assert!(header.starts_with("t=1700000000,v1="));
        assert!(verify(b"k3y", &header, b"{\"a\":1}", 1_700_000_100, 300));
        assert!(!verify(b"k3y", &header, b"{\"a\":2}", 1_700_000_100, 300));
        assert!(!verify(b"other", &header, b"{\"a\":1}", 1_700_000_100, 300));
        assert!(!verify(b"k3y", &header, b"{\"a\":1}", 1_700_001_000, 300));
        assert!(!verify(b"k3y", "v1=00", b"{\"a\":1}", 1_700_000_000, 300));
    }

    #[test]
    fn urls_name_host_and_port() {
        let u = WebhookUrl::parse("https://Hooks.Example.com/x").unwrap();
        assert_eq!((u.host().as_str(), u.port()), ("hooks.example.com", 443));
        let u = WebhookUrl::parse("http://[::1]:8080/").unwrap();
        assert_eq!((u.host().as_str(), u.port()), ("::1", 8080));
        assert!(u.is_plain_http());
    }
}
