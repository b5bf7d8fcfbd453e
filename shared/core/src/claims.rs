//! Signed results and events: what a node proves when it reports on a delivery, and how a
//! gateway checks it.
//!
//! Nodes are not trusted: any holder of node credentials can publish on the event subjects and
//! to the gateways' reply inboxes. So a gateway accepts a node's event, sync reply or
//! dead-letter record only when
//! 1. it carries a [`NODE_SIGNATURE_HEADER`] signed with **the key that node registered**
//!    (each node makes its own Ed25519 key at start and publishes the public half in its
//!    registry entry) over the subject and every byte of the body;
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

/// Version tag of the node header's format and of the signed digest.
const VERSION: &str = "v1";

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

    /// The header value a node signs this message with (`key`: its own key) for attempt
    /// `attempt` of the delivery whose claim is `claim`, signed with limit `max_attempts`:
    /// `v1;key=<public key>;max=<attempts>;proof=<base64url>;sig=<base64url>`.
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
}

/// A node signature header, parsed (not yet verified).
#[derive(Debug, Clone)]
pub struct NodeSignature {
    key: String,
    max_attempts: u32,
    proof: [u8; 32],
    signature: [u8; 64],
}

impl NodeSignature {
    /// Parses a header value.
    pub fn parse(header: Option<&str>) -> Result<Self, Rejection> {
        let value = header.ok_or(Rejection::Unsigned)?;
        Self::parse_value(value).ok_or(Rejection::Malformed)
    }

