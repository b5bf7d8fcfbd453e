//! Signed node reports ([`fnmesh_core::claims`]): what a node's bus adds to the events, sync
//! replies and dead-letter records it publishes, and how a gateway's bus checks them.
//!
//! - A node's bus keeps the [`Claim`] of every delivery it handed out ([`HeldClaims`], bounded)
//!   and signs each report with its own key (the bus's signer; a node makes a fresh one at
//!   start and registers its public half) and the proof derived from that claim.
//! - A gateway's bus ([`NodeCheck`]) accepts a report only when its signer is the key the node
//!   it names registered (looked up in the registry bucket, cached; or a key it trusts itself,
//!   as `fnmesh up`'s own node signs with the gateway's key), the signature covers subject
//!   and body, and the proof is valid for that invocation, node and attempt within the signed
//!   limit. Anything else is terminated (events) or dropped (replies), logged and counted
//!   (`fnmesh_rejected_messages_total{component="gateway"}`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use fnmesh_core::claims::{
    Claim, ClaimKey, NodeMessage, NodeSignature, VerifiedKey, NODE_SIGNATURE_HEADER,
};
use fnmesh_core::ids::NodeId;
use fnmesh_core::signing::{Rejection, Rejections, SigningKey, TrustedKeys};
use fnmesh_core::subjects::{self, BusPrefix};
use fnmesh_core::{InvocationId, NodeEvent};

use crate::registry::NodeInfo;

/// Deliveries whose claims a node's bus remembers: about 150 bytes each.
const HELD_MEMORY: usize = 100_000;
/// How often one node's registry entry is read again when its key does not match.
const KEY_REFRESH: Duration = Duration::from_secs(1);
/// Node ids remembered as unknown at most (then forgotten at once).
const UNKNOWN_MEMORY: usize = 10_000;

/// What a node holds of one delivery.
#[derive(Debug, Clone)]
struct Held {
    claim: Claim,
    max_attempts: u32,
    /// The node that reported on it first (from its first event), for dead-letter records.
    node_id: Option<String>,
}

/// The claims of the deliveries a node's bus handed out, by invocation id (bounded, oldest
/// forgotten first).
#[derive(Default)]
pub(crate) struct HeldClaims {
    inner: Mutex<HeldState>,
}

#[derive(Default)]
struct HeldState {
    held: HashMap<InvocationId, Held>,
    order: VecDeque<InvocationId>,
}

impl HeldClaims {
    /// Remembers the claim of a delivery of `id`.
    pub(crate) fn hold(&self, id: InvocationId, claim: Claim, max_attempts: u32) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = state.held.get_mut(&id) {
            held.claim = claim;
            held.max_attempts = max_attempts;
            return;
        }
        if state.order.len() >= HELD_MEMORY {
            if let Some(old) = state.order.pop_front() {
                state.held.remove(&old);
            }
        }
        state.held.insert(
            id,
            Held {
                claim,
                max_attempts,
                node_id: None,
            },
        );
        state.order.push_back(id);
    }

    /// The header signing a report on `id` by `node_id` for `attempt`: with the proof of the
    /// delivery's claim when this bus handed it out, else with none (accepted only from a
    /// signer the gateway trusts like itself).
    pub(crate) fn sign(
        &self,
        key: &SigningKey,
        message: &NodeMessage<'_>,
        id: InvocationId,
        node_id: &str,
        attempt: u32,
    ) -> String {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match state.held.get_mut(&id) {
            Some(held) => {
                if held.node_id.is_none() {
                    held.node_id = Some(node_id.to_owned());
                }
                message.sign(key, &held.claim, node_id, attempt, held.max_attempts)
            }
            None => message.sign(key, &Claim::none(), node_id, attempt, 0),
        }
    }

    /// The node that reported on `id`, if any.
    pub(crate) fn node_of(&self, id: InvocationId) -> Option<String> {
        let state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        state.held.get(&id).and_then(|h| h.node_id.clone())
    }
}

/// The node and attempt a report names.
pub(crate) fn reporter(event: &NodeEvent) -> (&str, u32) {
    match event {
        NodeEvent::Started {
            node_id, attempt, ..
        }
        | NodeEvent::Retrying {
            node_id, attempt, ..
        } => (node_id, *attempt),
        NodeEvent::Finished(outcome) => (
            outcome.result.node_id.as_deref().unwrap_or(""),
            outcome.result.attempt,
        ),
    }
}

/// A node's key as read from the registry.
struct Known {
    key: VerifiedKey,
    fetched: Instant,
}

/// Checks the reports of nodes on a gateway's bus.
pub(crate) struct NodeCheck {
    claims: ClaimKey,
    trusted: Arc<TrustedKeys>,
    rejections: Rejections,
    js: jetstream::Context,
    bucket: String,
    registry: tokio::sync::OnceCell<kv::Store>,
    keys: Mutex<HashMap<String, Known>>,
    unknown: Mutex<HashMap<String, Instant>>,
}

