//! Storage of invocations: their records (with fenced and batched node updates), the requests
//! of accepted work until it finishes, captured logs and dead letters.
//!
//! The SQL lives in `sql/invocations.rs`, once for both engines, but for the fenced update
//! and the batches, which each engine writes its own way (`sqlite/invocations.rs`,
//! `postgres/invocations.rs`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Page, StoreError};
use fnmesh_core::idempotency::IdempotencyKey;
use fnmesh_core::ids::InvocationId;
use fnmesh_core::invocation::{
    DeadLetterRecord, InvocationLogs, InvocationRequest, InvocationResult, InvocationStatus,
};
use fnmesh_core::names::{FunctionName, Namespace};

/// Filter of [`InvocationStore::list_invocations`].
#[derive(Debug, Clone, Default)]
pub struct InvocationFilter {
    /// Only this function.
    pub function: Option<FunctionName>,
    /// Only this status.
    pub status: Option<InvocationStatus>,
}

/// What [`InvocationStore::write_invocations`] did, per item in slice order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Per insert: whether its record was inserted (`false`: the id existed, or came earlier in
    /// the same batch; nothing was changed).
    pub inserted: Vec<bool>,
    /// Per update: whether it applied (and its logs, if any, were stored with it).
    pub applied: Vec<bool>,
}

/// A finished invocation with what was stored with it, as an edge gateway exports it to its
/// hub ([`InvocationStore::finished_after`], [`InvocationStore::import_finished`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FinishedInvocation {
    /// The record (terminal).
    pub record: InvocationResult,
    /// When the exporting store last changed it: with the id, its position in the export.
    pub updated_at: DateTime<Utc>,
    /// Its captured logs, if any were stored.
    #[serde(default)]
    pub logs: Option<InvocationLogs>,
    /// Its dead letter, when the record is `dead_lettered` and the dead letter is still held.
    #[serde(default)]
    pub dead_letter: Option<DeadLetterRecord>,
}

/// What [`InvocationStore::insert_keyed_invocation`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keyed {
    /// The key was free (or expired): it is now this invocation's, whose `queued` record was
    /// committed with it.
    Inserted,
    /// The key is another invocation's (nothing was written).
    Existing {
        /// The invocation the key made.
        invocation_id: InvocationId,
        /// What the key is bound to.
        fingerprint: String,
    },
}

/// How much a store holds ([`InvocationStore::store_size`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreSize {
    /// Bytes on disk (SQLite: the database file's pages; PostgreSQL: the database).
    pub bytes: u64,
    /// Invocation records (PostgreSQL: the planner's estimate, refreshed by `ANALYZE`).
    pub invocations: u64,
}

