//! Every NATS subject and storage key fnmesh uses, built here and only here, from validated
//! names and ids. Call sites never `format!` a subject.
//!
//! All subjects live under a versioned prefix so the wire format can evolve.

use crate::checksum::Checksum;
use crate::ids::InvocationId;
use crate::names::{FunctionName, Namespace};

/// Version prefix of every subject.
pub const PREFIX: &str = "fnmesh.v1";

/// Work queue subject of one function: `fnmesh.v1.inv.<namespace>.<function>`.
pub fn invocation(namespace: &Namespace, function: &FunctionName) -> String {
    format!("{PREFIX}.inv.{namespace}.{function}")
}

/// Subject carrying node events for recorders: `fnmesh.v1.evt.<invocation id>`.
pub fn node_event(id: &InvocationId) -> String {
    format!("{PREFIX}.evt.{id}")
}

/// A validated bus prefix (`^[a-z0-9][a-z0-9-]{0,31}$`): isolates every JetStream stream,
/// consumer and subject of one bus (a test, and later a region or tenant) from every other.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BusPrefix(String);

/// Why a bus prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid bus prefix {0:?}: must match ^[a-z0-9][a-z0-9-]{{0,31}}$")]
pub struct BusPrefixError(String);

impl BusPrefix {
    /// Validates `value` and wraps it.
    pub fn parse(value: &str) -> Result<Self, BusPrefixError> {
        let bytes = value.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 32
            && bytes[0] != b'-'
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(BusPrefixError(value.chars().take(40).collect()))
        }
    }

    /// The validated prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BusPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Work subject of one function on a prefixed bus:
/// `fnmesh.v1.<prefix>.inv.<namespace>.<function>`.
pub fn bus_invocation(
    prefix: &BusPrefix,
    namespace: &Namespace,
    function: &FunctionName,
) -> String {
    format!("{PREFIX}.{prefix}.inv.{namespace}.{function}")
}

/// Every work subject of a prefixed bus (the work stream's filter): `fnmesh.v1.<prefix>.inv.>`.
pub fn bus_invocations_all(prefix: &BusPrefix) -> String {
    format!("{PREFIX}.{prefix}.inv.>")
}

/// Node-event subject of one invocation on a prefixed bus: `fnmesh.v1.<prefix>.evt.<id>`.
pub fn bus_node_event(prefix: &BusPrefix, id: &InvocationId) -> String {
    format!("{PREFIX}.{prefix}.evt.{id}")
}

/// Every node-event subject of a prefixed bus: `fnmesh.v1.<prefix>.evt.>`.
pub fn bus_node_events_all(prefix: &BusPrefix) -> String {
    format!("{PREFIX}.{prefix}.evt.>")
}

/// JetStream stream of a prefixed bus: `fnmesh-<prefix>-<role>` (`role` is a fixed token such
/// as `inv`, `evt`, `dlq`).
pub fn bus_stream(prefix: &BusPrefix, role: BusRole) -> String {
    format!("fnmesh-{prefix}-{}", role.token())
}

/// Durable consumer of a prefixed bus's stream: `fnmesh-<prefix>-<role>-c`.
pub fn bus_consumer(prefix: &BusPrefix, role: BusRole) -> String {
    format!("fnmesh-{prefix}-{}-c", role.token())
}

/// The streams of a JetStream bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusRole {
    /// The invocation work queue.
    Invocations,
    /// Node events for recorders.
    Events,
    /// Captured max-deliveries advisories of the work queue.
    DeadLetters,
}

impl BusRole {
    fn token(self) -> &'static str {
        match self {
            Self::Invocations => "inv",
            Self::Events => "evt",
            Self::DeadLetters => "dlq",
        }
    }
}

/// The core-NATS advisory JetStream publishes when a message of `stream` ran out of deliveries
/// on `consumer`: `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`.
pub fn max_deliveries_advisory(prefix: &BusPrefix) -> String {
    format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
        bus_stream(prefix, BusRole::Invocations),
        bus_consumer(prefix, BusRole::Invocations)
    )
}

/// Storage key of a code blob: `code/sha256/<hex>`.
pub fn code_key(checksum: &Checksum) -> String {
    format!("code/sha256/{checksum}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_have_fixed_token_counts() {
        let ns = Namespace::default_ns();
        let f = FunctionName::parse("hello-1").unwrap();
        assert_eq!(invocation(&ns, &f), "fnmesh.v1.inv.default.hello-1");
        assert_eq!(invocation(&ns, &f).split('.').count(), 5);
        let id = InvocationId::new();
        assert_eq!(node_event(&id).split('.').count(), 4);
    }

    #[test]
    fn bus_subjects_carry_the_prefix() {
        let p = BusPrefix::parse("t-1").unwrap();
        let ns = Namespace::default_ns();
        let f = FunctionName::parse("hello").unwrap();
        assert_eq!(
            bus_invocation(&p, &ns, &f),
            "fnmesh.v1.t-1.inv.default.hello"
        );
        assert_eq!(bus_invocations_all(&p), "fnmesh.v1.t-1.inv.>");
        assert_eq!(
            bus_node_event(&p, &InvocationId::new()).split('.').count(),
            5
        );
        assert_eq!(bus_stream(&p, BusRole::Invocations), "fnmesh-t-1-inv");
        assert_eq!(
            max_deliveries_advisory(&p),
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.fnmesh-t-1-inv.fnmesh-t-1-inv-c"
        );
        for bad in ["", "A", "a.b", "a b", "a*", ">", "-a", &"a".repeat(33)] {
            assert!(BusPrefix::parse(bad).is_err(), "{bad:?}");
        }
    }
}
