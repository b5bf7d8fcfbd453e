//! [`SecretStore`] on any [`SqlEngine`]: sealed function secrets and registry credentials.

use async_trait::async_trait;
use chrono::Utc;

use super::{execute, fetch_all, fetch_optional, Sql, SqlEngine, SqlRow};
use crate::common::{function_label, is_foreign_key_violation};
use crate::{RegistryCredentialInfo, SecretInfo, SecretStore, StoreError};
use fnmesh_core::names::{FunctionName, Namespace};
use fnmesh_core::registry::RegistryHost;
use fnmesh_core::secrets::{SealedSecret, SealedSecrets, SealedValue, SecretName};

/// A stored secret name, decoded.
fn secret_name<R: SqlRow>(row: &R) -> Result<SecretName, StoreError> {
    SecretName::parse(&row.text("name")?)
        .map_err(|e| StoreError::Backend(format!("decode secret name: {e}")))
}

/// The rows of one function's secrets, by name, with `columns`.
fn of_function(columns: &str, namespace: &Namespace, function: &FunctionName) -> Sql {
    Sql::new(format!(
        "SELECT {columns} FROM function_secrets \
         WHERE namespace = $1 AND function = $2 ORDER BY name"
    ))
    .bind(namespace.as_str())
    .bind(function.as_str())
}

#[async_trait]
impl<E: SqlEngine> SecretStore for E {
    async fn put_secret(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &SecretName,
        value: &SealedValue,
    ) -> Result<(), StoreError> {
        let done = execute(
            self,
            Sql::new(
                "INSERT INTO function_secrets \
                 (namespace, function, name, key_id, nonce, ciphertext, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (namespace, function, name) DO UPDATE SET \
                 key_id = excluded.key_id, nonce = excluded.nonce, \
                 ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
            )
            .bind(namespace.as_str())
            .bind(function.as_str())
            .bind(name.as_str())
            .bind(value.key_id.as_str())
            .bind(value.nonce.as_slice())
            .bind(value.ciphertext.as_slice())
            .bind(Utc::now()),
        )
        .await;
        match done {
            Ok(_) => Ok(()),
            Err(e) if is_foreign_key_violation(&e) => {
                Err(StoreError::NotFound(function_label(namespace, function)))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn list_secrets(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
    ) -> Result<Vec<SecretInfo>, StoreError> {
        let rows = fetch_all(self, of_function("name, updated_at", namespace, function)).await?;
        rows.iter()
            .map(|row| {
                Ok(SecretInfo {
                    name: secret_name(row)?,
                    updated_at: row.time("updated_at")?,
                })
            })
            .collect()
    }

    async fn sealed_secrets(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
    ) -> Result<SealedSecrets, StoreError> {
        let columns = "name, key_id, nonce, ciphertext";
        let rows = fetch_all(self, of_function(columns, namespace, function)).await?;
        let items = rows
            .iter()
            .map(|row| {
                Ok(SealedSecret {
                    name: secret_name(row)?,
                    value: SealedValue {
                        key_id: row.text("key_id")?,
                        nonce: row.bytes("nonce")?,
                        ciphertext: row.bytes("ciphertext")?,
                    },
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(SealedSecrets(items))
    }

    async fn delete_secret(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &SecretName,
    ) -> Result<bool, StoreError> {
        let deleted = execute(
            self,
            Sql::new(
                "DELETE FROM function_secrets \
                 WHERE namespace = $1 AND function = $2 AND name = $3",
            )
            .bind(namespace.as_str())
            .bind(function.as_str())
            .bind(name.as_str()),
        )
        .await?;
        Ok(deleted > 0)
    }

    async fn put_registry_credential(
        &self,
        namespace: &Namespace,
        host: &RegistryHost,
        value: &SealedValue,
    ) -> Result<(), StoreError> {
        execute(
            self,
            Sql::new(
                "INSERT INTO registry_credentials \
                 (namespace, host, key_id, nonce, ciphertext, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (namespace, host) DO UPDATE SET \
                 key_id = excluded.key_id, nonce = excluded.nonce, \
                 ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
            )
            .bind(namespace.as_str())
            .bind(host.as_str())
            .bind(value.key_id.as_str())
            .bind(value.nonce.as_slice())
            .bind(value.ciphertext.as_slice())
            .bind(Utc::now()),
        )
        .await?;
        Ok(())
    }

    async fn list_registry_credentials(
        &self,
        namespace: &Namespace,
    ) -> Result<Vec<RegistryCredentialInfo>, StoreError> {
        let rows = fetch_all(
            self,
            Sql::new(
                "SELECT host, updated_at FROM registry_credentials \
                 WHERE namespace = $1 ORDER BY host",
            )
            .bind(namespace.as_str()),
        )
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RegistryCredentialInfo {
                    host: RegistryHost::parse(&row.text("host")?)
                        .map_err(|e| StoreError::Backend(format!("decode registry host: {e}")))?,
                    updated_at: row.time("updated_at")?,
                })
            })
            .collect()
    }

    async fn registry_credential(
        &self,
        namespace: &Namespace,
        host: &RegistryHost,
    ) -> Result<Option<SealedValue>, StoreError> {
        let row = fetch_optional(
            self,
            Sql::new(
                "SELECT key_id, nonce, ciphertext FROM registry_credentials \
                 WHERE namespace = $1 AND host = $2",
            )
            .bind(namespace.as_str())
            .bind(host.as_str()),
        )
        .await?;
        row.map(|row| {
            Ok(SealedValue {
                key_id: row.text("key_id")?,
                nonce: row.bytes("nonce")?,
                ciphertext: row.bytes("ciphertext")?,
            })
        })
        .transpose()
    }

    async fn delete_registry_credential(
        &self,
        namespace: &Namespace,
        host: &RegistryHost,
    ) -> Result<bool, StoreError> {
        let deleted = execute(
            self,
            Sql::new("DELETE FROM registry_credentials WHERE namespace = $1 AND host = $2")
                .bind(namespace.as_str())
                .bind(host.as_str()),
        )
        .await?;
        Ok(deleted > 0)
    }
}
