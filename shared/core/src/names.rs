//! Validated names: the only strings that may end up in NATS subjects, storage keys and paths.
//!
//! A name matches `^[a-z][a-z0-9-]{0,62}$`: no `.`, `*`, `>`, whitespace, control characters,
//! upper case or `$`. Construct them with [`FunctionName::parse`] / [`Namespace::parse`] (or
//! serde, which validates too) at the edge; everything inside the system can then trust them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: must match ^[a-z][a-z0-9-]{{0,62}}$")]
pub struct NameError {
    what: &'static str,
    value: String,
}

/// Maximum length of a name, in bytes.
pub const MAX_NAME_LEN: usize = 63;

fn check(what: &'static str, value: &str) -> Result<(), NameError> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if ok {
        Ok(())
    } else {
        // Keep the echoed value short and printable so errors never carry huge or hostile input.
        let shown: String = value.chars().take(80).collect();
        Err(NameError { what, value: shown })
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub struct $ty(String);

        impl $ty {
            /// Validates `value` and wraps it.
            pub fn parse(value: &str) -> Result<Self, NameError> {
                check($what, value)?;
                Ok(Self(value.to_owned()))
            }

            /// The validated name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                check($what, &value)?;
                Ok(Self(value))
            }
        }

        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A function's name, unique within its namespace.
    FunctionName,
    "function name"
);
name_type!(
    /// An alias of a function (`prod`, `canary`): a named pointer to one of its versions, or
    /// a weighted split over several ([`crate::alias::Alias`]).
    AliasName,
    "alias name"
);
name_type!(
    /// A tenant namespace. Every function, invocation and key lives in exactly one.
    Namespace,
    "namespace"
);

impl Namespace {
    /// The namespace every key lives in until tenants are configured.
    pub fn default_ns() -> Self {
        Self("default".to_owned())
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self::default_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_valid_names() {
        for n in ["a", "hello", "a-b", "x1", "resize-image-2", &"a".repeat(63)] {
            assert!(FunctionName::parse(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn refuses_names_that_could_break_subjects() {
        let long = "a".repeat(64);
        for n in [
            "", "a.b", "*", ">", "A", "a b", "a\tb", "$JS", "1abc", "-a", "a_b", "a>", "a*", "é",
            "a\n", &long,
        ] {
            assert!(FunctionName::parse(n).is_err(), "{n:?} should be refused");
        }
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<FunctionName>("\"a.b\"").is_err());
        let n: FunctionName = serde_json::from_str("\"ok-1\"").unwrap();
        assert_eq!(n.as_str(), "ok-1");
    }

    proptest! {
        #[test]
        fn valid_names_never_contain_subject_metacharacters(s in "\\PC{0,80}") {
            if let Ok(n) = FunctionName::parse(&s) {
                prop_assert!(!n.as_str().contains(['.', '*', '>', ' ', '\t', '$']));
                prop_assert!(n.as_str().len() <= MAX_NAME_LEN);
            }
        }

        #[test]
        fn generated_valid_names_parse(s in "[a-z][a-z0-9-]{0,62}") {
            prop_assert!(FunctionName::parse(&s).is_ok());
        }
    }
}
