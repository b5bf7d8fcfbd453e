//! The audit log: who did what, to which thing, from where, and how it ended.
//!
//! Recording happens in one place, around the whole HTTP service ([`AuditLog::service`], set
//! up by [`crate::server`]): when a response leaves, the request's method and path are
//! classified ([`classify`]) and an [`AuditEntry`] is queued if the call was a management
//! action (functions, aliases, secrets, keys, tokens, namespaces, dead letters, cancellations —
//! never invocations or reads) or any authentication or authorization failure (401 or 403, on
//! every route).
//!
//! Who the caller was is noted while the request is handled: the auth filter calls
//! [`note_principal`], and a handler that learns its target only from the body (creating a
//! function) calls [`note_target`]; both write to a per-request slot held in a task-local, so
//! nothing has to be threaded through the filters. An unauthenticated caller is `anonymous`.
//!
//! Entries go through a bounded channel to one writer task ([`AuditWriter`]), so a request
//! rarely waits for the database. When the channel is full the request waits for room as long
//! as it takes (backpressure): a management entry (keys, functions, secrets, tokens, admin) or
//! a 403 is never dropped while the writer runs.
//!
//! Authentication failures (401) do not take that path: anyone can send them by the thousand,
//! and they must not crowd out management entries. They are summed per (source, action,
//! target) over a window (`GatewayConfig::audit_failure_window`) into one entry whose `count`
//! says how many calls it stands for; the writer stores the window's groups when it ends. At
//! most [`MAX_FAILURE_GROUPS`] groups are open per window; failures that would open another
//! are dropped, counted in `fnmesh_audit_entries_dropped_total{kind="auth_failure"}` — the
//! only entries ever dropped under load. On shutdown the writer stores everything queued and
//! summed before it exits.
//!
//! An entry holds ids, names, a status and an IP address: never a body, a header, a query
//! string or a secret value.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fnmesh_core::Namespace;
use fnmesh_store::{AuditEntry, MetadataStore};
use std::future::Future;
use std::pin::Pin;

use hyper::{Method, Request};
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warp::reply::Response;

use crate::auth::Principal;
use crate::metrics::GatewayMetrics;

/// Entries waiting for the writer, at most (a request whose entry finds it full waits).
pub(crate) const QUEUE_CAPACITY: usize = 4096;
/// Groups of authentication failures summed in one window, at most.
pub(crate) const MAX_FAILURE_GROUPS: usize = 1024;
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
        (m, ["v1", "functions", name, "aliases", alias, ..]) => c(
            match (m, reads) {
                (_, true) => "alias.get",
                (Method::PUT, _) => "alias.put",
                (Method::DELETE, _) => "alias.delete",
                (Method::POST, _) => "alias.rollback",
                _ => "alias.other",
            },
            Some(format!("alias/{name}/{alias}")),
            !reads,
        ),
        (_, ["v1", "registries"]) => c(
            if reads {
                "registry.list"
            } else {
                "registry.other"
            },
            None,
            !reads,
        ),
        (m, ["v1", "registries", host]) => c(
            match m {
                Method::PUT => "registry.put",
                Method::DELETE => "registry.delete",
                _ => "registry.other",
            },
            Some(format!("registry/{host}")),
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
        (Method::POST, ["v1", "invocations", id, "cancel"]) => {
            c("invocation.cancel", Some(format!("invocation/{id}")), true)
        }
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
    failures: Arc<Failures>,
    counters: Counters,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("failures_dropped", &self.counters.failures_dropped.get())
            .field("lost", &self.counters.lost.get())
            .finish_non_exhaustive()
    }
}

/// What the audit log counts of the entries it could not store.
#[derive(Clone, Debug)]
pub(crate) struct Counters {
    /// Authentication failures dropped under overload (too many groups in one window), or
    /// whose aggregate could not be stored.
    pub failures_dropped: IntCounter,
    /// Other entries lost: the writer had stopped, or the store kept failing.
    pub lost: IntCounter,
}

impl Counters {
    /// The gateway's `fnmesh_audit_entries_dropped_total` counters.
    pub(crate) fn of(metrics: &GatewayMetrics) -> Self {
        Self {
            failures_dropped: metrics.audit_dropped("auth_failure"),
            lost: metrics.audit_dropped("management"),
        }
    }

    /// Counters registered nowhere (tests).
    #[cfg(test)]
    fn detached() -> Self {
        let counter = |name: &str| IntCounter::new(name, "test").expect("a valid counter");
        Self {
            failures_dropped: counter("failures_dropped"),
            lost: counter("lost"),
        }
    }
}

/// What groups authentication failures: where from, what was tried, on what.
type FailureKey = (Option<String>, String, Option<String>);

