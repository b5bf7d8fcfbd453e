//! NATS request/reply clients: any NATS client invokes a function with a plain request.
//!
//! Gateways subscribe to `fnmesh.v1.req.*` ([`subjects::requests_all`]) and to their region's
//! `fnmesh.v1.req.<region>.*` ([`subjects::requests_in`]) in the queue group
//! [`subjects::REQUEST_QUEUE_GROUP`], so each request is answered by one gateway: with a NATS
//! server per region, one of the region whose server the client is on, unless it names
//! another region. A request's
//! payload is the JSON body of an HTTP invoke; its `Authorization: Bearer <key>` header is
//! authenticated by the same [`Authenticator`](crate::auth::Authenticator) (the namespace comes
//! from the key) and counted against the same per-key rate limit. It then goes through
//! [`invoke::invoke`] like a sync HTTP invoke, and the reply is the same `InvocationResult`
//! JSON, or the same `{"error":{"code","message"}}` body ([`ApiError::body`]) with the code HTTP
//! would answer. The headers `Fnmesh-Alias: <alias>` and `Fnmesh-Version: <n>` ([`ALIAS_HEADER`],
//! [`VERSION_HEADER`]) pick the version as `?alias=` and `?version=` do over HTTP,
//! `Fnmesh-Priority: low` ([`PRIORITY_HEADER`]) is `?priority=low`, and
//! `Idempotency-Key` is the HTTP header's. Refusals (401/403) go to the audit log like the HTTP route's, with the source
//! `nats`.
//!
//! Nothing a client sends is copied into what we publish: its headers are read for the key
//! and the version and dropped, and only a reply inbox (`_INBOX.…`, or `_R_.…` across accounts) is ever
//! answered ([`subjects::reply_allowed`]): a request with any other reply subject is dropped,
//! logged and counted (`fnmesh_nats_requests_dropped_total{reason="reply_not_inbox"}`), so a
//! key holder cannot make a gateway publish to a subject of its choice.
//!
//! At most [`MAX_IN_FLIGHT`] requests are served at once; past that a request is answered
//! `unavailable` at once (another gateway of the group may take the retry). One key lineage
//! may have at most [`GatewayConfig::max_nats_requests_per_key`] of them in flight; past that
//! its requests are answered `concurrency_limited`, so one key cannot take every slot.
//!
//! [`GatewayConfig::max_nats_requests_per_key`]: crate::GatewayConfig::max_nats_requests_per_key On shutdown the
//! subscription is drained — requests already delivered to us are answered `unavailable` —
//! and in-flight requests get up to the drain timeout to reply; then the replies are flushed.

use std::sync::Arc;
use std::time::Instant;

use async_nats::{Client, HeaderMap, Message, Subject, Subscriber};
use bytes::Bytes;
use fnmesh_core::subjects::{self, RequestSubjectError};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{AuditLog, Classified};
use crate::error::{ApiError, NatsApiError};
use crate::invocations::invoke::{self, Call, Invoked, Mode, Selector};
use crate::ratelimit;
use crate::state::State;

/// Requests served at once, at most, by one gateway.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;
/// The audit log's `source` of a NATS request (a NATS client's address is not known here).
const AUDIT_SOURCE: &str = "nats";

/// The request subscription of a gateway, subscribed but not yet serving.
pub(crate) struct NatsRequests {
    client: Client,
    subscriber: futures::stream::SelectAll<Subscriber>,
}

impl NatsRequests {
    /// Subscribes to every request subject and to those of `region` in the gateways' queue
    /// group and waits until the server has the subscriptions, so requests are taken from the
    /// moment this returns.
    pub(crate) async fn subscribe(
        client: Client,
        region: &subjects::BusPrefix,
    ) -> Result<Self, NatsApiError> {
        let group = subjects::REQUEST_QUEUE_GROUP;
        let mut subscribers = Vec::new();
        for subject in [subjects::requests_all(), subjects::requests_in(region)] {
            let error = |detail: String| NatsApiError::Subscribe {
                subject: subject.clone(),
                group,
                detail,
            };
            subscribers.push(
                client
                    .queue_subscribe(subject.clone(), group.to_owned())
                    .await
                    .map_err(|e| error(e.to_string()))?,
            );
            client.flush().await.map_err(|e| error(e.to_string()))?;
            tracing::info!(nats.subject = %subject, nats.queue_group = group, "serving NATS requests");
        }
        Ok(Self {
            client,
            subscriber: futures::stream::select_all(subscribers),
        })
    }

