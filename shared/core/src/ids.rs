//! Identifiers: UUIDs rendered in their canonical hyphenated form (safe in subjects and paths).

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An id that failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: expected a UUID")]
pub struct IdError {
    what: &'static str,
    value: String,
}

macro_rules! id_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String))]
        pub struct $ty(Uuid);

        impl $ty {
            /// A new, time-ordered (UUIDv7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses the canonical text form.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                Uuid::try_parse(value).map(Self).map_err(|_| IdError {
                    what: $what,
                    value: value.chars().take(80).collect(),
                })
            }

            /// The underlying UUID.
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $ty {
            fn default() -> Self {
                Self::new()
            }
        }

        impl TryFrom<String> for $ty {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(&value)
            }
        }

        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0.hyphenated().to_string()
            }
        }

        impl std::str::FromStr for $ty {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }
    };
}

id_type!(
    /// One invocation (UUIDv7, so ids sort by creation time).
    InvocationId,
    "invocation id"
);
id_type!(
    /// One function, stable across its versions; a re-created function gets a new id.
    FunctionId,
    "function id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invocation_ids_are_v7_and_roundtrip() {
        let id = InvocationId::new();
        assert_eq!(id.as_uuid().get_version_num(), 7);
        let text = id.to_string();
        assert_eq!(InvocationId::parse(&text).unwrap(), id);
        assert!(InvocationId::parse("not-a-uuid").is_err());
        assert!(InvocationId::parse("a.b.c").is_err());
    }
}

/// A node id that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node id {0:?}: must match ^[a-z0-9][a-z0-9_-]{{0,62}}$")]
pub struct NodeIdError(String);

/// A worker node's id (`^[a-z0-9][a-z0-9_-]{0,62}$`): safe in registry keys, cgroup paths and
/// logs. Chosen by the operator (`FNMESH_NODE_ID`) or generated ([`NodeId::generate`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeId(String);

impl NodeId {
    /// Validates `value` and wraps it.
    pub fn parse(value: &str) -> Result<Self, NodeIdError> {
        let bytes = value.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 63
            && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_');
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(NodeIdError(value.chars().take(80).collect()))
        }
    }

    /// A fresh random id, `node-<8 hex digits>`.
    pub fn generate() -> Self {
        Self(format!("node-{:08x}", rand::random::<u32>()))
    }

    /// The validated id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = NodeIdError;
    fn try_from(value: String) -> Result<Self, NodeIdError> {
        Self::parse(&value)
    }
}

impl From<NodeId> for String {
    fn from(value: NodeId) -> String {
        value.0
    }
}

impl std::str::FromStr for NodeId {
    type Err = NodeIdError;
    fn from_str(s: &str) -> Result<Self, NodeIdError> {
        Self::parse(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod node_id_tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn node_ids_are_validated() {
        for ok in ["a", "node-a", "0", "n_1", "node-0123abcd", &"a".repeat(63)] {
            assert!(NodeId::parse(ok).is_ok(), "{ok:?}");
        }
        let long = "a".repeat(64);
        for bad in [
            "", "-a", "_a", "A", "a.b", "a b", "a*", ">", "a/b", "é", &long,
        ] {
            assert!(NodeId::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(serde_json::from_str::<NodeId>("\"a.b\"").is_err());
        assert!(NodeId::parse(NodeId::generate().as_str()).is_ok());
    }

    proptest! {
        #[test]
        fn valid_node_ids_never_contain_subject_metacharacters(s in "\\PC{0,80}") {
            if let Ok(id) = NodeId::parse(&s) {
                prop_assert!(!id.as_str().contains(['.', '*', '>', ' ', '/', '$']));
                prop_assert!(id.as_str().len() <= 63);
            }
        }
    }
}