/// Authentication failures (401) of the current window, one entry per [`FailureKey`] whose
/// `count` sums them; at most [`MAX_FAILURE_GROUPS`] groups.
#[derive(Debug, Default)]
struct Failures {
    groups: Mutex<HashMap<FailureKey, AuditEntry>>,
}

impl Failures {
    /// Adds a failure to its group; `false` (the failure is dropped) when it would open a group
    /// past [`MAX_FAILURE_GROUPS`].
    fn add(&self, entry: AuditEntry) -> bool {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let key = (
            entry.source.clone(),
            entry.action.clone(),
            entry.target.clone(),
        );
        if let Some(group) = groups.get_mut(&key) {
            group.count = group.count.saturating_add(entry.count);
            return true;
        }
        if groups.len() >= MAX_FAILURE_GROUPS {
            return false;
        }
        groups.insert(key, entry);
        true
    }

    /// The window's groups, oldest first, leaving none.
    fn take(&self) -> Vec<AuditEntry> {
        let groups = std::mem::take(&mut *self.groups.lock().unwrap_or_else(|p| p.into_inner()));
        let mut entries: Vec<AuditEntry> = groups.into_values().collect();
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        entries
    }
}

/// The task that stores queued entries and the aggregated authentication failures.
pub(crate) struct AuditWriter {
    rx: mpsc::Receiver<AuditEntry>,
    store: Arc<dyn MetadataStore>,
    failures: Arc<Failures>,
    window: Duration,
    counters: Counters,
}

/// A log and its writer, connected by a channel of `capacity`; authentication failures are
/// summed over `window`.
pub(crate) fn channel(
    store: Arc<dyn MetadataStore>,
    capacity: usize,
    window: Duration,
    counters: Counters,
) -> (AuditLog, AuditWriter) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let failures = Arc::new(Failures::default());
    (
        AuditLog {
            tx,
            failures: failures.clone(),
            counters: counters.clone(),
        },
        AuditWriter {
            rx,
            store,
            failures,
            window: window.max(Duration::from_millis(1)),
            counters,
        },
    )
}

