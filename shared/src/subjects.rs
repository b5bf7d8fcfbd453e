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
}
