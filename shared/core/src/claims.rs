//! Signed results and events: what a node proves when it reports on a delivery, and how a
//! gateway checks it.
//!
//! Nodes are not trusted: any holder of node credentials can publish on the event subjects and
//! to the gateways' reply inboxes. So a gateway accepts a node's event, sync reply or
//! dead-letter record only when
//! 1. it carries a [`NODE_SIGNATURE_HEADER`] made with **the key that node registered**
//!    (each node makes its own Ed25519 key at start and publishes the public half in its
//!    registry entry) over the subject and every byte of the body: an HMAC under the
//!    [`ReportKey`] that key agrees with the gateway key that signed the work (`v2`, what a
//!    node sends on what it pulled), or an Ed25519 signature (`v1`);
//! 2. the header's proof shows that the node **holds or held that delivery**: the gateway that
//!    published the invocation put a [`Claim`] on the work message ([`CLAIM_HEADER`]): an
//!    HMAC-SHA256, under a key only gateways have ([`ClaimKey`], derived from the gateway's
//!    signing seed), of the invocation id and its signed attempt limit. A node gets a claim
//!    only by pulling the message (nodes may not read the work stream any other way), and its
//!    proof is the HMAC under the claim of its own node id and the attempt. So no node can
//!    report on an invocation it was never handed, under another node's name, or with an
//!    attempt number above the limit the gateway signed (`max` is bound into the claim, so a
//!    node cannot raise it): the attempt fence cannot be pushed forward.
//!
//! The proof is checked without a store lookup: the recorder recomputes the claim from the
//! invocation id. Gateways that record each other's events must therefore share one signing
//! key (as `fnmesh nats init`, docker-compose and the Nomad jobs set them up).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use crate::signing::{framed_digest, Rejection, SigningError, SigningKey};

/// The NATS header with which a gateway hands a node the [`Claim`] of a work message.
pub const CLAIM_HEADER: &str = "Fnmesh-Claim";
/// The NATS header of a node's signature on an event, reply or dead-letter record.
pub const NODE_SIGNATURE_HEADER: &str = "Fnmesh-Node-Signature";
/// The NATS header of a gateway's receipt for a sync reply it stored ([`ReportKey::receipt`]).
pub const RECEIPT_HEADER: &str = "Fnmesh-Receipt";
/// The NATS header with which a gateway says, on sync work, that it sends receipts
/// ([`RECEIPTS_VERSION`]): a node asks for one only then (a gateway without receipts would
/// leave the node waiting for nothing).
pub const RECEIPTS_OFFERED_HEADER: &str = "Fnmesh-Receipts";
/// The value of [`RECEIPTS_OFFERED_HEADER`].
pub const RECEIPTS_VERSION: &str = "v1";

/// Version tag of the node header's format and of the signed digest (Ed25519 signature).
const VERSION: &str = "v1";
/// Version tag of the header authenticated with a [`ReportKey`] (HMAC).
const VERSION_MAC: &str = "v2";

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    #[allow(clippy::expect_used)] // HMAC takes keys of any length
    let mut mac = HmacSha256::new_from_slice(key).expect("an HMAC key of any length");
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The gateways' key for claims. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct ClaimKey([u8; 32]);

impl fmt::Debug for ClaimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClaimKey(…)")
    }
}

impl ClaimKey {
    /// The claim key of a gateway signing key (a one-way derivation from its seed).
    pub fn of(signer: &SigningKey) -> Self {
        Self(mac(signer.seed().as_bytes(), &[b"fnmesh.claim-key.v1"]))
    }

    /// The claim of invocation `id` signed with attempt limit `max_attempts`.
    pub fn claim(&self, id: &str, max_attempts: u32) -> Claim {
        Claim(mac(
            &self.0,
            &[
                b"fnmesh.claim.v1",
                id.as_bytes(),
                max_attempts.to_string().as_bytes(),
            ],
        ))
    }
}

/// What a node receives with a work message and keeps while it reports on it.
#[derive(Clone, PartialEq, Eq)]
pub struct Claim([u8; 32]);

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Claim(…)")
    }
}

impl Claim {
    /// No claim: what a bus signs with when it reports on a delivery it did not hand out. Only
    /// a signer the checker trusts like itself gets such a report accepted.
    pub fn none() -> Self {
        Self([0; 32])
    }