impl AuditLog {
    /// Records an entry. An authentication failure (401) is added to its group of the current
    /// window (dropped and counted if too many groups are open); any other entry is queued,
    /// waiting for room as long as it takes: it is never dropped while the writer runs.
    pub(crate) async fn record(&self, entry: AuditEntry) {
        if entry.status == 401 {
            if !self.failures.add(entry) {
                self.counters.failures_dropped.inc();
                tracing::debug!(
                    audit.failures_dropped_total = self.counters.failures_dropped.get(),
                    "authentication failure not audited: too many sources and actions this window"
                );
            }
            return;
        }
        if let Err(mpsc::error::SendError(entry)) = self.tx.send(entry).await {
            self.counters.lost.inc();
            tracing::error!(
                audit.action = %entry.action,
                audit.actor = %entry.actor,
                audit.lost_total = self.counters.lost.get(),
                reason = "the audit writer has stopped",
                "audit entry lost"
            );
        }
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
    /// Every `window` (and at the end) the aggregated authentication failures are stored.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        let mut flush = tokio::time::interval(self.window);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        flush.tick().await;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    self.rx.close();
                    while let Some(entry) = self.rx.recv().await {
                        self.write(&entry, &self.counters.lost).await;
                    }
                    break;
                }
                entry = self.rx.recv() => match entry {
                    Some(entry) => self.write(&entry, &self.counters.lost).await,
                    None => break,
                },
                _ = flush.tick() => self.flush_failures().await,
            }
        }
        self.flush_failures().await;
        tracing::debug!("audit writer stopped");
    }

    async fn flush_failures(&self) {
        for entry in self.failures.take() {
            self.write(&entry, &self.counters.failures_dropped).await;
        }
    }

    async fn write(&self, entry: &AuditEntry, lost: &IntCounter) {
        let mut backoff = Duration::from_millis(50);
        for attempt in 1..=WRITE_ATTEMPTS {
            match self.store.append_audit(entry).await {
                Ok(()) => return,
                Err(e) if attempt == WRITE_ATTEMPTS => {
                    lost.inc_by(u64::from(entry.count));
                    tracing::error!(
                        audit.action = %entry.action,
                        audit.actor = %entry.actor,
                        audit.count = entry.count,
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

    fn failure(source: &str, action: &str) -> AuditEntry {
        AuditEntry::new(ANONYMOUS, None, action, None, 401, Some(source))
    }

    fn management(n: usize) -> AuditEntry {
        AuditEntry::new(
            "key_admin",
            None,
            "key.create",
            Some(&format!("key/{n}")),
            201,
            Some("10.0.0.1"),
        )
    }

    async fn sqlite() -> (tempfile::TempDir, Arc<dyn MetadataStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = fnmesh_store::sqlite::SqliteStore::open(&dir.path().join("audit.db"))
            .await
            .unwrap();
        (dir, Arc::new(store))
    }

    async fn stored(store: &Arc<dyn MetadataStore>) -> Vec<AuditEntry> {
        let mut entries = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .list_audit(
                    &fnmesh_store::AuditFilter::default(),
                    1000,
                    cursor.as_deref(),
                )
                .await
                .unwrap();
            entries.extend(page.items);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return entries,
            }
        }
    }

    #[test]
    fn auth_failures_are_summed_per_source_and_action() {
        let failures = Failures::default();
        for _ in 0..1000 {
            assert!(failures.add(failure("10.0.0.9", "function.list")));
        }
        assert!(failures.add(failure("10.0.0.9", "key.create")));
        assert!(failures.add(failure("10.0.0.7", "function.list")));
        let groups = failures.take();
        let mut counts: Vec<(Option<&str>, &str, u32)> = groups
            .iter()
            .map(|e| (e.source.as_deref(), e.action.as_str(), e.count))
            .collect();
        counts.sort();
        assert_eq!(
            counts,
            vec![
                (Some("10.0.0.7"), "function.list", 1),
                (Some("10.0.0.9"), "function.list", 1000),
                (Some("10.0.0.9"), "key.create", 1),
            ]
        );
        assert!(
            failures.take().is_empty(),
            "a window's groups are taken once"
        );
    }

    #[test]
    fn past_the_group_cap_new_failures_are_dropped_but_known_groups_still_count() {
        let failures = Failures::default();
        for i in 0..MAX_FAILURE_GROUPS {
            assert!(failures.add(failure(&format!("10.1.{}.{}", i / 256, i % 256), "x")));
        }
        assert!(
            !failures.add(failure("192.0.2.1", "x")),
            "a new group is refused"
        );
        assert!(
            failures.add(failure("10.1.0.0", "x")),
            "a known group still counts"
        );
        let groups = failures.take();
        assert_eq!(groups.len(), MAX_FAILURE_GROUPS);
        assert_eq!(groups.iter().map(|e| u64::from(e.count)).sum::<u64>(), 1025);
    }

    #[tokio::test]
    async fn a_flood_of_401s_does_not_crowd_out_management_entries() {
        let (_dir, store) = sqlite().await;
        let counters = Counters::detached();
        // A queue of 2, and the writer not running yet: the old log dropped entries past it.
        let (log, writer) = channel(
            store.clone(),
            2,
            Duration::from_secs(3600),
            counters.clone(),
        );
        let flood = (0..MAX_FAILURE_GROUPS + 500)
            .map(|i| failure(&format!("10.2.{}.{}", i / 256, i % 256), "function.list"));
        for entry in flood {
            log.record(entry).await;
        }
        assert_eq!(
            counters.failures_dropped.get(),
            500,
            "only failures past the group cap are dropped, and counted"
        );
        // Management entries past the queue's room wait for it instead of being dropped.
        let recorder = {
            let log = log.clone();
            tokio::spawn(async move {
                for n in 0..10 {
                    log.record(management(n)).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!recorder.is_finished(), "the third entry waits for room");
        let stop = CancellationToken::new();
        let writer = tokio::spawn(writer.run(stop.clone()));
        recorder.await.unwrap();
        stop.cancel();
        writer.await.unwrap();

        let entries = stored(&store).await;
        let managed = entries.iter().filter(|e| e.action == "key.create").count();
        assert_eq!(managed, 10, "every management entry is stored");
        let failures: Vec<&AuditEntry> = entries.iter().filter(|e| e.status == 401).collect();
        assert_eq!(failures.len(), MAX_FAILURE_GROUPS);
        assert!(failures.iter().all(|e| e.count == 1));
        assert_eq!(counters.lost.get(), 0);
    }

    #[tokio::test]
    async fn failures_are_stored_once_per_window_with_their_count() {
        let (_dir, store) = sqlite().await;
        let (log, writer) = channel(
            store.clone(),
            16,
            Duration::from_millis(50),
            Counters::detached(),
        );
        for _ in 0..300 {
            log.record(failure("198.51.100.4", "function.invoke")).await;
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(writer.run(stop.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let entries = loop {
            let entries = stored(&store).await;
            if !entries.is_empty() || tokio::time::Instant::now() > deadline {
                break entries;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].count, 300);
        assert_eq!(entries[0].source.as_deref(), Some("198.51.100.4"));
        assert_eq!(entries[0].actor, ANONYMOUS);
        // The next window starts afresh.
        log.record(failure("198.51.100.4", "function.invoke")).await;
        stop.cancel();
        task.await.unwrap();
        let entries = stored(&store).await;
        assert_eq!(entries.len(), 2);
        assert_eq!(entries.iter().map(|e| e.count).sum::<u32>(), 301);
    }
}