    fn parse_value(value: &str) -> Option<Self> {
        let mut parts = value.split(';');
        if parts.next()? != VERSION {
            return None;
        }
        let mut field = |name: &str| {
            parts
                .next()
                .and_then(|p| p.strip_prefix(name))
                .and_then(|p| p.strip_prefix('='))
        };
        let key = field("key")?.to_owned();
        let max_attempts = field("max")?.parse().ok()?;
        let proof = URL_SAFE_NO_PAD
            .decode(field("proof")?)
            .ok()?
            .try_into()
            .ok()?;
        let signature = URL_SAFE_NO_PAD
            .decode(field("sig")?)
            .ok()?
            .try_into()
            .ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            key,
            max_attempts,
            proof,
            signature,
        })
    }

    /// Checks only the signature, with a key the checker trusts like itself (a gateway's key:
    /// `fnmesh up`'s own node reports under it). Its holder may publish work, so no proof of
    /// holding is asked of it.
    pub fn verify_trusted(
        &self,
        key: &VerifiedKey,
        message: &NodeMessage<'_>,
    ) -> Result<(), Rejection> {
        if key.public != self.key {
            return Err(Rejection::UnknownNode);
        }
        let signature = Signature::from_bytes(&self.signature);
        key.key
            .verify_strict(&message.digest(self.max_attempts, &self.proof), &signature)
            .map_err(|_| Rejection::BadSignature)
    }

    /// The public key the node signed with (to be looked up in the registry).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Checks the signature against `message` with `registered`, the public key the registry
    /// holds for `node_id`, and the proof that `node_id` holds attempt `attempt` of invocation
    /// `id` (whose claim `claims` recomputes), within the signed limit.
    pub fn verify(
        &self,
        registered: &VerifiedKey,
        message: &NodeMessage<'_>,
        claims: &ClaimKey,
        id: &str,
        node_id: &str,
        attempt: u32,
    ) -> Result<(), Rejection> {
        if registered.public != self.key {
            return Err(Rejection::UnknownNode);
        }
        let signature = Signature::from_bytes(&self.signature);
        registered
            .key
            .verify_strict(&message.digest(self.max_attempts, &self.proof), &signature)
            .map_err(|_| Rejection::BadSignature)?;
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
        gateway: ClaimKey,
        node: SigningKey,
        registered: VerifiedKey,
    }

    fn setup() -> Setup {
        let node = SigningKey::generate();
        Setup {
            gateway: ClaimKey::of(&SigningKey::generate()),
            registered: VerifiedKey::parse(node.public_key()).unwrap(),
            node,
        }
    }

    const MSG: NodeMessage<'static> = NodeMessage {
        subject: "fnmesh.v1.t.evt.abc",
        body: b"{\"event\":1}",
    };

    fn signed(s: &Setup, claim: &Claim, node_id: &str, attempt: u32, max: u32) -> NodeSignature {
        let header = MSG.sign(&s.node, claim, node_id, attempt, max);
        NodeSignature::parse(Some(&header)).unwrap()
    }

    #[test]
    fn a_holder_signs_what_the_gateway_checks() {
        let s = setup();
        let claim = s.gateway.claim("inv-1", 3);
        let header = signed(&s, &claim, "node-a", 2, 3);
        assert_eq!(header.key(), s.node.public_key());
        header
            .verify(&s.registered, &MSG, &s.gateway, "inv-1", "node-a", 2)
            .unwrap();
    }

    #[test]
    fn forgeries_are_refused_for_their_reason() {
        let s = setup();
        let claim = s.gateway.claim("inv-1", 3);
        let header = signed(&s, &claim, "node-a", 2, 3);
        let check = |registered: &VerifiedKey, msg: &NodeMessage<'_>, id, node, attempt| {
            header.verify(registered, msg, &s.gateway, id, node, attempt)
        };
        let other = VerifiedKey::parse(SigningKey::generate().public_key()).unwrap();
        assert_eq!(
            check(&other, &MSG, "inv-1", "node-a", 2),
            Err(Rejection::UnknownNode),
            "another node's registered key"
        );
        let altered = NodeMessage {
            body: b"{\"event\":2}",
            ..MSG
        };
        assert_eq!(
            check(&s.registered, &altered, "inv-1", "node-a", 2),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            check(&s.registered, &MSG, "inv-2", "node-a", 2),
            Err(Rejection::NotHolder),
            "a claim of another invocation"
        );
        assert_eq!(
            check(&s.registered, &MSG, "inv-1", "node-b", 2),
            Err(Rejection::NotHolder),
            "another node's name"
        );
        assert_eq!(
            check(&s.registered, &MSG, "inv-1", "node-a", 3),
            Err(Rejection::NotHolder),
            "another attempt"
        );
        // A node that guesses claims without the gateway's key proves nothing.
        let guessed = ClaimKey::of(&SigningKey::generate()).claim("inv-1", 3);
        let forged = signed(&s, &guessed, "node-a", 2, 3);
        assert_eq!(
            forged.verify(&s.registered, &MSG, &s.gateway, "inv-1", "node-a", 2),
            Err(Rejection::NotHolder)
        );
    }

    #[test]
    fn the_attempt_limit_is_bound_to_the_claim() {
        let s = setup();
        let claim = s.gateway.claim("inv-1", 3);
        // Within the claim's own limit, attempt 4 is above it.
        let over = signed(&s, &claim, "node-a", 4, 3);
        assert_eq!(
            over.verify(&s.registered, &MSG, &s.gateway, "inv-1", "node-a", 4),
            Err(Rejection::AttemptLimit)
        );
        // Raising the limit breaks the proof: the claim was made for 3.
        let raised = signed(&s, &claim, "node-a", 1_000_000, 1_000_000);
        assert_eq!(
            raised.verify(
                &s.registered,
                &MSG,
                &s.gateway,
                "inv-1",
                "node-a",
                1_000_000
            ),
            Err(Rejection::NotHolder)
        );
    }

    #[test]
    fn headers_that_do_not_parse_are_malformed() {
        assert_eq!(NodeSignature::parse(None).unwrap_err(), Rejection::Unsigned);
        for bad in [
            "",
            "v2;key=N;max=1;proof=AA;sig=AA",
            "v1;key=N;max=x;proof=;sig=",
        ] {
            assert_eq!(
                NodeSignature::parse(Some(bad)).unwrap_err(),
                Rejection::Malformed,
                "{bad}"
            );
        }
        let claim = Claim([7; 32]);
        assert_eq!(Claim::parse(&claim.encode()), Some(claim));
        assert_eq!(Claim::parse("short"), None);
    }
}