    /// Serves requests until `shutdown` is cancelled (or the connection closes for good), then
    /// drains: see the module doc.
    pub(crate) async fn serve(self, state: State, audit: AuditLog, shutdown: CancellationToken) {
        let Self {
            client,
            mut subscriber,
        } = self;
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let in_flight = TaskTracker::new();
        loop {
            let message = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = subscriber.next() => match next {
                    Some(message) => message,
                    None => {
                        tracing::warn!("the NATS request subscription ended; no longer serving NATS requests");
                        break;
                    }
                },
            };
            let Some(reply) = usable_reply(&state, &message) else {
                continue;
            };
            match permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let state = state.clone();
                    let client = client.clone();
                    let audit = audit.clone();
                    in_flight.spawn(async move {
                        let body = answer(&state, &audit, &message).await;
                        send(&client, reply, body).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    let error = ApiError::Unavailable(format!(
                        "the gateway is serving {MAX_IN_FLIGHT} NATS requests already; retry later"
                    ));
                    tracing::warn!(nats.subject = %message.subject, "NATS request refused: too many in flight");
                    send(&client, reply, error_body(&error)).await;
                }
            }
        }

        let drain_timeout = state.config.drain_timeout;
        let deadline = tokio::time::Instant::now() + drain_timeout;
        tracing::info!(
            in_flight = in_flight.len(),
            drain_timeout_ms = drain_timeout.as_millis() as u64,
            "NATS requests draining"
        );
        in_flight.close();
        let mut drained = Ok(());
        for subscription in subscriber.iter_mut() {
            if let Err(e) = subscription.drain().await {
                drained = Err(e);
            }
        }
        if let Err(e) = drained {
            tracing::warn!(error = %e, "draining the NATS request subscriptions failed");
        } else {
            // Requests the server delivered before it saw the unsubscribe: refused, so the
            // client can retry on another gateway rather than wait for its timeout.
            let refusal = error_body(&ApiError::Unavailable(
                "the gateway is shutting down; retry".into(),
            ));
            while let Ok(Some(message)) = tokio::time::timeout_at(deadline, subscriber.next()).await
            {
                if let Some(reply) = usable_reply(&state, &message) {
                    send(&client, reply, refusal.clone()).await;
                }
            }
        }
        if tokio::time::timeout_at(deadline, in_flight.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = in_flight.len(),
                "drain timeout reached; abandoning in-flight NATS requests"
            );
        }
        let flush_by =
            deadline.max(tokio::time::Instant::now() + std::time::Duration::from_secs(1));
        match tokio::time::timeout_at(flush_by, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing NATS replies failed"),
            Err(_) => tracing::warn!("flushing NATS replies timed out"),
        }
        tracing::info!("NATS requests stopped");
    }
}

/// The reply subject of a request, when it has one we may publish to; a request without one
/// is dropped and counted.
fn usable_reply(state: &State, message: &Message) -> Option<Subject> {
    match &message.reply {
        None => {
            tracing::debug!(nats.subject = %message.subject, "NATS message without a reply subject; ignored");
            state.metrics.observe_nats_request_dropped("no_reply");
            None
        }
        Some(reply) if !subjects::reply_allowed(reply.as_str()) => {
            let shown: String = reply.as_str().chars().take(80).collect();
            tracing::warn!(
                nats.subject = %message.subject,
                nats.reply = %shown.escape_debug(),
                "NATS request whose reply subject is not a reply inbox (_INBOX.*, _R_.*); dropped"
            );
            state
                .metrics
                .observe_nats_request_dropped("reply_not_inbox");
            None
        }
        Some(reply) => Some(reply.clone()),
    }
}

/// Serves one request: the reply body, a result or an error.
async fn answer(state: &State, audit: &AuditLog, message: &Message) -> Bytes {
    let started = Instant::now();
    // Audited like the HTTP invoke route: refusals (401/403) are recorded.
    let classified = Classified {
        action: "function.invoke".to_owned(),
        target: subjects::parse_request(message.subject.as_str())
            .ok()
            .map(|target| format!("function/{}", target.function)),
        management: false,
    };
    let result = audit
        .record_call(&classified, AUDIT_SOURCE, handle(state, message), |r| {
            r.as_ref().map_or_else(|e| e.status().as_u16(), |_| 200)
        })
        .await;
    let (body, outcome) = match result {
        Ok(Invoked::Finished(result)) => match serde_json::to_vec(&result) {
            Ok(json) => (Bytes::from(json), "ok"),
            Err(e) => {
                let error = ApiError::Internal(format!("serializing an invocation result: {e}"));
                (error_body(&error), error.code())
            }
        },
        Ok(Invoked::Queued(id)) => {
            // Not reached: requests are sync. Answer as an async HTTP invoke would.
            let json = serde_json::json!({ "id": id, "status": "queued" });
            (Bytes::from(json.to_string()), "ok")
        }
        Err(error) => (error_body(&error), error.code()),
    };
    tracing::info!(
        nats.subject = %message.subject,
        outcome,
        duration_ms = started.elapsed().as_millis() as u64,
        "NATS request"
    );
    body
}

