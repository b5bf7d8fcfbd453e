//! The direct path of sync invocations: a gateway sends a sync invocation straight to a node
//! with a free slot, as one core-NATS request, instead of a durable publish, a pull and an ack.
//!
//! **Gateway** ([`JetStreamBus::send_direct`]): the work message is the one the work stream
//! would hold — the same body, `Nats-Msg-Id`, reply header, gateway signature and claim — on
//! `fnmesh.v1.<region>.direct.<namespace>.<function>` (`subjects::bus_direct`). Nodes of the
//! region subscribe to `fnmesh.v1.<region>.direct.>` in one queue group, so each message goes
//! to one node, which answers at once: [`ACCEPTED`] (it took a slot and runs it; the outcome
//! comes on the reply inbox, signed as every reply) or anything else (no slot free, or the
//! message refused). On a refusal, when no node listens (NATS's "no responders") or when the
//! request cannot be sent, the invocation is queued in JetStream as before: the direct path
//! only ever adds a node that could start it at once. An answer that does not come within
//! [`ACCEPT_WAIT`] counts as taken (the node may run it; sending it again could run it twice):
//! the caller waits for the outcome as for an accepted one.
//!
//! `max_concurrency` on this path: a gateway sends a function's sync calls direct only while
//! fewer than its `max_concurrency` of them are in flight from this gateway (held until the
//! caller stops waiting); past that they queue, where the server caps the function across
//! nodes. A node never runs more sandboxes of one function at once than `max_concurrency`
//! (its pool waits). So the cap holds per gateway and per node for direct calls, and across the
//! cluster for queued work; a strict cluster-wide cap is what the queue gives, which is why
//! the direct path is off unless `BusConfig::direct_sync` (`FNMESH_DIRECT_SYNC`) turns it on.
//!
//! Nothing durable holds a direct invocation until its node publishes the `Finished` event:
//! when no outcome comes before the caller's wait ends (the node was lost), the gateway stores
//! the request with its `queued` record so the reconciler runs it again ([`crate::Sent`]).
//!
//! **Node** ([`JetStreamBus::start_direct`]): a node takes direct work only on slots its
//! worker offers: while [`JetStreamBus::pull_work`] runs, its `max` free slots are offered
//! ([`Intake`]); a direct message that finds an offer takes it (checked like pulled
//! work: signature, subject, body, replay), is answered [`ACCEPTED`] and handed to that pull
//! as a delivery with a [`DirectAcker`] (nothing to settle; it cannot be redelivered). A node
//! whose slots are all taken is not pulling, offers nothing and answers [`BUSY`] at once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::{backend, check_reply, JetStreamBus, REPLY_HEADER};
use crate::{Acker, BusError, Delivery, ReplyTo};
use fnmesh_core::invocation::InvocationRequest;
use fnmesh_core::subjects;

/// A node's answer: it took the invocation and runs it.
pub(super) const ACCEPTED: &[u8] = b"+TAKEN";
/// A node's answer: no slot free; queue it.
pub(super) const BUSY: &[u8] = b"-BUSY";
/// A node's answer: the message was refused (not run); queue it (the pulling node refuses it
/// too, counted there).
const REFUSED: &[u8] = b"-REFUSED";

/// How long a gateway waits for a node's answer before it takes the call as taken.
pub(super) const ACCEPT_WAIT: Duration = Duration::from_secs(2);

/// The gateway side: direct calls in flight per function from this bus.
#[derive(Default)]
pub(super) struct InFlight {
    counts: Arc<Mutex<HashMap<String, u32>>>,
}

/// One direct call's place in its function's count, given back when dropped.
pub(super) struct Place {
    counts: Arc<Mutex<HashMap<String, u32>>>,
    key: String,
}