    /// The header value.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// A header value, if it is one.
    pub fn parse(value: &str) -> Option<Self> {
        let raw = URL_SAFE_NO_PAD.decode(value.trim()).ok()?;
        Some(Self(raw.try_into().ok()?))
    }

    /// The proof that node `node_id` holds (or held) attempt `attempt`.
    pub fn proof(&self, node_id: &str, attempt: u32) -> [u8; 32] {
        mac(
            &self.0,
            &[
                b"fnmesh.proof.v1",
                node_id.as_bytes(),
                attempt.to_string().as_bytes(),
            ],
        )
    }
}

/// The key a node authenticates its reports with, known only to that node and to holders of
/// the gateways' signing key: an HMAC-SHA256 key derived from the X25519 agreement of the
/// node's key with the gateway key whose work it runs ([`SigningKey::agree`]). A MAC under it
/// costs about a microsecond where an Ed25519 signature costs ~20 µs to make and ~40 µs to
/// check, and a sync invocation carries three reports. `Debug` shows the public keys only.
#[derive(Clone)]
pub struct ReportKey {
    gateway: String,
    key: [u8; 32],
}

impl fmt::Debug for ReportKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReportKey")
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

impl ReportKey {
    fn derive(shared: [u8; 32], node: &str, gateway: &str) -> Self {
        Self {
            key: mac(
                &shared,
                &[b"fnmesh.report-key.v1", node.as_bytes(), gateway.as_bytes()],
            ),
            gateway: gateway.to_owned(),
        }
    }

    /// A node's side: its own key with the gateway key (`N…`) that signed the work.
    pub fn for_node(node: &SigningKey, gateway: &str) -> Result<Self, SigningError> {
        let peer = crate::signing::verifying_key(gateway)?;
        let shared = node
            .agree(&peer)
            .ok_or_else(|| SigningError::InvalidKey("a key of small order".to_owned()))?;
        Ok(Self::derive(shared, node.public_key(), gateway))
    }

    /// A gateway's side: its own key with a node's key.
    pub fn for_gateway(gateway: &SigningKey, node: &VerifiedKey) -> Result<Self, SigningError> {
        let shared = gateway
            .agree(&node.key)
            .ok_or_else(|| SigningError::InvalidKey("a key of small order".to_owned()))?;
        Ok(Self::derive(shared, node.public(), gateway.public_key()))
    }

    /// The gateway key it was agreed with.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// The receipt a gateway sends to `inbox` (the node's) once it has stored the outcome of
    /// attempt `attempt` of invocation `id` that node `node_id` replied with: an HMAC under this
    /// key, which only that node and holders of the gateways' signing key have, so nobody else
    /// can tell a node its result is stored (it would then not publish it as an event).
    pub fn receipt(&self, inbox: &str, id: &str, node_id: &str, attempt: u32) -> [u8; 32] {
        mac(
            &self.key,
            &[
                b"fnmesh.receipt.v1",
                inbox.as_bytes(),
                id.as_bytes(),
                node_id.as_bytes(),
                attempt.to_string().as_bytes(),
            ],
        )
    }
}

/// The [`RECEIPT_HEADER`] value of a receipt.
pub fn encode_receipt(receipt: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(receipt)
}

/// Whether `header` (a [`RECEIPT_HEADER`] value) is the receipt `expected`.
pub fn receipt_matches(header: Option<&str>, expected: &[u8; 32]) -> bool {
    header
        .and_then(|h| URL_SAFE_NO_PAD.decode(h.trim()).ok())
        .is_some_and(|got| bool::from(got.as_slice().ct_eq(expected.as_slice())))
}

/// What a node signature covers besides the header's own fields.
#[derive(Debug, Clone, Copy)]
pub struct NodeMessage<'a> {
    /// The subject it is published to.
    pub subject: &'a str,
    /// The body, byte for byte.
    pub body: &'a [u8],
}

