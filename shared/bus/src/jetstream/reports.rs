//! Signed node reports ([`fnmesh_core::claims`]): what a node's bus adds to the events, sync
//! replies and dead-letter records it publishes, and how a gateway's bus checks them.
//!
//! - A node's bus keeps the [`Claim`] of every delivery it handed out ([`HeldClaims`], bounded)
//!   and authenticates each report with the proof derived from that claim and an HMAC under
//!   the [`ReportKey`] its own key (the bus's signer; a node makes a fresh one at start and
//!   registers its public half) agrees with the gateway key that signed the work (computed
//!   once per gateway key). What it did not hand out it signs with its key (Ed25519).
//! - A gateway's bus ([`NodeCheck`]) accepts a report only when its signer is the key the node
//!   it names registered (looked up in the registry bucket, cached with its report key; or a
//!   key it trusts itself, as `fnmesh up`'s own node signs with the gateway's key), the MAC or
//!   signature covers subject and body, and the proof is valid for that invocation, node and
//!   attempt within the signed limit. Anything else is terminated (events) or dropped (replies), logged and counted
//!   (`fnmesh_rejected_messages_total{component="gateway"}`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use fnmesh_core::claims::{
    Claim, ClaimKey, NodeMessage, NodeSignature, ReportKey, Signer, VerifiedKey,
    NODE_SIGNATURE_HEADER,
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
/// Report keys a node's bus keeps, by gateway key (a region has one; more only while keys
/// rotate).
const GATEWAY_KEYS_MEMORY: usize = 64;

/// What a node holds of one delivery.
#[derive(Debug, Clone)]
struct Held {
    claim: Claim,
    max_attempts: u32,
    /// The report key agreed with the gateway key that signed the delivery.
    report: Option<Arc<ReportKey>>,
    /// The node that reported on it first (from its first event), for dead-letter records.
    node_id: Option<String>,
    /// Whether the gateway that published it receipts the sync replies it stores.
    receipts: bool,
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
    /// Report keys by gateway key.
    reports: HashMap<String, Option<Arc<ReportKey>>>,
}

impl HeldState {
    fn report_key(&mut self, node: &SigningKey, gateway: &str) -> Option<Arc<ReportKey>> {
        if let Some(report) = self.reports.get(gateway) {
            return report.clone();
        }
        if self.reports.len() >= GATEWAY_KEYS_MEMORY {
            self.reports.clear();
        }
        let report = ReportKey::for_node(node, gateway)
            .map_err(|e| tracing::warn!(error = %e, gateway, "no report key with this gateway key"))
            .ok()
            .map(Arc::new);
        self.reports.insert(gateway.to_owned(), report.clone());
        report
    }
}

impl HeldClaims {
    /// Remembers the claim of a delivery of `id` whose work `gateway` signed (`node`: this
    /// node's key).
    pub(crate) fn hold(
        &self,
        id: InvocationId,
        claim: Claim,
        max_attempts: u32,
        node: &SigningKey,
        gateway: &str,
    ) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let report = state.report_key(node, gateway);
        if let Some(held) = state.held.get_mut(&id) {
            held.claim = claim;
            held.max_attempts = max_attempts;
            held.report = report;
            held.receipts = false;
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
                report,
                node_id: None,
                receipts: false,
            },
        );
        state.order.push_back(id);
    }

    /// The header of a report on `id` by `node_id` for `attempt`: with the proof of the
    /// delivery's claim and a MAC under its report key when this bus handed it out, else
    /// signed with no claim (accepted only from a signer the gateway trusts like itself). The
    /// MAC or signature is made outside the lock.
    pub(crate) fn sign(
        &self,
        key: &SigningKey,
        message: &NodeMessage<'_>,
        id: InvocationId,
        node_id: &str,
        attempt: u32,
    ) -> String {
        let held = {
            let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            state.held.get_mut(&id).map(|held| {
                if held.node_id.is_none() {
                    held.node_id = Some(node_id.to_owned());
                }
                (held.claim.clone(), held.max_attempts, held.report.clone())
            })
        };
        match held {
            Some((claim, max, Some(report))) => {
                message.authenticate(key.public_key(), &report, &claim, node_id, attempt, max)
            }
            Some((claim, max, None)) => message.sign(key, &claim, node_id, attempt, max),
            None => message.sign(key, &Claim::none(), node_id, attempt, 0),
        }
    }

    /// Notes that the gateway that published the delivery of `id` (held) sends receipts.
    pub(crate) fn offer_receipts(&self, id: InvocationId) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = state.held.get_mut(&id) {
            held.receipts = true;
        }
    }

    /// The receipt a gateway owes for a reply on `id` by `node_id` for `attempt` that asked
    /// for one on `inbox`: `None` when its gateway sends none, or the reply is not
    /// authenticated with a report key (the gateway could not make the receipt).
    pub(crate) fn receipt(
        &self,
        id: InvocationId,
        inbox: &str,
        node_id: &str,
        attempt: u32,
    ) -> Option<[u8; 32]> {
        let report = {
            let state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            state
                .held
                .get(&id)
                .filter(|held| held.receipts)
                .and_then(|held| held.report.clone())
        }?;
        Some(report.receipt(inbox, &id.to_string(), node_id, attempt))
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

/// A node's key as read from the registry, with its report key.
struct Known {
    key: Arc<KeyPair>,
    fetched: Instant,
}

/// A signer's key and its report key with this gateway's key.
struct KeyPair {
    key: VerifiedKey,
    report: Option<ReportKey>,
}

impl KeyPair {
    fn of(gateway: &SigningKey, key: VerifiedKey) -> Self {
        let report = ReportKey::for_gateway(gateway, &key).ok();
        Self { key, report }
    }

    fn signer(&self) -> Signer<'_> {
        Signer {
            key: &self.key,
            report: self.report.as_ref(),
        }
    }
}

