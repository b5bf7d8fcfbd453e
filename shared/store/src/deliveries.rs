//! Deliveries of finished async invocations to their function's destinations
//! ([`fnmesh_core::destination`]): the store is their outbox.
//!
//! A delivery is written with its invocation's `queued` record, in the same transaction, by
//! [`crate::InvocationStore`]'s inserts of a request with `notify_destinations` (one per
//! destination of its function's config). It waits until the record turns terminal, then is
//! due or skipped — decided in the transaction that writes that status, by the database
//! (a trigger), so every path that finishes a record is covered. Gateways claim due
//! deliveries with a lease ([`DeliveryStore::claim_deliveries`]), send them and settle them
//! ([`DeliveryStore::settle_delivery`]); a gateway that dies holding one leaves it to be
//! claimed again when the lease runs out (at least once).
//!
//! The SQL lives in `sql/deliveries.rs`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use fnmesh_core::destination::{DeliveryCondition, DeliveryStatus, DeliveryTarget};
use fnmesh_core::ids::InvocationId;
use fnmesh_core::invocation::InvocationResult;
use fnmesh_core::names::Namespace;

/// A due delivery a gateway claimed ([`DeliveryStore::claim_deliveries`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedDelivery {
    /// The delivery's id.
    pub id: String,
    /// Its invocation.
    pub invocation_id: InvocationId,
    /// The invocation's namespace.
    pub namespace: Namespace,
    /// Its condition.
    pub on: DeliveryCondition,
    /// What it is sent to.
    pub target: DeliveryTarget,
    /// The tries made, counting this one (it fences the settle).
    pub attempt: u32,
}

/// How a try of a delivery ended ([`DeliveryStore::settle_delivery`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Accepted by its receiver.
    Delivered,
    /// Failed; try again at `at`.
    Retry {
        /// When.
        at: DateTime<Utc>,
        /// Why this try failed.
        error: String,
    },
    /// Given up.
    Failed {
        /// Why.
        error: String,
    },
}

/// The outbox of destination deliveries, a supertrait of [`super::MetadataStore`].
#[async_trait]
pub trait DeliveryStore: Send + Sync + 'static {
    /// Claims up to `limit` (clamped to 1..=1000) deliveries due at `now` (any namespace),
    /// soonest first: each one's try count goes up by one and it is not due again before
    /// `lease_until`, so no other gateway takes it meanwhile unless this one never settles it.
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;

    /// Settles a claimed delivery, fenced on its try (`attempt` as claimed): whether it
    /// applied (`false`: it was claimed again since, or settled). A delivered one keeps the
    /// error of the try before, if one failed.
    async fn settle_delivery(
        &self,
        id: &str,
        attempt: u32,
        settle: &Settle,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// One invocation of `namespace` with its deliveries, in the order they were made (one
    /// read for an invocation without destinations, as [`crate::InvocationStore::get_invocation`]).
    async fn invocation_with_deliveries(
        &self,
        namespace: &Namespace,
        id: &InvocationId,
    ) -> Result<Option<(InvocationResult, Vec<DeliveryStatus>)>, StoreError>;

    /// The deliveries of one invocation of `namespace`, in the order they were made.
    async fn deliveries_of(
        &self,
        namespace: &Namespace,
        invocation: &InvocationId,
    ) -> Result<Vec<DeliveryStatus>, StoreError>;
}