impl NodeMessage<'_> {
    fn digest(&self, max_attempts: u32, proof: &[u8; 32]) -> [u8; 32] {
        let max = max_attempts.to_string();
        framed_digest(&[
            b"fnmesh.node-message.v1",
            self.subject.as_bytes(),
            max.as_bytes(),
            proof,
            self.body,
        ])
    }

    fn mac(&self, key: &ReportKey, max_attempts: u32, proof: &[u8; 32]) -> [u8; 32] {
        let max = max_attempts.to_string();
        mac(
            &key.key,
            &[
                b"fnmesh.node-message.v2",
                self.subject.as_bytes(),
                max.as_bytes(),
                proof,
                self.body,
            ],
        )
    }

    /// The `v1` header value a node signs this message with (`key`: its own key) for attempt
    /// `attempt` of the delivery whose claim is `claim`, signed with limit `max_attempts`:
    /// `v1;key=<public key>;max=<attempts>;proof=<base64url>;sig=<base64url>`. Checked by any
    /// gateway that trusts or knows `key`; a node uses it only for what it did not pull
    /// (no gateway key to agree a [`ReportKey`] with).
    pub fn sign(
        &self,
        key: &SigningKey,
        claim: &Claim,
        node_id: &str,
        attempt: u32,
        max_attempts: u32,
    ) -> String {
        let proof = claim.proof(node_id, attempt);
        let signature = key.sign_digest(&self.digest(max_attempts, &proof));
        format!(
            "{VERSION};key={};max={max_attempts};proof={};sig={}",
            key.public_key(),
            URL_SAFE_NO_PAD.encode(proof),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    /// The `v2` header value: the same fields, authenticated with an HMAC under `report` (the
    /// key of node `key` with the gateway key that signed the work):
    /// `v2;key=<node key>;gw=<gateway key>;max=<attempts>;proof=<base64url>;mac=<base64url>`.
    pub fn authenticate(
        &self,
        key: &str,
        report: &ReportKey,
        claim: &Claim,
        node_id: &str,
        attempt: u32,
        max_attempts: u32,
    ) -> String {
        let proof = claim.proof(node_id, attempt);
        let tag = self.mac(report, max_attempts, &proof);
        format!(
            "{VERSION_MAC};key={key};gw={};max={max_attempts};proof={};mac={}",
            report.gateway,
            URL_SAFE_NO_PAD.encode(proof),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }
}

/// How a node header is authenticated.
#[derive(Debug, Clone)]
enum Tag {
    /// `v1`: an Ed25519 signature by the node's key.
    Signature([u8; 64]),
    /// `v2`: an HMAC under the [`ReportKey`] of the node's key and gateway key `gateway`.
    Mac { gateway: String, mac: [u8; 32] },
}

/// What a checker knows of the signer a node header names.
#[derive(Debug, Clone, Copy)]
pub struct Signer<'a> {
    /// Its public key: the one the node registered, or one the checker trusts like itself.
    pub key: &'a VerifiedKey,
    /// The report key of that key with the checker's gateway key (`None`: of small order).
    pub report: Option<&'a ReportKey>,
}

/// A node signature header, parsed (not yet verified).
#[derive(Debug, Clone)]
pub struct NodeSignature {
    key: String,
    max_attempts: u32,
    proof: [u8; 32],
    tag: Tag,
}

impl NodeSignature {
    /// Parses a header value.
    pub fn parse(header: Option<&str>) -> Result<Self, Rejection> {
        let value = header.ok_or(Rejection::Unsigned)?;
        Self::parse_value(value).ok_or(Rejection::Malformed)
    }

    fn parse_value(value: &str) -> Option<Self> {
        let mut parts = value.split(';');
        let version = parts.next()?;
        if version != VERSION && version != VERSION_MAC {
            return None;
        }
        let mut field = |name: &str| {
            parts
                .next()
                .and_then(|p| p.strip_prefix(name))
                .and_then(|p| p.strip_prefix('='))
        };
        let key = field("key")?.to_owned();
        let gateway = match version {
            VERSION_MAC => Some(field("gw")?.to_owned()),
            _ => None,
        };
        let max_attempts = field("max")?.parse().ok()?;
        let proof = URL_SAFE_NO_PAD
            .decode(field("proof")?)
            .ok()?
            .try_into()
            .ok()?;
        let tag = match gateway {
            Some(gateway) => Tag::Mac {
                gateway,
                mac: URL_SAFE_NO_PAD
                    .decode(field("mac")?)
                    .ok()?
                    .try_into()
                    .ok()?,
            },
            None => Tag::Signature(
                URL_SAFE_NO_PAD
                    .decode(field("sig")?)
                    .ok()?
                    .try_into()
                    .ok()?,
            ),
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            key,
            max_attempts,
            proof,
            tag,
        })
    }

    /// Checks that `signer` authenticated `message` (its signature or MAC), nothing else.
    fn authenticated(
        &self,
        signer: Signer<'_>,
        message: &NodeMessage<'_>,
    ) -> Result<(), Rejection> {
        if signer.key.public != self.key {
            return Err(Rejection::UnknownNode);
        }
        match &self.tag {
            Tag::Signature(signature) => signer
                .key
                .key
                .verify_strict(
                    &message.digest(self.max_attempts, &self.proof),
                    &Signature::from_bytes(signature),
                )
                .map_err(|_| Rejection::BadSignature),
            Tag::Mac { gateway, mac } => {
                let report = signer.report.ok_or(Rejection::BadSignature)?;
                if report.gateway != *gateway {
                    // Agreed with a gateway key this checker does not hold.
                    return Err(Rejection::UntrustedSigner);
                }
                let expected = message.mac(report, self.max_attempts, &self.proof);
                if bool::from(expected.ct_eq(mac)) {
                    Ok(())
                } else {
                    Err(Rejection::BadSignature)
                }
            }
        }
    }

    /// Checks only the signature or MAC, with a key the checker trusts like itself (a
    /// gateway's key: `fnmesh up`'s own node reports under it). Its holder may publish work,
    /// so no proof of holding is asked of it.
    pub fn verify_trusted(
        &self,
        signer: Signer<'_>,
        message: &NodeMessage<'_>,
    ) -> Result<(), Rejection> {
        self.authenticated(signer, message)
    }

    /// The public key the node signed with (to be looked up in the registry).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether it is a MAC under a [`ReportKey`] (`v2`), not a signature: the node then holds
    /// that report key and can check a receipt made with it.
    pub fn is_mac(&self) -> bool {
        matches!(self.tag, Tag::Mac { .. })
    }

    /// Checks the signature or MAC against `message` with `registered`, the key the registry
    /// holds for `node_id`, and the proof that `node_id` holds attempt `attempt` of invocation
    /// `id` (whose claim `claims` recomputes), within the signed limit.
    pub fn verify(
        &self,
        registered: Signer<'_>,
        message: &NodeMessage<'_>,
        claims: &ClaimKey,
        id: &str,
        node_id: &str,
        attempt: u32,
    ) -> Result<(), Rejection> {
        self.authenticated(registered, message)?;
        let expected = claims.claim(id, self.max_attempts).proof(node_id, attempt);
        if !bool::from(expected.ct_eq(&self.proof)) {
            return Err(Rejection::NotHolder);
        }
        if attempt == 0 || attempt > self.max_attempts {
            return Err(Rejection::AttemptLimit);
        }
        Ok(())
    }
}