/// Checks the reports of nodes on a gateway's bus.
pub(crate) struct NodeCheck {
    signer: Arc<SigningKey>,
    claims: ClaimKey,
    trusted: Arc<TrustedKeys>,
    /// Trusted keys seen on reports, with their report keys.
    trusted_seen: Mutex<HashMap<String, Arc<KeyPair>>>,
    rejections: Rejections,
    js: jetstream::Context,
    bucket: String,
    registry: tokio::sync::OnceCell<kv::Store>,
    keys: Mutex<HashMap<String, Known>>,
    unknown: Mutex<HashMap<String, Instant>>,
}

impl NodeCheck {
    pub(crate) fn new(
        signer: Arc<SigningKey>,
        trusted: Arc<TrustedKeys>,
        rejections: Rejections,
        js: jetstream::Context,
        prefix: &BusPrefix,
    ) -> Self {
        Self {
            claims: ClaimKey::of(&signer),
            signer,
            trusted,
            trusted_seen: Mutex::default(),
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
        self.check_reply(headers, subject, body, id, node_id, attempt, None)
            .await
            .map(|_| ())
    }

    /// [`NodeCheck::check`] of a sync reply that asked for a receipt on `receipt_inbox`: also
    /// the receipt to send there once its outcome is stored, when the reply is authenticated
    /// with the node's report key (only then can the node check the receipt).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn check_reply(
        &self,
        headers: Option<&async_nats::HeaderMap>,
        subject: &str,
        body: &[u8],
        id: InvocationId,
        node_id: &str,
        attempt: u32,
        receipt_inbox: Option<&str>,
    ) -> Result<Option<[u8; 32]>, Rejection> {
        let result = self
            .verify(headers, subject, body, id, node_id, attempt)
            .await;
        match result {
            Ok(pair) => Ok(match (pair, receipt_inbox) {
                (Some(pair), Some(inbox)) => pair
                    .report
                    .as_ref()
                    .map(|report| report.receipt(inbox, &id.to_string(), node_id, attempt)),
                _ => None,
            }),
            Err(reason) => {
                self.rejections.count(reason);
                Err(reason)
            }
        }
    }

    /// Checks a report; the signer's keys when it is authenticated with a report key.
    async fn verify(
        &self,
        headers: Option<&async_nats::HeaderMap>,
        subject: &str,
        body: &[u8],
        id: InvocationId,
        node_id: &str,
        attempt: u32,
    ) -> Result<Option<Arc<KeyPair>>, Rejection> {
        let header = headers
            .and_then(|h| h.get(NODE_SIGNATURE_HEADER))
            .map(|v| v.as_str());
        let signature = NodeSignature::parse(header)?;
        let mac = signature.is_mac();
        if self.trusted.contains(signature.key()) {
            let key = self.trusted_key(signature.key())?;
            signature.verify_trusted(key.signer(), &NodeMessage { subject, body })?;
            return Ok(mac.then_some(key));
        }
        let key = self
            .registered(node_id, signature.key())
            .await
            .ok_or(Rejection::UnknownNode)?;
        signature.verify(
            key.signer(),
            &NodeMessage { subject, body },
            &self.claims,
            &id.to_string(),
            node_id,
            attempt,
        )?;
        Ok(mac.then_some(key))
    }