/// Authenticates, rate-limits and invokes, deciding like the HTTP invoke route.
async fn handle(state: &State, message: &Message) -> Result<Invoked, ApiError> {
    let principal = state
        .authenticator
        .authenticate_header(authorization(message.headers.as_ref()))
        .await?;
    crate::audit::note_principal(&principal);
    ratelimit::check_key(state, &principal).await?;
    // Held until the invocation is answered.
    let permits = &state.nats_request_permits;
    let Some(_in_flight) = permits.try_acquire(&principal.root_id) else {
        state.metrics.observe_concurrency_limited("nats_request");
        return Err(ApiError::ConcurrencyLimited(format!(
            "this key (with the keys minted from it) has {} NATS requests in flight already",
            permits.limit()
        )));
    };
    let name = subjects::parse_request(message.subject.as_str())
        .map_err(|e| match e {
            RequestSubjectError::Name(e) => ApiError::from(e),
            shape @ RequestSubjectError::Shape(_) => ApiError::BadRequest(shape.to_string()),
        })?
        .function;
    let limit = state.config.max_body_bytes;
    if message.payload.len() > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let headers = message.headers.as_ref();
    let call = Call {
        selector: selector(headers)?,
        mode: Mode::Sync,
        idempotency_key: invoke::idempotency_key(
            header_values(headers, invoke::IDEMPOTENCY_KEY_HEADER).map(str::as_bytes),
        )?,
        priority: invoke::parse_priority(optional_header(headers, PRIORITY_HEADER)?)?,
    };
    Ok(
        invoke::invoke(state, &principal, &name, &call, &message.payload)
            .await?
            .invoked,
    )
}

/// The request header naming the alias to invoke (`?alias=` of HTTP).
pub(crate) const ALIAS_HEADER: &str = "Fnmesh-Alias";
/// The header that asks for a priority (`high`, `normal`, `low`; capped at the function's).
pub(crate) const PRIORITY_HEADER: &str = "Fnmesh-Priority";
/// The request header naming the version to invoke (`?version=` of HTTP).
pub(crate) const VERSION_HEADER: &str = "Fnmesh-Version";

/// The values of header `name`, matched case-insensitively as in HTTP.
fn header_values<'a>(
    headers: Option<&'a HeaderMap>,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .into_iter()
        .flat_map(|headers| headers.iter())
        .filter(move |(n, _)| AsRef::<str>::as_ref(n).eq_ignore_ascii_case(name))
        .flat_map(|(_, values)| values.iter())
        .map(|value| value.as_str())
}

/// The one `Authorization` header value; `None` when absent or given more than once.
fn authorization(headers: Option<&HeaderMap>) -> Option<&str> {
    let mut values = header_values(headers, "authorization");
    let value = values.next()?;
    values.next().is_none().then_some(value)
}

/// The value of an optional header that may be given once (`bad_request` if more often).
fn optional_header<'a>(
    headers: Option<&'a HeaderMap>,
    name: &'a str,
) -> Result<Option<&'a str>, ApiError> {
    let mut values = header_values(headers, name);
    let value = values.next();
    match values.next() {
        None => Ok(value),
        Some(_) => Err(ApiError::BadRequest(format!(
            "header {name} is given more than once"
        ))),
    }
}

/// The version a request's `Fnmesh-Version` / `Fnmesh-Alias` headers select.
fn selector(headers: Option<&HeaderMap>) -> Result<Selector, ApiError> {
    let version = optional_header(headers, VERSION_HEADER)?
        .map(|v| {
            v.trim().parse::<u32>().map_err(|_| {
                ApiError::BadRequest(format!("header {VERSION_HEADER} is not a version number"))
            })
        })
        .transpose()?;
    Selector::parse(version, optional_header(headers, ALIAS_HEADER)?)
}

fn error_body(error: &ApiError) -> Bytes {
    Bytes::from(error.body().to_string())
}

/// Publishes a reply: our payload only, no headers.
async fn send(client: &Client, reply: Subject, body: Bytes) {
    if let Err(e) = client.publish(reply, body).await {
        tracing::warn!(error = %e, "publishing a NATS reply failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorization_header_is_found_case_insensitively_and_only_once() {
        assert_eq!(authorization(None), None);
        let mut headers = HeaderMap::new();
        assert_eq!(authorization(Some(&headers)), None);
        headers.insert("authorization", "Bearer k");
        assert_eq!(authorization(Some(&headers)), Some("Bearer k"));
        headers.insert("Authorization", "Bearer other");
        assert_eq!(authorization(Some(&headers)), None);
        let mut headers = HeaderMap::new();
        headers.append("Authorization", "Bearer a");
        headers.append("Authorization", "Bearer b");
        assert_eq!(authorization(Some(&headers)), None);
    }
}
