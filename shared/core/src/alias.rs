//! Aliases: a named pointer from a function to one of its versions (`prod` → 3), or a
//! weighted split over several (`{"3": 90, "4": 10}`: a canary).
//!
//! An alias belongs to its function (deleting the function deletes its aliases) and is
//! replaced as a whole: its [`Routing`] changes in one write, which also keeps the target it
//! replaced as [`Alias::previous`], so a rollback is one step back (and a rollback of a
//! rollback steps forward again). Versions are immutable and never collected while their
//! function exists, so a version an alias points at is always there to run.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::names::{AliasName, FunctionName, Namespace};

/// The most versions one alias may split its traffic over.
pub const MAX_ALIAS_VERSIONS: usize = 10;

/// Why a routing was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// No version at all.
    #[error("an alias needs at least one version")]
    Empty,
    /// More than [`MAX_ALIAS_VERSIONS`].
    #[error("an alias splits over at most {MAX_ALIAS_VERSIONS} versions")]
    TooMany,
    /// Version 0 (versions start at 1).
    #[error("versions start at 1")]
    VersionZero,
    /// A weight of 0 (leave the version out instead).
    #[error("version {0} has weight 0: every weight is 1 to 100")]
    ZeroWeight(u32),
    /// Weights that do not add up to 100.
    #[error("weights add up to {0}, not 100")]
    Sum(u32),
    /// A key that is not a version number.
    #[error("{0:?} is not a version number")]
    NotAVersion(String),
}

/// Where an alias sends its invocations: each version with a weight, the weights adding up to
/// 100 (a single version has weight 100).
///
/// As JSON, an object of version (a decimal string) to weight. It is read through string
/// keys, parsed here, rather than serde's integer map keys: those fail inside an internally
/// tagged enum (the catalog's entries), where serde buffers the object first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, u8>", into = "BTreeMap<u32, u8>")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Routing(BTreeMap<u32, u8>);

impl Routing {
    /// Every invocation to `version`.
    pub fn single(version: u32) -> Result<Self, RoutingError> {
        Self::split(BTreeMap::from([(version, 100)]))
    }

    /// A weighted split: `weights` maps versions to percentages adding up to 100.
    pub fn split(weights: BTreeMap<u32, u8>) -> Result<Self, RoutingError> {
        if weights.is_empty() {
            return Err(RoutingError::Empty);
        }
        if weights.len() > MAX_ALIAS_VERSIONS {
            return Err(RoutingError::TooMany);
        }
        if weights.contains_key(&0) {
            return Err(RoutingError::VersionZero);
        }
        if let Some((version, _)) = weights.iter().find(|(_, w)| **w == 0) {
            return Err(RoutingError::ZeroWeight(*version));
        }
        let sum: u32 = weights.values().map(|w| u32::from(*w)).sum();
        if sum != 100 {
            return Err(RoutingError::Sum(sum));
        }
        Ok(Self(weights))
    }

    /// The versions and their weights, by version.
    pub fn weights(&self) -> &BTreeMap<u32, u8> {
        &self.0
    }

    /// The versions it may run.
    pub fn versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.keys().copied()
    }

    /// The version, when it sends everything to one.
    pub fn single_version(&self) -> Option<u32> {
        match self.0.len() {
            1 => self.0.keys().next().copied(),
            _ => None,
        }
    }

    /// The version an invocation runs, given `roll`, uniform in `0..100`: version `v` is
    /// chosen for `weight(v)` of the 100 rolls.
    pub fn pick(&self, roll: u8) -> u32 {
        let mut below = 0u32;
        for (version, weight) in &self.0 {
            below += u32::from(*weight);
            if u32::from(roll) < below {
                return *version;
            }
        }
        // `roll` ≥ 100 (out of contract): the last version.
        self.0.keys().next_back().copied().unwrap_or(1)
    }

    /// [`Self::pick`] with a random roll.
    pub fn pick_random(&self) -> u32 {
        self.pick(rand::random_range(0..100u8))
    }
}

