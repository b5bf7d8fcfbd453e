//! The audit log: who did what, to which thing, from where, and how it ended.
//!
//! Recording happens in one place, around the whole HTTP service ([`AuditLog::service`], set
//! up by [`crate::server`]): when a response leaves, the request's method and path are
//! classified ([`classify`]) and an [`AuditEntry`] is queued if the call was a management
//! action (functions, secrets, keys, tokens, namespaces, dead letters — never invocations or
//! reads) or any authentication or authorization failure (401 or 403, on every route).
//!
//! Who the caller was is noted while the request is handled: the auth filter calls
//! [`note_principal`], and a handler that learns its target only from the body (creating a
//! function) calls [`note_target`]; both write to a per-request slot held in a task-local, so
//! nothing has to be threaded through the filters. An unauthenticated caller is `anonymous`.
//!
//! Entries go through a bounded channel to one writer task ([`AuditWriter`]), so a request
//! never waits for the database. When the channel is full the request waits up to
//! [`ENQUEUE_WAIT`] for room; beyond that the entry is dropped, counted in
//! [`AuditLog::dropped`] and logged as an error — never silently. On shutdown the writer
//! stores everything queued before it exits.
//!
//! An entry holds ids, names, a status and an IP address: never a body, a header, a query
//! string or a secret value.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fnmesh_core::Namespace;
use fnmesh_store::{AuditEntry, MetadataStore};
use std::future::Future;
use std::pin::Pin;

use hyper::{Method, Request};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warp::reply::Response;

use crate::auth::Principal;

/// Entries waiting for the writer, at most.
pub(crate) const QUEUE_CAPACITY: usize = 4096;
/// How long a request waits for room in a full queue before its entry is dropped (counted).
pub(crate) const ENQUEUE_WAIT: Duration = Duration::from_secs(2);
/// Attempts of the writer to store one entry.
const WRITE_ATTEMPTS: u32 = 3;
/// Who an unauthenticated caller is.
pub(crate) const ANONYMOUS: &str = "anonymous";

/// What handling a request noted for its audit entry.
#[derive(Debug, Default)]
struct Noted {
    actor: Option<String>,
    namespace: Option<Namespace>,
    target: Option<String>,
}

type Slot = Arc<Mutex<Noted>>;

tokio::task_local! {
    static CALL: Slot;
}

fn with_slot(f: impl FnOnce(&mut Noted)) {
    let _ = CALL.try_with(|slot| {
        let mut noted = slot.lock().unwrap_or_else(|poison| poison.into_inner());
        f(&mut noted);
    });
}

/// Notes who is calling (its key id or token subject, and the namespace it acts in).
pub(crate) fn note_principal(principal: &Principal) {
    with_slot(|n| {
        n.actor = Some(principal.key_id.clone());
        n.namespace = Some(principal.namespace.clone());
    });
}

/// Notes what the call acts on, when the path does not say (e.g. `function/<name>` on create).
pub(crate) fn note_target(target: impl Into<String>) {
    let target = target.into();
    with_slot(|n| n.target = Some(target));
}

/// How a request is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Classified {
    /// `<resource>.<verb>`, e.g. `function.delete`.
    pub action: String,
    /// The thing acted on, from the path.
    pub target: Option<String>,
    /// Whether a successful call is recorded (management actions), not only a refused one.
    pub management: bool,
}

fn verb(method: &Method) -> &'static str {
    match *method {
        Method::POST => "create",
        Method::PUT | Method::PATCH => "update",
        Method::DELETE => "delete",
        _ => "read",
    }
}

/// Classifies a request by its method and path (query strings are never looked at).
pub(crate) fn classify(method: &Method, path: &str) -> Classified {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let c = |action: &str, target: Option<String>, management: bool| Classified {
        action: action.to_owned(),
        target,
        management,
    };
    let reads = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    match (method.clone(), segments.as_slice()) {
        (Method::POST, ["v1", "functions"]) => c("function.create", None, true),
        (Method::GET, ["v1", "functions"]) => c("function.list", None, false),
        (m, ["v1", "functions", name]) => c(
            &format!("function.{}", verb(&m)),
            Some(format!("function/{name}")),
            !reads,
        ),
        (Method::POST, ["v1", "functions", name, "invoke"]) => {
            c("function.invoke", Some(format!("function/{name}")), false)
        }
        (_, ["v1", "functions", name, "secrets"]) => c(
            if reads { "secret.list" } else { "secret.other" },
            Some(format!("function/{name}")),
            !reads,
        ),
        (m, ["v1", "functions", name, "secrets", key]) => c(
            match m {
                Method::PUT => "secret.put",
                Method::DELETE => "secret.delete",
                _ => "secret.other",
            },
            Some(format!("secret/{name}/{key}")),
            !reads,
        ),
        (m, ["v1", "functions", name, ..]) => c(
            &format!("function.{}", verb(&m)),
            Some(format!("function/{name}")),
            false,
        ),
        (m, ["v1", "keys"]) => c(&format!("key.{}", verb(&m)), None, !reads),
        (m, ["v1", "keys", id, ..]) => c(
            &format!("key.{}", verb(&m)),
            Some(format!("key/{id}")),
            !reads,
        ),
        (Method::POST, ["v1", "auth", what]) => c(&format!("token.{what}"), None, true),
        (Method::POST, ["v1", "admin", "dlq", id, "replay"]) => {
            c("dlq.replay", Some(format!("dlq/{id}")), true)
        }
        (m, ["v1", "admin", "dlq", id]) => c(
            &format!("dlq.{}", verb(&m)),
            Some(format!("dlq/{id}")),
            !reads,
        ),
        (m, ["v1", "admin", "namespaces", rest @ ..]) => c(
            &format!("namespace.{}", verb(&m)),
            rest.first().map(|ns| format!("namespace/{ns}")),
            !reads,
        ),
        (m, ["v1", "admin", what, ..]) => c(&format!("admin.{what}.{}", verb(&m)), None, !reads),
        (m, ["v1", "invocations", ..]) => c(&format!("invocation.{}", verb(&m)), None, false),
        (m, ["v1", resource, ..]) => c(&format!("{resource}.{}", verb(&m)), None, false),
        (m, _) => c(&format!("http.{}", verb(&m)), Some(path.to_owned()), false),
    }
}

