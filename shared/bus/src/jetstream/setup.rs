//! Setting up a JetStream bus: its streams (created or updated, with retries), the event and
//! dead-letter consumers, and the durable consumer of each function's work.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};

use super::scheduler::PullState;
use super::{backend, Inner, JetStreamBus};
use crate::{BusConfig, BusError, ATTACH_WAIT};
use fnmesh_core::invocation::InvocationRequest;
use fnmesh_core::subjects::{self, BusPrefix, BusRole};

/// Unacked deliveries the event and dead-letter consumers allow at most.
const MAX_ACK_PENDING: i64 = 100_000;

/// Creates or updates a stream, retrying a few times: when processes start together, their
/// creates race, and nats-server (2.9) can refuse the loser with "subjects overlap" or "name
/// in use" although the winner made the very same stream; the retry then finds and updates it.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
    what: &str,
) -> Result<(), BusError> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match js.create_or_update_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if attempt < ATTEMPTS => {
                tracing::debug!(stream = %config.name, attempt, error = %e, "{what} failed; retrying");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(backend(what, e)),
        }
    }
}

/// Consumers the work stream may hold: one per function with work (see
/// [`JetStreamBus::ensure_function_consumer`]).
pub const MAX_FUNCTION_CONSUMERS: i32 = 100_000;

/// Function consumers a gateway remembers having made sure of, at most (past it, the expired
/// entries are dropped).
const MAX_ENSURED: usize = 100_000;

impl JetStreamBus {
    /// Sets up (or reuses) the streams and consumers of `prefix` on an existing connection.
    pub(super) async fn set_up(
        client: async_nats::Client,
        prefix: &str,
        config: BusConfig,
    ) -> Result<Self, BusError> {
        let prefix = BusPrefix::parse(prefix).map_err(|e| backend("bus prefix", e))?;
        let js = jetstream::new(client.clone());

        let (work_stream, events, dead) = if config.manage_streams {
            let (work, events, dead) = manage(&js, &prefix, &config).await?;
            (work, Some(events), Some(dead))
        } else {
            (attach(&js, &prefix).await?, None, None)
        };
        tracing::debug!(bus.prefix = %prefix, "jetstream bus ready");
        let node_check = Arc::new(super::reports::NodeCheck::new(
            config.signatures.signer.clone(),
            config.signatures.trusted.clone(),
            config.signatures.rejections.clone(),
            js.clone(),
            &prefix,
        ));
        let bus = Self {
            inner: Arc::new(Inner {
                client,
                js,
                prefix,
                max_deliver: config.max_deliver.max(1),
                ack_wait: config.ack_wait,
                work_stream,
                events,
                dead,
                ensured: std::sync::Mutex::new(HashMap::new()),
                consumer_idle: config.function_consumer_idle,
                repairs: Default::default(),
                pull: PullState::default(),
                inboxes: Default::default(),
                receipts: Default::default(),
                direct_sync: config.direct_sync,
                direct_in_flight: Default::default(),
                direct_intake: Default::default(),
                signatures: config.signatures,
                namespace_capacity: u64::try_from(config.namespace_capacity.max(1))
                    .unwrap_or(u64::MAX),
                namespace_held: Default::default(),
                replays: Default::default(),
                held: Default::default(),
                node_check,
            }),
        };
        if config.manage_streams {
            bus.serve_consumer_repairs().await?;
        }
        Ok(bus)
    }