    /// A trusted key named by a report, parsed once.
    fn trusted_key(&self, public: &str) -> Result<Arc<KeyPair>, Rejection> {
        let mut seen = self.trusted_seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pair) = seen.get(public) {
            return Ok(pair.clone());
        }
        let key = VerifiedKey::parse(public).map_err(|_| Rejection::Malformed)?;
        let pair = Arc::new(KeyPair::of(&self.signer, key));
        // Only trusted keys get here: the map is as bounded as the trust list.
        seen.insert(public.to_owned(), pair.clone());
        Ok(pair)
    }

    /// The key `node_id` registered (read again, at most once a second per node, when it is
    /// not `claimed`: a node that restarted under its id with a new key). A node that left
    /// keeps its last key here, so its late reports still count.
    async fn registered(&self, node_id: &str, claimed: &str) -> Option<Arc<KeyPair>> {
        {
            let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(known) = keys.get(node_id) {
                if known.key.key.public() == claimed || known.fetched.elapsed() < KEY_REFRESH {
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
                let key = match self.known(node_id, &key) {
                    Some(same) => same,
                    None => Arc::new(KeyPair::of(&self.signer, key)),
                };
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

    /// The pair already known for `node_id` when it is still `key` (no new agreement).
    fn known(&self, node_id: &str, key: &VerifiedKey) -> Option<Arc<KeyPair>> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.get(node_id)
            .filter(|k| k.key.key.public() == key.public())
            .map(|k| k.key.clone())
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
    fn a_receipt_is_asked_for_only_where_its_gateway_offers_receipts() {
        let held = HeldClaims::default();
        let key = SigningKey::generate();
        let gateway = SigningKey::generate();
        let id = InvocationId::new();
        let claim = Claim::parse(&"A".repeat(43)).unwrap();
        assert_eq!(held.receipt(id, "_INBOX.a.1", "n", 1), None, "not held");
        held.hold(id, claim.clone(), 3, &key, gateway.public_key());
        assert_eq!(held.receipt(id, "_INBOX.a.1", "n", 1), None, "not offered");
        held.offer_receipts(id);
        let receipt = held.receipt(id, "_INBOX.a.1", "n", 1).expect("offered");
        // The gateway's side makes the same one.
        let registered = VerifiedKey::parse(key.public_key()).unwrap();
        let pair = KeyPair::of(&gateway, registered);
        assert_eq!(
            pair.report
                .unwrap()
                .receipt("_INBOX.a.1", &id.to_string(), "n", 1),
            receipt
        );
        // A new delivery of it (from a gateway that may not offer them) starts without.
        held.hold(id, claim, 3, &key, gateway.public_key());
        assert_eq!(held.receipt(id, "_INBOX.a.1", "n", 1), None);
    }

    #[test]
    fn held_claims_authenticate_only_what_was_handed_out_and_are_bounded() {
        let held = HeldClaims::default();
        let key = SigningKey::generate();
        let gateway = SigningKey::generate();
        let message = NodeMessage {
            subject: "s",
            body: b"b",
        };
        let id = InvocationId::new();
        let claim = Claim::parse(&"A".repeat(43)).unwrap();
        let unheld = held.sign(&key, &message, id, "n", 1);
        assert!(
            unheld.starts_with("v1;") && unheld.contains(";max=0;"),
            "{unheld}"
        );
        assert_eq!(held.node_of(id), None);
        held.hold(id, claim.clone(), 3, &key, gateway.public_key());
        let signed = held.sign(&key, &message, id, "n", 1);
        let report = ReportKey::for_node(&key, gateway.public_key()).unwrap();
        assert_eq!(
            signed,
            message.authenticate(key.public_key(), &report, &claim, "n", 1, 3)
        );
        // What the gateway checks it with.
        let registered = VerifiedKey::parse(key.public_key()).unwrap();
        let pair = KeyPair::of(&gateway, registered);
        let parsed = NodeSignature::parse(Some(&signed)).unwrap();
        assert_eq!(
            parsed.verify_trusted(pair.signer(), &message),
            Ok(()),
            "{signed}"
        );
        assert_eq!(held.node_of(id).as_deref(), Some("n"));
        for _ in 0..HELD_MEMORY {
            held.hold(
                InvocationId::new(),
                claim.clone(),
                3,
                &key,
                gateway.public_key(),
            );
        }
        assert_eq!(held.node_of(id), None, "forgotten");
        assert!(held.sign(&key, &message, id, "n", 1).contains(";max=0;"));
        let state = held.inner.lock().unwrap();
        assert_eq!(state.reports.len(), 1, "one agreement per gateway key");
    }
}