/// Whether a call with this classification and status is recorded.
fn recorded(classified: &Classified, status: u16) -> bool {
    matches!(status, 401 | 403) || (classified.management && status != 405)
}

/// The sending side of the audit log: cheap to clone, shared by every connection.
#[derive(Clone)]
pub(crate) struct AuditLog {
    tx: mpsc::Sender<AuditEntry>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// The task that stores queued entries.
pub(crate) struct AuditWriter {
    rx: mpsc::Receiver<AuditEntry>,
    store: Arc<dyn MetadataStore>,
    dropped: Arc<AtomicU64>,
}

/// A log and its writer, connected by a channel of `capacity`.
pub(crate) fn channel(store: Arc<dyn MetadataStore>, capacity: usize) -> (AuditLog, AuditWriter) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    (
        AuditLog {
            tx,
            dropped: dropped.clone(),
        },
        AuditWriter { rx, store, dropped },
    )
}

impl AuditLog {
    /// Entries lost so far (queue full past [`ENQUEUE_WAIT`], or the store failing).
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues an entry (waits up to [`ENQUEUE_WAIT`] when the queue is full).
    pub(crate) async fn record(&self, entry: AuditEntry) {
        let entry = match self.tx.try_send(entry) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(entry)) => entry,
            Err(mpsc::error::TrySendError::Closed(entry)) => {
                self.lost(&entry, "the audit writer has stopped");
                return;
            }
        };
        if let Err(e) = self.tx.send_timeout(entry, ENQUEUE_WAIT).await {
            let (entry, why) = match e {
                mpsc::error::SendTimeoutError::Timeout(entry) => (entry, "the audit queue is full"),
                mpsc::error::SendTimeoutError::Closed(entry) => {
                    (entry, "the audit writer has stopped")
                }
            };
            self.lost(&entry, why);
        }
    }

    fn lost(&self, entry: &AuditEntry, why: &str) {
        let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::error!(
            audit.action = %entry.action,
            audit.actor = %entry.actor,
            audit.dropped_total = total,
            reason = why,
            "audit entry lost"
        );
    }

    /// Records the call `slot` noted, when its classification and status say so.
    async fn record_noted(
        &self,
        slot: &Slot,
        classified: &Classified,
        status: u16,
        source: Option<&str>,
    ) {
        if !recorded(classified, status) {
            return;
        }
        let noted = std::mem::take(&mut *slot.lock().unwrap_or_else(|poison| poison.into_inner()));
        let entry = AuditEntry::new(
            noted.actor.as_deref().unwrap_or(ANONYMOUS),
            noted.namespace,
            &classified.action,
            noted.target.as_deref().or(classified.target.as_deref()),
            status,
            source,
        );
        self.record(entry).await;
    }

    /// Runs `call`, a request that did not arrive over HTTP (a NATS request), with a fresh slot
    /// for [`note_principal`] / [`note_target`], and records it like an HTTP call of the same
    /// `classified` action when `status_of` its outcome says so (e.g. an auth failure).
    pub(crate) async fn record_call<F>(
        &self,
        classified: &Classified,
        source: &str,
        call: F,
        status_of: impl FnOnce(&F::Output) -> u16,
    ) -> F::Output
    where
        F: std::future::Future,
    {
        let slot: Slot = Arc::default();
        let output = CALL.scope(slot.clone(), call).await;
        let status = status_of(&output);
        self.record_noted(&slot, classified, status, Some(source))
            .await;
        output
    }

    /// Wraps one connection's service: every request runs with a fresh slot for
    /// [`note_principal`] / [`note_target`], and its response is classified and recorded.
    pub(crate) fn service<S>(&self, inner: S, remote: Option<SocketAddr>) -> Audited<S> {
        Audited {
            inner,
            log: self.clone(),
            source: remote.map(|a| a.ip().to_string()),
        }
    }
}

