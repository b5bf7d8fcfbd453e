//! Signed work ([`fnmesh_core::signing`]): the header a publishing bus adds to each invocation,
//! and the checks a pulling bus makes before it hands a delivery to its node.
//!
//! A pulled message is run only when, in this order: its signature header verifies with a
//! trusted key over its subject, reply header, `Nats-Msg-Id` and body (so nothing of it was
//! altered and it was not re-sent under another subject, inbox or id); its delivery attempt is
//! within the signed limit; its body parses, names the invocation of its `Nats-Msg-Id` and the
//! namespace and function of its subject, and has a valid config (a forged `timeout_ms` of
//! `u64::MAX` never reaches the executor); and no other stream message with the same invocation
//! id was delivered to this bus before (a replay after JetStream's dedupe window). Anything else
//! is terminated unrun, logged and counted (`fnmesh_rejected_messages_total{component="node"}`).
//!
//! Each work message also carries the gateway's [`Claim`] of the invocation
//! ([`fnmesh_core::claims`]): the pulling bus keeps it to sign the node's reports on it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_nats::header::HeaderMap;
use async_nats::jetstream;
use chrono::Utc;

use super::{JetStreamBus, REPLY_HEADER};
use fnmesh_core::claims::{Claim, CLAIM_HEADER, RECEIPTS_OFFERED_HEADER, RECEIPTS_VERSION};
use fnmesh_core::invocation::InvocationRequest;
use fnmesh_core::signing::{Envelope, Limits, Rejection, SIGNATURE_HEADER};
use fnmesh_core::subjects;
use fnmesh_core::InvocationId;

/// Invocation ids a bus remembers to refuse replays: about 100 bytes each.
const REPLAY_MEMORY: usize = 100_000;

/// The stream messages this bus delivered, by invocation id (bounded, oldest forgotten first).
#[derive(Default)]
pub(super) struct ReplayGuard {
    inner: Mutex<ReplayState>,
}

#[derive(Default)]
struct ReplayState {
    seen: HashMap<InvocationId, u64>,
    order: VecDeque<InvocationId>,
}

impl ReplayGuard {
    /// Remembers that `id` came in stream message `seq`; false when another message already
    /// brought the same id (redeliveries of one message are the same `seq`).
    fn admit(&self, id: InvocationId, seq: u64) -> bool {
        self.admit_in(id, Some(seq))
    }

    /// Remembers `id`, which came in a message no stream holds (sent direct): false when any
    /// message brought it before. Such a message is never delivered twice.
    fn admit_once(&self, id: InvocationId) -> bool {
        self.admit_in(id, None)
    }

    fn admit_in(&self, id: InvocationId, seq: Option<u64>) -> bool {
        // Direct messages are remembered under a sequence no stream message has.
        const DIRECT: u64 = u64::MAX;
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match state.seen.get(&id) {
            Some(&first) => seq.is_some_and(|seq| seq != DIRECT && first == seq),
            None => {
                let seq = seq.unwrap_or(DIRECT);
                if state.order.len() >= REPLAY_MEMORY {
                    if let Some(old) = state.order.pop_front() {
                        state.seen.remove(&old);
                    }
                }
                state.seen.insert(id, seq);
                state.order.push_back(id);
                true
            }
        }
    }
}

impl JetStreamBus {
    /// The headers and body of `request` as a work message on `subject` (queued or direct):
    /// `Nats-Msg-Id`, the reply inbox of a sync call, the traceparent, the gateway's signature
    /// and the claim. `reply` must have passed `check_reply`.
    pub(super) fn work_message(
        &self,
        request: &InvocationRequest,
        subject: &str,
        reply: Option<&str>,
    ) -> Result<(HeaderMap, Vec<u8>), crate::BusError> {
        let msg_id = subjects::invocation_msg_id(&request.id);
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        if let Some(reply) = reply {
            headers.insert(REPLY_HEADER, reply);
            // This gateway receipts the replies it stores (`crate::nats_receipts`).
            headers.insert(RECEIPTS_OFFERED_HEADER, RECEIPTS_VERSION);
        }
        // Built by the gateway from its own span (a validated type, never a client's header),
        // for NATS tooling; nodes read the same value from the request.
        if let Some(traceparent) = &request.traceparent {
            headers.insert(
                fnmesh_core::trace::TRACEPARENT_HEADER,
                traceparent.to_string().as_str(),
            );
        }
        let payload = serde_json::to_vec(request)
            .map_err(|e| super::backend("encoding the invocation", e))?;
        self.sign_work(&mut headers, subject, reply, &msg_id, request.id, &payload);
        Ok((headers, payload))
    }