impl NodeCheck {
    pub(crate) fn new(
        signer: &SigningKey,
        trusted: Arc<TrustedKeys>,
        rejections: Rejections,
        js: jetstream::Context,
        prefix: &BusPrefix,
    ) -> Self {
        Self {
            claims: ClaimKey::of(signer),
            trusted,
            rejections,
            js,
            bucket: subjects::node_registry_bucket(prefix),
            registry: tokio::sync::OnceCell::new(),
            keys: Mutex::default(),
            unknown: Mutex::default(),
        }
    }

    /// The claim of a work message this gateway publishes.
    pub(crate) fn claim(&self, id: InvocationId, max_attempts: u32) -> Claim {
        self.claims.claim(&id.to_string(), max_attempts)
    }

    /// Checks a report on invocation `id` by `node_id` for `attempt` (`headers`, `subject` and
    /// `body` as received). Counts and returns the rejection, if any.
    pub(crate) async fn check(
        &self,
        headers: Option<&async_nats::HeaderMap>,
        subject: &str,
        body: &[u8],
        id: InvocationId,
        node_id: &str,
        attempt: u32,
    ) -> Result<(), Rejection> {
        let result = self
            .verify(headers, subject, body, id, node_id, attempt)
            .await;
        if let Err(reason) = result {
            self.rejections.count(reason);
        }
        result
    }

    async fn verify(
        &self,
        headers: Option<&async_nats::HeaderMap>,
        subject: &str,
        body: &[u8],
        id: InvocationId,
        node_id: &str,
        attempt: u32,
    ) -> Result<(), Rejection> {
        let header = headers
            .and_then(|h| h.get(NODE_SIGNATURE_HEADER))
            .map(|v| v.as_str());
        let signature = NodeSignature::parse(header)?;
        if self.trusted.contains(signature.key()) {
            let key = VerifiedKey::parse(signature.key()).map_err(|_| Rejection::Malformed)?;
            return signature.verify_trusted(&key, &NodeMessage { subject, body });
        }
        let key = self
            .registered(node_id, signature.key())
            .await
            .ok_or(Rejection::UnknownNode)?;
        signature.verify(
            &key,
            &NodeMessage { subject, body },
            &self.claims,
            &id.to_string(),
            node_id,
            attempt,
        )
    }

    /// The key `node_id` registered (read again, at most once a second per node, when it is
    /// not `claimed`: a node that restarted under its id with a new key). A node that left
    /// keeps its last key here, so its late reports still count.
    async fn registered(&self, node_id: &str, claimed: &str) -> Option<VerifiedKey> {
        {
            let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(known) = keys.get(node_id) {
                if known.key.public() == claimed || known.fetched.elapsed() < KEY_REFRESH {
                    return Some(known.key.clone());
                }
            }
        }
        {
            let unknown = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
            if unknown
                .get(node_id)
                .is_some_and(|at| at.elapsed() < KEY_REFRESH)
            {
                return None;
            }
        }
        match self.read_registry(node_id).await {
            Some(key) => {
                let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
                keys.insert(
                    node_id.to_owned(),
                    Known {
                        key: key.clone(),
                        fetched: Instant::now(),
                    },
                );
                Some(key)
            }
            None => {
                let mut unknown = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
                if unknown.len() >= UNKNOWN_MEMORY {
                    unknown.clear();
                }
                unknown.insert(node_id.to_owned(), Instant::now());
                // A node that left keeps its last known key.
                let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
                keys.get(node_id).map(|k| k.key.clone())
            }
        }
    }

    async fn read_registry(&self, node_id: &str) -> Option<VerifiedKey> {
        let id = NodeId::parse(node_id).ok()?;
        let store = self
            .registry
            .get_or_try_init(|| self.js.get_key_value(self.bucket.clone()))
            .await
            .map_err(|e| tracing::debug!(error = %e, "node registry bucket not readable"))
            .ok()?;
        let entry = store
            .get(subjects::node_registry_key(&id))
            .await
            .map_err(|e| tracing::warn!(error = %e, "reading a node's registry entry failed"))
            .ok()??;
        let info: NodeInfo = serde_json::from_slice(&entry).ok()?;
        VerifiedKey::parse(info.signing_key.as_deref()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_claims_sign_only_what_was_handed_out_and_are_bounded() {
        let held = HeldClaims::default();
        let key = SigningKey::generate();
        let message = NodeMessage {
            subject: "s",
            body: b"b",
        };
        let id = InvocationId::new();
        let claim = Claim::parse(&"A".repeat(43)).unwrap();
        let unheld = held.sign(&key, &message, id, "n", 1);
        assert!(unheld.contains(";max=0;"), "{unheld}");
        assert_eq!(held.node_of(id), None);
        held.hold(id, claim.clone(), 3);
        let signed = held.sign(&key, &message, id, "n", 1);
        assert_eq!(signed, message.sign(&key, &claim, "n", 1, 3));
        assert_eq!(held.node_of(id).as_deref(), Some("n"));
        for _ in 0..HELD_MEMORY {
            held.hold(InvocationId::new(), claim.clone(), 3);
        }
        assert_eq!(held.node_of(id), None, "forgotten");
        assert!(held.sign(&key, &message, id, "n", 1).contains(";max=0;"));
    }
}