    /// Makes sure the durable consumer of `request`'s function (its priority's lane) exists with the function's
    /// `max_concurrency` as `max_ack_pending` (the cap holds across every node together) and
    /// the bus's inactive threshold (the server deletes it after that long without pulls or
    /// acks). Cached per process for half the threshold: a consumer this process made sure of
    /// was pulled from after each publish since (when a node had room), so the server cannot
    /// have deleted it; when no node had room for the whole threshold, nodes find the work
    /// without a consumer later and ask for it again ([`Self::repair_function_consumer`]).
    /// A changed cap updates the consumer.
    pub(super) async fn ensure_function_consumer(
        &self,
        request: &InvocationRequest,
    ) -> Result<(), BusError> {
        let f = &request.function;
        let name = subjects::bus_function_consumer_lane(
            &self.inner.prefix,
            &f.namespace,
            &f.name,
            request.priority,
        );
        let cap = i64::from(f.config.max_concurrency.max(1));
        let idle = self.inner.consumer_idle;
        let fresh = self.ensured().get(&name).is_some_and(|(made_cap, at)| {
            *made_cap == cap && (idle.is_zero() || at.elapsed() < idle / 2)
        });
        if fresh {
            return Ok(());
        }
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: subjects::bus_invocation_lane(
                &self.inner.prefix,
                &f.namespace,
                &f.name,
                request.priority,
            ),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.inner.ack_wait,
            max_deliver: i64::from(self.inner.max_deliver),
            max_ack_pending: cap,
            inactive_threshold: idle,
            ..Default::default()
        };
        // Create-or-update: an existing consumer with another cap is updated.
        self.inner
            .work_stream
            .create_consumer(config)
            .await
            .map_err(|e| {
                // The server holds as many consumers as it may: a capacity limit of the
                // broker (retry later), not a failure of this request.
                let at_limit = matches!(
                    e.kind(),
                    stream::ConsumerErrorKind::JetStream(js)
                        if js.error_code() == jetstream::ErrorCode::MAXIMUM_CONSUMERS_LIMIT
                );
                if at_limit {
                    tracing::warn!(nats.consumer = %name, "the work stream holds as many consumers as the server allows");
                    BusError::Full
                } else {
                    backend(&format!("creating consumer {name}"), e)
                }
            })?;
        let mut ensured = self.ensured();
        if ensured.len() >= MAX_ENSURED {
            ensured.retain(|_, (_, at)| idle.is_zero() || at.elapsed() < idle / 2);
        }
        ensured.insert(name, (cap, tokio::time::Instant::now()));
        Ok(())
    }

    /// Makes the consumer of `namespace`'s `function` (lane `priority`) again if work waits for it in the
    /// stream (the server deleted it after its inactive threshold while no node had room, or
    /// between a publish and the pull that would have kept it): with the cap of the newest
    /// work of that function. Nothing when no work waits.
    pub(super) async fn repair_function_consumer(
        &self,
        namespace: &fnmesh_core::Namespace,
        function: &fnmesh_core::FunctionName,
        priority: fnmesh_core::Priority,
    ) -> Result<bool, BusError> {
        let subject =
            subjects::bus_invocation_lane(&self.inner.prefix, namespace, function, priority);
        let message = match self
            .inner
            .work_stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) => message,
            Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => {
                return Ok(false)
            }
            Err(e) => return Err(backend("reading a function's newest work", e)),
        };
        // Only gateways may publish work (and every piece is signed by one); the request is
        // read for its function's cap only, and must be of the function named.
        let request: InvocationRequest = serde_json::from_slice(&message.payload)
            .map_err(|e| backend("decoding a function's newest work", e))?;
        if &request.function.namespace != namespace
            || &request.function.name != function
            || request.priority != priority
        {
            return Err(backend(
                "repairing a consumer",
                format!("work on {subject} names another function"),
            ));
        }
        let name =
            subjects::bus_function_consumer_lane(&self.inner.prefix, namespace, function, priority);
        self.ensured().remove(&name);
        self.ensure_function_consumer(&request).await?;
        Ok(true)
    }

    fn ensured(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, tokio::time::Instant)>> {
        self.inner
            .ensured
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Creates or updates the streams of `prefix` and the recorders' consumers: the work stream,
/// the event consumer and the dead-letter consumer.
async fn manage(
    js: &jetstream::Context,
    prefix: &BusPrefix,
    config: &BusConfig,
) -> Result<
    (
        stream::Stream,
        consumer::PullConsumer,
        consumer::PullConsumer,
    ),
    BusError,
> {
    let capacity = i64::try_from(config.capacity.max(1)).unwrap_or(i64::MAX);
    let work_name = subjects::bus_stream(prefix, BusRole::Invocations);
    let mut work_config = stream::Config {
        name: work_name.clone(),
        subjects: vec![subjects::bus_invocations_all(prefix)],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: config.replicas.max(1),
        max_messages: capacity,
        // Subjects are per function and priority: one function's share of the queue.
        max_messages_per_subject: i64::try_from(config.function_capacity.max(1))
            .unwrap_or(i64::MAX),
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        duplicate_window: config.dedupe_window,
        allow_direct: true,
        // One consumer per function invoked (`ensure_function_consumer`): nats-server
        // 2.15 gives every stream a default limit of 1,000 consumers unless it sets its
        // own, past which work for a 1,001st function is refused.
        max_consumers: MAX_FUNCTION_CONSUMERS,
        ..Default::default()
    };
    if let Err(e) = ensure_stream(js, work_config.clone(), "creating the work stream").await {
        // A limit the server refuses: an account allowing fewer consumers, or a server that
        // cannot change an existing stream's limit (before nats-server 2.12). Keep the limit
        // the stream has (the server's default for a new one) rather than fail to start.
        let current = match js.get_stream(&work_name).await {
            Ok(mut existing) => {
                existing
                    .info()
                    .await
                    .map_err(|e| backend("reading the work stream", e))?
                    .config
                    .max_consumers
            }
            Err(_) => 0,
        };
        tracing::warn!(
            nats.stream = %work_name,
            error = %e,
            max_consumers = current,
            "the work stream's consumer limit could not be raised; work for functions past it is refused as a full queue"
        );
        work_config.max_consumers = current;
        ensure_stream(js, work_config, "creating the work stream").await?;
    }
    let work_stream = js
        .get_stream(&work_name)
        .await
        .map_err(|e| backend("getting the work stream", e))?;
    // Work is consumed per function (see `ensure_function_consumer`); the single consumer
    // of earlier versions would overlap their filters on a work-queue stream.
    let legacy = subjects::bus_consumer(prefix, BusRole::Invocations);
    if work_stream.consumer_info(&legacy).await.is_ok() {
        work_stream
            .delete_consumer(&legacy)
            .await
            .map_err(|e| backend("removing the legacy work consumer", e))?;
    }

    let events_name = subjects::bus_stream(prefix, BusRole::Events);
    ensure_stream(
        js,
        stream::Config {
            name: events_name.clone(),
            subjects: vec![subjects::bus_node_events_all(prefix)],
            retention: stream::RetentionPolicy::Interest,
            storage: stream::StorageType::File,
            num_replicas: config.replicas.max(1),
            max_messages: i64::try_from(config.event_capacity.max(1)).unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        },
        "creating the event stream",
    )
    .await?;
    let events_stream = js
        .get_stream(&events_name)
        .await
        .map_err(|e| backend("getting the event stream", e))?;
    let events = create_consumer(
        &events_stream,
        subjects::bus_consumer(prefix, BusRole::Events),
        config.ack_wait,
        -1,
        MAX_ACK_PENDING,
    )
    .await?;

    let dead_name = subjects::bus_stream(prefix, BusRole::DeadLetters);
    ensure_stream(
        js,
        stream::Config {
            name: dead_name.clone(),
            subjects: vec![
                subjects::max_deliveries_advisories_all(prefix),
                subjects::bus_dead_letter_records(prefix),
            ],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: config.replicas.max(1),
            // Bounded like every stream: a dead letter is an advisory and at most one node
            // record about a message still held by the work stream (until it is recorded), so
            // twice the work stream's capacity is never reached by honest traffic.
            max_messages: capacity.saturating_mul(2),
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        },
        "creating the dead-letter stream",
    )
    .await?;
    let dead_stream = js
        .get_stream(&dead_name)
        .await
        .map_err(|e| backend("getting the dead-letter stream", e))?;
    let dead = create_consumer(
        &dead_stream,
        subjects::bus_consumer(prefix, BusRole::DeadLetters),
        Duration::from_secs(30),
        -1,
        MAX_ACK_PENDING,
    )
    .await?;

    Ok((work_stream, events, dead))
}

/// Looks up the work stream of `prefix` that a gateway made, waiting up to [`ATTACH_WAIT`]
/// for it to appear (a node may start before any gateway of its region).
async fn attach(js: &jetstream::Context, prefix: &BusPrefix) -> Result<stream::Stream, BusError> {
    let name = subjects::bus_stream(prefix, BusRole::Invocations);
    let deadline = tokio::time::Instant::now() + ATTACH_WAIT;
    let mut logged = false;
    loop {
        match js.get_stream(&name).await {
            Ok(stream) => return Ok(stream),
            Err(e) if tokio::time::Instant::now() < deadline => {
                if !logged {
                    tracing::info!(bus.stream = %name, error = %e, "waiting for a gateway of this region to create the work stream");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(backend(
                    &format!(
                        "the work stream {name} (made by a gateway of this region) was not found within {}s",
                        ATTACH_WAIT.as_secs()
                    ),
                    e,
                ))
            }
        }
    }
}

async fn create_consumer(
    stream: &stream::Stream,
    name: String,
    ack_wait: Duration,
    max_deliver: i64,
    max_ack_pending: i64,
) -> Result<consumer::PullConsumer, BusError> {
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver,
            max_ack_pending,
            ..Default::default()
        })
        .await
        .map_err(|e| backend(&format!("creating consumer {name}"), e))
}