    /// Adds the signature header of a work message (its other headers already set).
    fn sign_work(
        &self,
        headers: &mut HeaderMap,
        subject: &str,
        reply: Option<&str>,
        msg_id: &str,
        id: InvocationId,
        body: &[u8],
    ) {
        let signatures = &self.inner.signatures;
        let now = Utc::now().timestamp();
        let max_age = i64::try_from(signatures.max_age.as_secs()).unwrap_or(i64::MAX);
        let limits = Limits {
            expires_at: now.saturating_add(max_age),
            max_attempts: self.inner.max_deliver,
        };
        let envelope = Envelope {
            subject,
            reply,
            msg_id,
            body,
        };
        headers.insert(
            SIGNATURE_HEADER,
            signatures.signer.sign(&envelope, limits).as_str(),
        );
        headers.insert(
            CLAIM_HEADER,
            self.inner
                .node_check
                .claim(id, limits.max_attempts)
                .encode()
                .as_str(),
        );
    }

    /// The request of a pulled work message and its signed limits, or why it must not run.
    /// Its claim is held for the reports on it (with the key of the gateway that signed it).
    pub(super) fn check_work(
        &self,
        message: &jetstream::Message,
        attempt: u32,
        stream_seq: u64,
    ) -> Result<(InvocationRequest, Limits), Rejection> {
        self.check_work_parts(
            message.subject.as_str(),
            message.headers.as_ref(),
            &message.payload,
            attempt,
            Some(stream_seq),
        )
    }

    /// [`Self::check_work`] on a message's parts: a stream message (`stream_seq`, on a work
    /// subject) or a direct one (`None`, on a direct subject: see `direct`), whose id must
    /// never have come to this bus before.
    pub(super) fn check_work_parts(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        attempt: u32,
        stream_seq: Option<u64>,
    ) -> Result<(InvocationRequest, Limits), Rejection> {
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        let msg_id = header(async_nats::header::NATS_MESSAGE_ID.as_ref()).unwrap_or("");
        let envelope = Envelope {
            subject,
            reply: header(REPLY_HEADER),
            msg_id,
            body: payload,
        };
        let limits =
            self.inner
                .signatures
                .trusted
                .verify(header(SIGNATURE_HEADER), &envelope, attempt)?;
        let request: InvocationRequest =
            serde_json::from_slice(payload).map_err(|_| Rejection::Invalid)?;
        let f = &request.function;
        let expected = match stream_seq {
            Some(_) => subjects::bus_invocation_lane(
                &self.inner.prefix,
                &f.namespace,
                &f.name,
                request.priority,
            ),
            None => subjects::bus_direct(&self.inner.prefix, &f.namespace, &f.name),
        };
        let valid = msg_id == subjects::invocation_msg_id(&request.id)
            && subject == expected
            && f.config.validate().is_ok()
            && f.runtime.handler_file(&f.handler).is_ok();
        if !valid {
            return Err(Rejection::Invalid);
        }
        // Not signed: a node that altered it would only fail its own reports.
        let claim = header(CLAIM_HEADER)
            .and_then(Claim::parse)
            .ok_or(Rejection::Invalid)?;
        let admitted = match stream_seq {
            Some(seq) => self.inner.replays.admit(request.id, seq),
            None => self.inner.replays.admit_once(request.id),
        };
        if !admitted {
            return Err(Rejection::Replayed);
        }
        let gateway = header(SIGNATURE_HEADER)
            .and_then(fnmesh_core::signing::signer_of)
            .ok_or(Rejection::Malformed)?;
        self.inner.held.hold(
            request.id,
            claim,
            limits.max_attempts,
            &self.inner.signatures.signer,
            gateway,
        );
        // Not signed: stripping it only costs an event, adding it a wait for a receipt.
        if header(RECEIPTS_OFFERED_HEADER) == Some(RECEIPTS_VERSION) {
            self.inner.held.offer_receipts(request.id);
        }
        Ok((request, limits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_message_with_one_id_is_a_replay_and_redeliveries_are_not() {
        let guard = ReplayGuard::default();
        let id = InvocationId::new();
        assert!(guard.admit(id, 7));
        assert!(guard.admit(id, 7), "a redelivery of the same message");
        assert!(!guard.admit(id, 9), "another message with the same id");
        assert!(guard.admit(InvocationId::new(), 9));
        let direct = InvocationId::new();
        assert!(guard.admit_once(direct));
        assert!(!guard.admit_once(direct), "a direct message comes once");
        assert!(
            !guard.admit(direct, 3),
            "and is not run again from a stream"
        );
        assert!(
            !guard.admit_once(id),
            "nor is a stream message's id sent direct"
        );
    }

    #[test]
    fn the_memory_is_bounded() {
        let guard = ReplayGuard::default();
        let first = InvocationId::new();
        assert!(guard.admit(first, 0));
        for seq in 1..=REPLAY_MEMORY as u64 {
            assert!(guard.admit(InvocationId::new(), seq));
        }
        let state = guard.inner.lock().unwrap();
        assert_eq!(state.seen.len(), REPLAY_MEMORY);
        assert!(!state.seen.contains_key(&first));
    }
}