/// A connection's service with the audit log around it (see [`AuditLog::service`]).
#[derive(Clone)]
pub(crate) struct Audited<S> {
    inner: S,
    log: AuditLog,
    source: Option<String>,
}

impl<S, B> hyper::service::Service<Request<B>> for Audited<S>
where
    S: tower_service::Service<Request<B>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        // warp's service is always ready: no `poll_ready` is needed before `call`.
        let mut inner = self.inner.clone();
        let log = self.log.clone();
        let source = self.source.clone();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let slot: Slot = Arc::default();
        let call = CALL.sync_scope(slot.clone(), || inner.call(req));
        Box::pin(async move {
            let response = CALL.scope(slot.clone(), call).await?;
            let status = response.status().as_u16();
            log.record_noted(&slot, &classify(&method, &path), status, source.as_deref())
                .await;
            Ok(response)
        })
    }
}

impl AuditWriter {
    /// Stores entries until every [`AuditLog`] is dropped, or until `stop` is cancelled: then
    /// the queue is closed (later entries are counted as lost) and what it holds is stored.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        loop {
            tokio::select! {
                entry = self.rx.recv() => match entry {
                    Some(entry) => self.write(&entry).await,
                    None => break,
                },
                () = stop.cancelled() => {
                    self.rx.close();
                    while let Some(entry) = self.rx.recv().await {
                        self.write(&entry).await;
                    }
                    break;
                }
            }
        }
        tracing::debug!("audit writer stopped");
    }

    async fn write(&self, entry: &AuditEntry) {
        let mut backoff = Duration::from_millis(50);
        for attempt in 1..=WRITE_ATTEMPTS {
            match self.store.append_audit(entry).await {
                Ok(()) => return,
                Err(e) if attempt == WRITE_ATTEMPTS => {
                    let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::error!(
                        audit.action = %entry.action,
                        audit.actor = %entry.actor,
                        audit.dropped_total = total,
                        error = %e,
                        "storing an audit entry failed; it is lost"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "storing an audit entry failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn action(method: Method, path: &str) -> (String, Option<String>, bool) {
        let c = classify(&method, path);
        (c.action, c.target, c.management)
    }

    #[test]
    fn management_calls_are_classified() {
        let t = |s: &str| Some(s.to_owned());
        assert_eq!(
            action(Method::POST, "/v1/functions"),
            ("function.create".into(), None, true)
        );
        assert_eq!(
            action(Method::PUT, "/v1/functions/resize"),
            ("function.update".into(), t("function/resize"), true)
        );
        assert_eq!(
            action(Method::DELETE, "/v1/functions/resize"),
            ("function.delete".into(), t("function/resize"), true)
        );
        assert_eq!(
            action(Method::PUT, "/v1/functions/resize/secrets/DB_PASSWORD"),
            ("secret.put".into(), t("secret/resize/DB_PASSWORD"), true)
        );
        assert_eq!(
            action(Method::DELETE, "/v1/keys/abc"),
            ("key.delete".into(), t("key/abc"), true)
        );
        assert_eq!(
            action(Method::POST, "/v1/admin/dlq/0190/replay"),
            ("dlq.replay".into(), t("dlq/0190"), true)
        );
        assert_eq!(
            action(Method::DELETE, "/v1/admin/dlq/0190"),
            ("dlq.delete".into(), t("dlq/0190"), true)
        );
        assert_eq!(
            action(Method::POST, "/v1/admin/namespaces"),
            ("namespace.create".into(), None, true)
        );
        assert_eq!(
            action(Method::POST, "/v1/auth/refresh"),
            ("token.refresh".into(), None, true)
        );
    }

    #[test]
    fn invocations_and_reads_are_not_management() {
        for (m, p) in [
            (Method::POST, "/v1/functions/resize/invoke"),
            (Method::GET, "/v1/functions"),
            (Method::GET, "/v1/functions/resize"),
            (Method::GET, "/v1/functions/resize/versions"),
            (Method::GET, "/v1/functions/resize/secrets"),
            (Method::GET, "/v1/invocations/abc/logs"),
            (Method::GET, "/v1/admin/audit"),
            (Method::GET, "/healthz"),
        ] {
            assert!(!classify(&m, p).management, "{m} {p}");
        }
    }

    #[test]
    fn refusals_are_always_recorded() {
        let read = classify(&Method::GET, "/v1/functions");
        assert!(recorded(&read, 401));
        assert!(recorded(&read, 403));
        assert!(!recorded(&read, 200));
        let delete = classify(&Method::DELETE, "/v1/functions/x");
        assert!(recorded(&delete, 204));
        assert!(recorded(&delete, 500));
        assert!(recorded(&delete, 404));
        for unknown in ["/nowhere", "/v1/nowhere"] {
            assert!(
                !recorded(&classify(&Method::POST, unknown), 404),
                "{unknown}"
            );
        }
    }
}