/// Invocation records, logs and dead letters, a supertrait of [`super::MetadataStore`].
///
/// Every method taking a namespace is scoped by it: a row of another namespace is
/// indistinguishable from an absent one.
#[async_trait]
pub trait InvocationStore: Send + Sync + 'static {
    /// Accepts an invocation: commits its `queued` record (`InvocationResult::queued(request)`)
    /// together with the full request (function snapshot and payload) in one transaction, so
    /// accepted work can be re-published by [`InvocationStore::stale_queued`] until it finishes.
    /// Returns the record. `Conflict` if the id exists.
    async fn insert_invocation(
        &self,
        request: &InvocationRequest,
    ) -> Result<InvocationResult, StoreError>;

    /// Accepts an invocation under an idempotency key of its namespace: in one transaction,
    /// takes the key (bound to `fingerprint`) and commits the `queued` record with its request
    /// as [`InvocationStore::insert_invocation`] does. A key made before `expired_before`,
    /// whose invocation is gone (retention), or whose invocation was refused before any node
    /// had it (`failed` at attempt 0, as the gateway marks work it will not run) is taken
    /// anew: a retry after such a refusal runs. If the key is another
    /// invocation's, nothing is written and that invocation is returned. `Conflict` if the
    /// request's id exists.
    async fn insert_keyed_invocation(
        &self,
        request: &InvocationRequest,
        key: &IdempotencyKey,
        fingerprint: &str,
        expired_before: DateTime<Utc>,
    ) -> Result<Keyed, StoreError>;

    /// The writes of the invocation path that concurrent requests make, committed together
    /// (group commit): the `queued` records of accepted invocations with their requests (each as
    /// by [`InvocationStore::insert_invocation`], a taken id reported rather than an error), then
    /// updates in slice order, each fenced (as by [`InvocationStore::update_invocation`]) and
    /// stored with its logs, if it has any, when it applies: a finished record is never read
    /// without its logs. An update whose record is absent is inserted as it is, without a
    /// request (so it is never re-published): the one write of a sync invocation, which is
    /// stored once it has finished, or an outcome whose gateway never wrote it; the first
    /// update of such an id is inserted, the later ones apply over it. One transaction.
    async fn write_invocations(
        &self,
        inserts: &[&InvocationRequest],
        outcomes: &[(&InvocationResult, Option<&InvocationLogs>)],
    ) -> Result<Written, StoreError>;

    /// Cancels an invocation of `namespace` that has not finished: in one write, its record
    /// becomes `cancelled` (error kind `cancelled`, `message`), which is final — no update
    /// but a node's `cancelled` report applies over it — and its request is dropped (never published again). Returns the
    /// record as it is after and whether this call cancelled it (`false`: it had finished, or
    /// was cancelled before, and is unchanged); `None` if there is no such invocation.
    async fn cancel_invocation(
        &self,
        namespace: &Namespace,
        id: &InvocationId,
        message: &str,
    ) -> Result<Option<(InvocationResult, bool)>, StoreError>;

    /// Applies an update from a node. Fenced, in one atomic step:
    /// - over a terminal record, only a higher attempt applies; over `cancelled` (final)
    ///   only a `cancelled` report of the same or a higher attempt (the node's own, with the
    ///   logs and timings of what it killed);
    /// - over a non-terminal record, the same or a higher attempt applies, and a lower attempt
    ///   only if it brings a terminal result (a slow attempt that did finish).
    ///
    /// Once a terminal record is applied the stored request is dropped. Returns whether the
    /// update was applied; `NotFound` if the record does not exist.
    async fn update_invocation(&self, record: &InvocationResult) -> Result<bool, StoreError>;

    /// Applies several updates, as if by [`InvocationStore::update_invocation`] one after the
    /// other in slice order (same fencing; several updates of one id are fine). Returns, per
    /// update, whether it was applied; a record that does not exist is `false`, not an error,
    /// so one unknown id cannot fail a batch. Backends override this with one round trip.
    async fn update_invocations(
        &self,
        records: &[InvocationResult],
    ) -> Result<Vec<bool>, StoreError> {
        let mut applied = Vec::with_capacity(records.len());
        for record in records {
            applied.push(match self.update_invocation(record).await {
                Ok(done) => done,
                Err(StoreError::NotFound(_)) => false,
                Err(e) => return Err(e),
            });
        }
        Ok(applied)
    }

    /// Replaces the stored request of an invocation whose record is still `queued` (same id;
    /// an edge placing it at its hub after it was committed); whether it was replaced.
    async fn replace_queued_request(&self, request: &InvocationRequest)
        -> Result<bool, StoreError>;

    /// Requests whose record is still `queued` (in any namespace) and was created before
    /// `older_than`, oldest first, at most `limit` (clamped to 1..=1000). For re-publishing
    /// under the same invocation id.
    async fn stale_queued(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<InvocationRequest>, StoreError>;

    /// Retention: removes finished invocations (terminal records, with their logs, idempotency
    /// keys and destination deliveries) of any
    /// namespace last updated before `before`, oldest first, at most `limit` (clamped to
    /// 1..=1000), in one transaction; how many were removed. Queued and running records are never
    /// removed; dead letters are kept (an operator replays or deletes them).
    async fn prune_invocations(&self, before: DateTime<Utc>, limit: u32)
        -> Result<u64, StoreError>;

    /// Finished invocations (terminal records) of any namespace after position `after`
    /// (exclusive; `None`: from the first) and last updated before `before`, in
    /// `(updated_at, id)` order, at most `limit` (clamped to 1..=1000), each with its logs and
    /// (dead-lettered ones) its dead letter. What an edge gateway exports to its hub, resuming
    /// after the last one exported.
    async fn finished_after(
        &self,
        after: Option<(DateTime<Utc>, InvocationId)>,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<FinishedInvocation>, StoreError>;

    /// Stores finished invocations made by another store (an edge's, at its hub), in slice
    /// order: a record that is absent is inserted as it is (without a request: it finished),
    /// one that exists is updated as by [`InvocationStore::update_invocation`] (fenced: an
    /// import never overwrites a newer attempt); logs are stored with a record that applied;
    /// a dead letter is stored as by [`InvocationStore::put_dead_letter`]. Idempotent: per
    /// item, whether it changed anything.
    async fn import_finished(&self, items: &[FinishedInvocation]) -> Result<Vec<bool>, StoreError>;

    /// How much the store holds, for metrics ([`StoreSize`]).
    async fn store_size(&self) -> Result<StoreSize, StoreError>;

    /// Records still `running` in any namespace, oldest first, at most `limit` (clamped to
    /// 1..=1000). For marking what a dead single-process platform was running when it stopped.
    async fn running_invocations(&self, limit: u32) -> Result<Vec<InvocationResult>, StoreError>;

    /// One invocation.
    async fn get_invocation(
        &self,
        namespace: &Namespace,
        id: &InvocationId,
    ) -> Result<Option<InvocationResult>, StoreError>;

    /// Several invocations by `(namespace, id)`, in slice order (`None` where absent or in
    /// another namespace). Backends override this with one round trip.
    async fn get_invocations(
        &self,
        keys: &[(Namespace, InvocationId)],
    ) -> Result<Vec<Option<InvocationResult>>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        for (namespace, id) in keys {
            found.push(self.get_invocation(namespace, id).await?);
        }
        Ok(found)
    }

    /// Invocations, newest first.
    async fn list_invocations(
        &self,
        namespace: &Namespace,
        filter: &InvocationFilter,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<InvocationResult>, StoreError>;

    /// Stores (replaces) the captured logs of an invocation.
    async fn put_logs(&self, id: &InvocationId, logs: &InvocationLogs) -> Result<(), StoreError>;

    /// Stores several invocations' logs, as if by [`InvocationStore::put_logs`] in slice order
    /// (for a repeated id the last one wins). Backends override this with one round trip.
    async fn put_logs_batch(
        &self,
        logs: &[(InvocationId, InvocationLogs)],
    ) -> Result<(), StoreError> {
        for (id, entry) in logs {
            self.put_logs(id, entry).await?;
        }
        Ok(())
    }

    /// Per key, in slice order: whether logs of that invocation (in that namespace) are
    /// stored. Backends override this with one round trip.
    async fn logs_stored(
        &self,
        keys: &[(Namespace, InvocationId)],
    ) -> Result<Vec<bool>, StoreError> {
        let mut stored = Vec::with_capacity(keys.len());
        for (namespace, id) in keys {
            stored.push(self.get_logs(namespace, id).await?.is_some());
        }
        Ok(stored)
    }

    /// The captured logs, if any were stored.
    async fn get_logs(
        &self,
        namespace: &Namespace,
        id: &InvocationId,
    ) -> Result<Option<InvocationLogs>, StoreError>;

    /// Dead-letters an invocation in one transaction: stores (or replaces) `dead` and sets the
    /// invocation's record to `dead_lettered` with `dead.last_error`, `dead.attempts` and
    /// `completed_at`, unless the record is already terminal (a result that raced in wins:
    /// then nothing is stored and `false` is returned). An absent record is inserted first
    /// (from `dead.request`), so a dead letter is never lost. Idempotent on the id.
    async fn put_dead_letter(&self, dead: &DeadLetterRecord) -> Result<bool, StoreError>;

    /// Dead letters, newest first, of one namespace or (admins) of all; at most `limit`
    /// (clamped to 1..=1000), continuing after `cursor`.
    async fn list_dead_letters(
        &self,
        namespace: Option<&Namespace>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<DeadLetterRecord>, StoreError>;

    /// One dead letter (`None` if absent or in another namespace, when one is given).
    async fn get_dead_letter(
        &self,
        namespace: Option<&Namespace>,
        id: &InvocationId,
    ) -> Result<Option<DeadLetterRecord>, StoreError>;

    /// Removes a dead letter (its invocation record stays `dead_lettered`); whether it existed.
    async fn delete_dead_letter(
        &self,
        namespace: Option<&Namespace>,
        id: &InvocationId,
    ) -> Result<bool, StoreError>;
}
