//! W3C trace context: the validated `traceparent` that links the spans of one invocation across
//! gateway, bus and node.
//!
//! Only version `00` is accepted, in its exact form `00-<32 hex>-<16 hex>-<2 hex>` (lowercase),
//! with neither id all zeros. A gateway builds the `traceparent` it publishes from its own span
//! (never by copying a client's header); an incoming HTTP `traceparent` only becomes the parent
//! of that span once it passes [`TraceParent::parse`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The header (and NATS header) name.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// A valid W3C `traceparent` (version `00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

/// Why a `traceparent` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent: must be 00-<32 hex>-<16 hex>-<2 hex> with non-zero ids")]
pub struct TraceParentError;

/// Parses exactly `len` lowercase hex digits.
fn hex_field(s: &str, len: usize) -> Option<u128> {
    if s.len() != len || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

impl TraceParent {
    /// Builds one from its parts; `None` when an id is zero.
    pub fn new(trace_id: u128, span_id: u64, flags: u8) -> Option<Self> {
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// Parses a header value strictly (see the module docs).
    pub fn parse(value: &str) -> Result<Self, TraceParentError> {
        let mut parts = value.split('-');
        let (Some(version), Some(trace), Some(span), Some(flags), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TraceParentError);
        };
        if version != "00" {
            return Err(TraceParentError);
        }
        let trace_id = hex_field(trace, 32).ok_or(TraceParentError)?;
        let span_id = hex_field(span, 16)
            .and_then(|v| u64::try_from(v).ok())
            .ok_or(TraceParentError)?;
        let flags = hex_field(flags, 2)
            .and_then(|v| u8::try_from(v).ok())
            .ok_or(TraceParentError)?;
        Self::new(trace_id, span_id, flags).ok_or(TraceParentError)
    }

    /// The 128-bit trace id.
    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }

    /// The trace id as 32 lowercase hex digits (what a function sees as its `trace_id`).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The parent span id.
    pub fn span_id(&self) -> u64 {
        self.span_id
    }

    /// The trace flags (`01` = sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

impl std::str::FromStr for TraceParent {
    type Err = TraceParentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for TraceParent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TraceParent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Makes `traceparent` the remote parent of `span`, so the span joins that trace. Must be
/// called before the span is first entered; a no-op when tracing is off (no OpenTelemetry
/// layer) or the span is disabled.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &TraceParent) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    let remote = SpanContext::new(
        TraceId::from(traceparent.trace_id),
        SpanId::from(traceparent.span_id),
        TraceFlags::new(traceparent.flags),
        true,
        TraceState::default(),
    );
    let cx = opentelemetry::Context::new().with_remote_span_context(remote);
    if let Err(e) = span.set_parent(cx) {
        tracing::trace!(error = %e, "span not linked to its remote parent");
    }
}

/// The `traceparent` of `span` itself (to hand to the next hop), when tracing is on and the
/// span is recorded by OpenTelemetry.
pub fn traceparent_of(span: &tracing::Span) -> Option<TraceParent> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    TraceParent::new(
        u128::from_be_bytes(sc.trace_id().to_bytes()),
        u64::from_be_bytes(sc.span_id().to_bytes()),
        sc.trace_flags().to_u8(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let tp = TraceParent::parse(VALID).unwrap();
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.span_id(), 0x00f0_67aa_0ba9_02b7);
        assert!(tp.sampled());
        assert_eq!(tp.to_string(), VALID);
        let json = serde_json::to_string(&tp).unwrap();
        assert_eq!(json, format!("\"{VALID}\""));
        assert_eq!(serde_json::from_str::<TraceParent>(&json).unwrap(), tp);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), Err(TraceParentError), "{bad:?}");
        }
        assert!(serde_json::from_str::<TraceParent>("\"00-x\"").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_accepts_only_what_it_prints(s in "\\PC{0,80}") {
            if let Ok(tp) = TraceParent::parse(&s) {
                prop_assert_eq!(tp.to_string(), s);
            }
        }

        #[test]
        fn every_non_zero_id_pair_round_trips(t in 1u128.., s in 1u64.., f: u8) {
            let tp = TraceParent::new(t, s, f).unwrap();
            prop_assert_eq!(TraceParent::parse(&tp.to_string()), Ok(tp));
        }
    }
}
