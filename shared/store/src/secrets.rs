//! Storage of function secrets and of namespaces' registry credentials, sealed (the store
//! never sees a plaintext value).
//!
//! The SQL lives in `sql/secrets.rs`, once for both engines.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::StoreError;
use fnmesh_core::names::{FunctionName, Namespace};
use fnmesh_core::registry::RegistryHost;
use fnmesh_core::secrets::{SealedSecrets, SealedValue, SecretName};

/// A secret as listings show it: its name and when it was last set, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    /// The name.
    pub name: SecretName,
    /// Last set at.
    pub updated_at: DateTime<Utc>,
}

/// A registry credential as listings show it: its host and when it was last set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredentialInfo {
    /// The registry.
    pub host: RegistryHost,
    /// Last set at.
    pub updated_at: DateTime<Utc>,
}

/// Function secrets and registry credentials, a supertrait of [`super::MetadataStore`].
#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// Stores (or replaces) a sealed secret of a function. `NotFound` if the function does
    /// not exist. Secrets go with their function when it is deleted.
    async fn put_secret(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &SecretName,
        value: &SealedValue,
    ) -> Result<(), StoreError>;

    /// The names of a function's secrets (never their values), by name.
    async fn list_secrets(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
    ) -> Result<Vec<SecretInfo>, StoreError>;

    /// A function's secrets, sealed, by name: what an invocation carries to the node.
    async fn sealed_secrets(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
    ) -> Result<SealedSecrets, StoreError>;

    /// Removes a secret; whether it existed.
    async fn delete_secret(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &SecretName,
    ) -> Result<bool, StoreError>;

    /// Stores (or replaces) `namespace`'s sealed credential for registry `host`.
    async fn put_registry_credential(
        &self,
        namespace: &Namespace,
        host: &RegistryHost,
        value: &SealedValue,
    ) -> Result<(), StoreError>;

    /// `namespace`'s registry credentials (never their values), by host.
    async fn list_registry_credentials(
        &self,
        namespace: &Namespace,
    ) -> Result<Vec<RegistryCredentialInfo>, StoreError>;

    /// `namespace`'s sealed credential for `host`, if it keeps one.
    async fn registry_credential(
        &self,
        namespace: &Namespace,
        host: &RegistryHost,
    ) -> Result<Option<SealedValue>, StoreError>;

    /// Removes a registry credential; whether it existed.
    async fn delete_registry_credential(
        &self,
        namespace: &Namespace,
        host: &RegistryHost,
    ) -> Result<bool, StoreError>;
}