/// A node's public key, parsed once.
#[derive(Debug, Clone)]
pub struct VerifiedKey {
    public: String,
    key: VerifyingKey,
}

impl VerifiedKey {
    /// Parses a node's public key (`N…`) as its registry entry holds it.
    pub fn parse(public: &str) -> Result<Self, SigningError> {
        Ok(Self {
            key: crate::signing::verifying_key(public)?,
            public: public.to_owned(),
        })
    }

    /// The key in nkey form.
    pub fn public(&self) -> &str {
        &self.public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Setup {
        gateway_key: SigningKey,
        gateway: ClaimKey,
        node: SigningKey,
        registered: VerifiedKey,
        /// The gateway's side of the node's report key.
        report: ReportKey,
        /// The node's side.
        node_report: ReportKey,
    }

    fn setup() -> Setup {
        let node = SigningKey::generate();
        let gateway_key = SigningKey::generate();
        let registered = VerifiedKey::parse(node.public_key()).unwrap();
        Setup {
            gateway: ClaimKey::of(&gateway_key),
            report: ReportKey::for_gateway(&gateway_key, &registered).unwrap(),
            node_report: ReportKey::for_node(&node, gateway_key.public_key()).unwrap(),
            registered,
            gateway_key,
            node,
        }
    }

    impl Setup {
        fn signer(&self) -> Signer<'_> {
            Signer {
                key: &self.registered,
                report: Some(&self.report),
            }
        }
    }

