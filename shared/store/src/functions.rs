//! Storage of functions and their immutable versions.
//!
//! The SQL lives in `sql/functions.rs`, once for both engines.

use async_trait::async_trait;

use super::{Page, StoreError};
use chrono::{DateTime, Utc};
use fnmesh_core::alias::{Alias, Routing};
use fnmesh_core::function::Function;
use fnmesh_core::names::{AliasName, FunctionName, Namespace};

/// Functions, their versions and their aliases, a supertrait of [`super::MetadataStore`].
///
/// Every method is scoped by namespace: a row of another namespace is indistinguishable from
/// an absent one.
#[async_trait]
pub trait FunctionStore: Send + Sync + 'static {
    /// Inserts version 1 of a new function. `Conflict` if the name exists in the namespace.
    async fn create_function(&self, function: &Function) -> Result<(), StoreError>;

    /// Appends a version. `function.version` must be the latest + 1 (`Conflict` otherwise,
    /// e.g. a concurrent update won); `NotFound` if the function does not exist.
    async fn add_version(&self, function: &Function) -> Result<(), StoreError>;

    /// The latest version, or the given one.
    async fn get_function(
        &self,
        namespace: &Namespace,
        name: &FunctionName,
        version: Option<u32>,
    ) -> Result<Option<Function>, StoreError>;

    /// Latest versions of the namespace's functions, by name.
    async fn list_functions(
        &self,
        namespace: &Namespace,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<Function>, StoreError>;

    /// All versions of one function, oldest first (empty if it does not exist).
    async fn list_versions(
        &self,
        namespace: &Namespace,
        name: &FunctionName,
    ) -> Result<Vec<Function>, StoreError>;

    /// The namespaces that hold at least one function, by name.
    async fn function_namespaces(&self) -> Result<Vec<Namespace>, StoreError>;

    /// Deletes a function and all its versions; `false` if it did not exist.
    async fn delete_function(
        &self,
        namespace: &Namespace,
        name: &FunctionName,
    ) -> Result<bool, StoreError>;

    /// Points the alias `name` of a function at `routing` (making the alias if it is new),
    /// keeping what it pointed at before as [`Alias::previous`], in one write: a concurrent
    /// reader sees the old alias or the new one. `NotFound` if the function or one of the
    /// versions does not exist. Setting the routing it already has changes nothing.
    async fn put_alias(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &AliasName,
        routing: &Routing,
        at: DateTime<Utc>,
    ) -> Result<Alias, StoreError>;

    /// Points an alias back at its previous routing (which becomes the new previous, so a
    /// second rollback steps forward again). `NotFound` if the alias does not exist,
    /// `Conflict` if it has never changed.
    async fn rollback_alias(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &AliasName,
        at: DateTime<Utc>,
    ) -> Result<Alias, StoreError>;

    /// One alias.
    async fn get_alias(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &AliasName,
    ) -> Result<Option<Alias>, StoreError>;

    /// A function's aliases, by name (empty if it has none or does not exist).
    async fn list_aliases(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
    ) -> Result<Vec<Alias>, StoreError>;

    /// Deletes an alias; `false` if it did not exist.
    async fn delete_alias(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &AliasName,
    ) -> Result<bool, StoreError>;
}