impl InFlight {
    /// A place for a call of `key`, unless `cap` calls of it are in flight already.
    fn take(&self, key: String, cap: u32) -> Option<Place> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= cap.max(1) {
            return None;
        }
        *count += 1;
        Some(Place {
            counts: self.counts.clone(),
            key,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The node side: the slots the pull in progress offers, and the direct deliveries taken on
/// them and not yet handed to the worker.
#[derive(Default)]
pub(super) struct Intake {
    subscribed: tokio::sync::OnceCell<()>,
    state: Mutex<IntakeState>,
}

#[derive(Default)]
struct IntakeState {
    offered: usize,
    taken: VecDeque<Delivery>,
}

impl Intake {
    fn state(&self) -> std::sync::MutexGuard<'_, IntakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers `slots` free slots to direct work (a pull is running).
    pub(super) fn offer(&self, slots: usize) {
        self.state().offered = slots;
    }

    /// Slots still offered.
    pub(super) fn offered(&self) -> usize {
        self.state().offered
    }

    /// Whether direct work was taken and not yet handed out.
    pub(super) fn has_taken(&self) -> bool {
        !self.state().taken.is_empty()
    }

    /// Withdraws the offer and returns what was taken on it.
    pub(super) fn withdraw(&self) -> Vec<Delivery> {
        let mut state = self.state();
        state.offered = 0;
        state.taken.drain(..).collect()
    }

    /// Takes one offered slot, if there is one.
    fn reserve(&self) -> bool {
        let mut state = self.state();
        if state.offered == 0 {
            return false;
        }
        state.offered -= 1;
        true
    }

    /// Gives back a slot [`Intake::reserve`]d for a message that was refused.
    fn unreserve(&self) {
        self.state().offered += 1;
    }

    fn push(&self, delivery: Delivery) {
        self.state().taken.push_back(delivery);
    }
}

/// Settles a direct delivery: there is nothing to settle (no stream holds it), and it cannot
/// be delivered again.
struct DirectAcker;

#[async_trait]
impl Acker for DirectAcker {
    async fn ack(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn nak(&self, _delay: Option<Duration>) -> Result<(), BusError> {
        Err(BusError::Backend(
            "a direct sync invocation cannot be delivered again".to_owned(),
        ))
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn term(&self) -> Result<(), BusError> {
        Ok(())
    }

    fn redelivers(&self) -> bool {
        false
    }
}

impl JetStreamBus {
    /// Sends sync `request` straight to a node with a free slot: true when one took it (or
    /// did not answer in time), false when it is to be queued instead.
    pub(super) async fn send_direct(
        &self,
        request: &InvocationRequest,
        reply: &ReplyTo,
    ) -> Result<bool, BusError> {
        let f = &request.function;
        let Some(place) = self.inner.direct_in_flight.take(
            format!("{}.{}", f.namespace, f.name),
            f.config.max_concurrency,
        ) else {
            return Ok(false);
        };
        if self.inner.client.connection_state() != async_nats::connection::State::Connected {
            return Err(BusError::Unavailable(
                "sending a sync invocation: not connected to NATS".to_owned(),
            ));
        }
        let reply = check_reply(reply)?;
        let subject = subjects::bus_direct(&self.inner.prefix, &f.namespace, &f.name);
        let (headers, payload) = self.work_message(request, &subject, Some(reply))?;
        let sent = self
            .inner
            .client
            .send_request(
                subject,
                async_nats::Request::new()
                    .headers(headers)
                    .payload(Bytes::from(payload))
                    .timeout(Some(ACCEPT_WAIT)),
            )
            .await;
        use async_nats::client::RequestErrorKind as Kind;
        let taken = match sent {
            Ok(answer) => answer.payload.as_ref() == ACCEPTED,
            Err(e) => match e.kind() {
                Kind::NoResponders => false,
                Kind::TimedOut => {
                    tracing::warn!(invocation.id = %request.id, "no node answered a direct sync invocation in time; waiting for its outcome as if taken");
                    true
                }
                _ => {
                    tracing::debug!(invocation.id = %request.id, error = %e, "direct sync invocation not sent; queueing it");
                    false
                }
            },
        };
        if taken {
            self.inner
                .inboxes
                .hold(&ReplyTo(reply.to_owned()), Box::new(place))
                .await;
        }
        Ok(taken)
    }

    /// Subscribes (once) to the region's direct work in the nodes' queue group, and answers
    /// each message at once: taken on a slot a waiting pull offers, or not.
    pub(super) async fn start_direct(&self) -> Result<(), BusError> {
        self.inner
            .direct_intake
            .subscribed
            .get_or_try_init(|| async {
                let mut messages = self
                    .inner
                    .client
                    .queue_subscribe(
                        subjects::bus_direct_all(&self.inner.prefix),
                        subjects::DIRECT_QUEUE_GROUP.to_owned(),
                    )
                    .await
                    .map_err(|e| backend("subscribing to direct work", e))?;
                let weak = Arc::downgrade(&self.inner);
                tokio::spawn(async move {
                    while let Some(message) = messages.next().await {
                        let Some(inner) = weak.upgrade() else { break };
                        let bus = JetStreamBus { inner };
                        let answer = bus.take_direct(&message);
                        if let Some(to) = message.reply {
                            if let Err(e) = bus.inner.client.publish(to, answer.into()).await {
                                tracing::debug!(error = %e, "answer to direct work not sent");
                            }
                        }
                    }
                });
                Ok::<(), BusError>(())
            })
            .await?;
        Ok(())
    }

    /// Takes one direct message on an offered slot (answering [`ACCEPTED`]), or says why not.
    fn take_direct(&self, message: &async_nats::Message) -> &'static [u8] {
        let intake = &self.inner.direct_intake;
        // Reserved before the checks: a message checked is remembered against replays, so
        // one that then found no slot could not run here when it comes again queued.
        if !intake.reserve() {
            return BUSY;
        }
        let headers = message.headers.as_ref();
        let checked =
            self.check_work_parts(message.subject.as_str(), headers, &message.payload, 1, None);
        let (request, limits) = match checked {
            Ok(checked) => checked,
            Err(reason) => {
                intake.unreserve();
                self.inner.signatures.rejections.count(reason);
                tracing::warn!(subject = %message.subject, reason = %reason, "direct work refused: not run");
                return REFUSED;
            }
        };
        let reply_to = headers
            .and_then(|h| h.get(REPLY_HEADER))
            .map(|v| ReplyTo(v.as_str().to_owned()))
            .filter(|r| check_reply(r).is_ok());
        let Some(reply_to) = reply_to else {
            intake.unreserve();
            tracing::warn!(invocation.id = %request.id, "direct work without a valid reply inbox refused");
            return REFUSED;
        };
        intake.push(Delivery {
            request,
            reply_to: Some(reply_to),
            attempt: 1,
            expires_at: limits.expires_at(),
            acker: Box::new(DirectAcker),
        });
        self.inner.pull.wake.notify_one();
        ACCEPTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_function_and_given_back() {
        let in_flight = InFlight::default();
        let a = in_flight.take("ns.f".into(), 2).unwrap();
        let _b = in_flight.take("ns.f".into(), 2).unwrap();
        assert!(in_flight.take("ns.f".into(), 2).is_none(), "at its cap");
        let _other = in_flight.take("ns.g".into(), 2).unwrap();
        drop(a);
        assert!(in_flight.take("ns.f".into(), 2).is_some());
    }

    #[test]
    fn only_offered_slots_are_taken() {
        let intake = Intake::default();
        assert!(!intake.reserve(), "nothing offered while no pull waits");
        intake.offer(2);
        assert!(intake.reserve());
        assert!(intake.reserve());
        assert!(!intake.reserve());
        intake.unreserve();
        assert!(intake.reserve());
        assert!(intake.withdraw().is_empty());
        assert!(!intake.reserve(), "withdrawn");
    }
}