    const MSG: NodeMessage<'static> = NodeMessage {
        subject: "fnmesh.v1.t.evt.abc",
        body: b"{\"event\":1}",
    };

    /// The node's header in both forms (`v1` signed, `v2` with a MAC).
    fn signed(
        s: &Setup,
        claim: &Claim,
        node_id: &str,
        attempt: u32,
        max: u32,
    ) -> [NodeSignature; 2] {
        let v1 = MSG.sign(&s.node, claim, node_id, attempt, max);
        let v2 = MSG.authenticate(
            s.node.public_key(),
            &s.node_report,
            claim,
            node_id,
            attempt,
            max,
        );
        assert!(v2.starts_with("v2;") && v2.contains(";gw=N"), "{v2}");
        [v1, v2].map(|h| NodeSignature::parse(Some(&h)).unwrap())
    }

    #[test]
    fn both_sides_agree_on_the_report_key_and_nobody_else_does() {
        let s = setup();
        assert_eq!(s.report.key, s.node_report.key);
        assert_eq!(s.report.gateway(), s.gateway_key.public_key());
        let other = SigningKey::generate();
        assert_ne!(
            ReportKey::for_node(&other, s.gateway_key.public_key())
                .unwrap()
                .key,
            s.report.key,
            "another node"
        );
        assert_ne!(
            ReportKey::for_gateway(&other, &s.registered).unwrap().key,
            s.report.key,
            "another gateway key"
        );
        assert!(ReportKey::for_node(&s.node, "not a key").is_err());
        assert!(!format!("{:?}", s.report).contains(&URL_SAFE_NO_PAD.encode(s.report.key)));
    }

    #[test]
    fn a_receipt_checks_only_for_its_inbox_invocation_node_and_attempt() {
        let s = setup();
        let inbox = "_FNMESH.node.n1.abc.7";
        let made = s.report.receipt(inbox, "inv-1", "node-a", 2);
        let expected = s.node_report.receipt(inbox, "inv-1", "node-a", 2);
        assert!(receipt_matches(Some(&encode_receipt(&made)), &expected));
        for other in [
            s.report
                .receipt("_FNMESH.node.n1.abc.8", "inv-1", "node-a", 2),
            s.report.receipt(inbox, "inv-2", "node-a", 2),
            s.report.receipt(inbox, "inv-1", "node-b", 2),
            s.report.receipt(inbox, "inv-1", "node-a", 3),
            ReportKey::for_gateway(&SigningKey::generate(), &s.registered)
                .unwrap()
                .receipt(inbox, "inv-1", "node-a", 2),
        ] {
            assert!(!receipt_matches(Some(&encode_receipt(&other)), &expected));
        }
        assert!(!receipt_matches(None, &expected));
        assert!(!receipt_matches(Some("not base64!"), &expected));
        assert!(!receipt_matches(
            Some(&encode_receipt(&made)[..20]),
            &expected
        ));
    }

    #[test]
    fn a_holder_signs_what_the_gateway_checks() {
        let s = setup();
        let claim = s.gateway.claim("inv-1", 3);
        for header in signed(&s, &claim, "node-a", 2, 3) {
            assert_eq!(header.key(), s.node.public_key());
            header
                .verify(s.signer(), &MSG, &s.gateway, "inv-1", "node-a", 2)
                .unwrap();
        }
    }

    #[test]
    fn forgeries_are_refused_for_their_reason() {
        let s = setup();
        let claim = s.gateway.claim("inv-1", 3);
        let other_node = SigningKey::generate();
        let other = VerifiedKey::parse(other_node.public_key()).unwrap();
        let other_report = ReportKey::for_gateway(&s.gateway_key, &other).unwrap();
        for header in signed(&s, &claim, "node-a", 2, 3) {
            let check = |signer: Signer<'_>, msg: &NodeMessage<'_>, id, node, attempt| {
                header.verify(signer, msg, &s.gateway, id, node, attempt)
            };
            let another = Signer {
                key: &other,
                report: Some(&other_report),
            };
            assert_eq!(
                check(another, &MSG, "inv-1", "node-a", 2),
                Err(Rejection::UnknownNode),
                "another node's registered key"
            );
            let altered = NodeMessage {
                body: b"{\"event\":2}",
                ..MSG
            };
            assert_eq!(
                check(s.signer(), &altered, "inv-1", "node-a", 2),
                Err(Rejection::BadSignature)
            );
            let moved = NodeMessage {
                subject: "fnmesh.v1.t.evt.abd",
                ..MSG
            };
            assert_eq!(
                check(s.signer(), &moved, "inv-1", "node-a", 2),
                Err(Rejection::BadSignature)
            );
            assert_eq!(
                check(s.signer(), &MSG, "inv-2", "node-a", 2),
                Err(Rejection::NotHolder),
                "a claim of another invocation"
            );
            assert_eq!(
                check(s.signer(), &MSG, "inv-1", "node-b", 2),
                Err(Rejection::NotHolder),
                "another node's name"
            );
            assert_eq!(
                check(s.signer(), &MSG, "inv-1", "node-a", 3),
                Err(Rejection::NotHolder),
                "another attempt"
            );
        }
        // A node that guesses claims without the gateway's key proves nothing.
        let guessed = ClaimKey::of(&SigningKey::generate()).claim("inv-1", 3);
        for forged in signed(&s, &guessed, "node-a", 2, 3) {
            assert_eq!(
                forged.verify(s.signer(), &MSG, &s.gateway, "inv-1", "node-a", 2),
                Err(Rejection::NotHolder)
            );
        }
        // A MAC under a key agreed by another node, presented under this node's key: the
        // other node knows the claim it holds but not this node's report key.
        let stolen = ReportKey::for_node(&other_node, s.gateway_key.public_key()).unwrap();
        let header = MSG.authenticate(s.node.public_key(), &stolen, &claim, "node-a", 2, 3);
        assert_eq!(
            NodeSignature::parse(Some(&header)).unwrap().verify(
                s.signer(),
                &MSG,
                &s.gateway,
                "inv-1",
                "node-a",
                2
            ),
            Err(Rejection::BadSignature)
        );
        // A MAC agreed with a gateway key this checker does not hold.
        let elsewhere = ReportKey::for_node(&s.node, SigningKey::generate().public_key()).unwrap();
        let header = MSG.authenticate(s.node.public_key(), &elsewhere, &claim, "node-a", 2, 3);
        assert_eq!(
            NodeSignature::parse(Some(&header)).unwrap().verify(
                s.signer(),
                &MSG,
                &s.gateway,
                "inv-1",
                "node-a",
                2
            ),
            Err(Rejection::UntrustedSigner)
        );
    }

    #[test]
    fn the_attempt_limit_is_bound_to_the_claim() {
        let s = setup();
        let claim = s.gateway.claim("inv-1", 3);
        // Within the claim's own limit, attempt 4 is above it.
        for over in signed(&s, &claim, "node-a", 4, 3) {
            assert_eq!(
                over.verify(s.signer(), &MSG, &s.gateway, "inv-1", "node-a", 4),
                Err(Rejection::AttemptLimit)
            );
        }
        // Raising the limit breaks the proof: the claim was made for 3.
        for raised in signed(&s, &claim, "node-a", 1_000_000, 1_000_000) {
            assert_eq!(
                raised.verify(s.signer(), &MSG, &s.gateway, "inv-1", "node-a", 1_000_000),
                Err(Rejection::NotHolder)
            );
        }
    }

    #[test]
    fn a_trusted_signer_needs_no_proof() {
        let s = setup();
        for header in signed(&s, &Claim::none(), "node-a", 1, 0) {
            header.verify_trusted(s.signer(), &MSG).unwrap();
            let altered = NodeMessage { body: b"{}", ..MSG };
            assert_eq!(
                header.verify_trusted(s.signer(), &altered),
                Err(Rejection::BadSignature)
            );
        }
    }

    #[test]
    fn headers_that_do_not_parse_are_malformed() {
        assert_eq!(NodeSignature::parse(None).unwrap_err(), Rejection::Unsigned);
        for bad in [
            "",
            "v3;key=N;max=1;proof=AA;sig=AA",
            "v1;key=N;max=x;proof=;sig=",
            "v2;key=N;max=1;proof=AA;mac=AA",
            &format!("v2;key=N;gw=N;max=1;proof={0};sig={0}", "A".repeat(43)),
            &format!("v1;key=N;max=1;proof={0};mac={0}", "A".repeat(43)),
        ] {
            assert_eq!(
                NodeSignature::parse(Some(bad)).unwrap_err(),
                Rejection::Malformed,
                "{bad}"
            );
        }
        let good = format!("v2;key=N;gw=N;max=1;proof={0};mac={0}", "A".repeat(43));
        assert!(NodeSignature::parse(Some(&good)).is_ok());
        let claim = Claim([7; 32]);
        assert_eq!(Claim::parse(&claim.encode()), Some(claim));
        assert_eq!(Claim::parse("short"), None);
    }
}
