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