impl TryFrom<BTreeMap<String, u8>> for Routing {
    type Error = RoutingError;
    fn try_from(weights: BTreeMap<String, u8>) -> Result<Self, RoutingError> {
        let weights = weights
            .into_iter()
            .map(|(version, weight)| {
                version
                    .parse::<u32>()
                    .map(|v| (v, weight))
                    .map_err(|_| RoutingError::NotAVersion(version))
            })
            .collect::<Result<BTreeMap<u32, u8>, RoutingError>>()?;
        Self::split(weights)
    }
}

impl From<Routing> for BTreeMap<u32, u8> {
    fn from(routing: Routing) -> Self {
        routing.0
    }
}

/// An alias as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alias {
    /// The function's namespace.
    pub namespace: Namespace,
    /// The function.
    pub function: FunctionName,
    /// The alias.
    pub name: AliasName,
    /// Where it sends invocations now.
    pub routing: Routing,
    /// What it pointed at before its last change: where a rollback returns it.
    #[serde(default)]
    pub previous: Option<Routing>,
    /// Counts its changes, from 1.
    pub revision: u64,
    /// Made at.
    pub created_at: DateTime<Utc>,
    /// Last changed at.
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pairs: &[(u32, u8)]) -> Result<Routing, RoutingError> {
        Routing::split(pairs.iter().copied().collect())
    }

    #[test]
    fn weights_must_be_positive_and_add_up_to_100() {
        assert!(split(&[(3, 90), (4, 10)]).is_ok());
        assert_eq!(split(&[]), Err(RoutingError::Empty));
        assert_eq!(split(&[(3, 90), (4, 9)]), Err(RoutingError::Sum(99)));
        assert_eq!(split(&[(3, 100), (4, 0)]), Err(RoutingError::ZeroWeight(4)));
        assert_eq!(split(&[(0, 100)]), Err(RoutingError::VersionZero));
        let eleven: Vec<(u32, u8)> = (1..=11).map(|v| (v, if v == 1 { 90 } else { 1 })).collect();
        assert_eq!(split(&eleven), Err(RoutingError::TooMany));
        assert_eq!(Routing::single(7).unwrap().single_version(), Some(7));
        assert_eq!(split(&[(3, 50), (4, 50)]).unwrap().single_version(), None);
    }

    #[test]
    fn pick_gives_each_version_its_weight_of_the_rolls() {
        let routing = split(&[(3, 90), (4, 10)]).unwrap();
        let fours = (0..100u8).filter(|roll| routing.pick(*roll) == 4).count();
        assert_eq!(fours, 10);
        assert_eq!(routing.pick(0), 3);
        assert_eq!(routing.pick(89), 3);
        assert_eq!(routing.pick(90), 4);
        assert_eq!(routing.pick(99), 4);
        let one = Routing::single(5).unwrap();
        assert!((0..100u8).all(|roll| one.pick(roll) == 5));
    }

    #[test]
    fn routing_is_json_a_map_of_versions_to_weights_and_is_checked_when_read() {
        let routing = split(&[(3, 90), (4, 10)]).unwrap();
        let text = serde_json::to_string(&routing).unwrap();
        assert_eq!(text, r#"{"3":90,"4":10}"#);
        assert_eq!(serde_json::from_str::<Routing>(&text).unwrap(), routing);
        assert!(serde_json::from_str::<Routing>(r#"{"3":90}"#).is_err());
        assert!(serde_json::from_str::<Routing>(r#"{"x":100}"#).is_err());
    }

    /// Inside an internally tagged enum (how the catalog carries aliases), serde buffers the
    /// object before reading it: the versions must still read.
    #[test]
    fn routing_reads_inside_an_internally_tagged_enum() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        enum Entry {
            Alias { routing: Routing },
        }
        let entry = Entry::Alias {
            routing: split(&[(3, 90), (4, 10)]).unwrap(),
        };
        let text = serde_json::to_string(&entry).unwrap();
        assert_eq!(text, r#"{"kind":"alias","routing":{"3":90,"4":10}}"#);
        assert_eq!(serde_json::from_str::<Entry>(&text).unwrap(), entry);
    }
}
