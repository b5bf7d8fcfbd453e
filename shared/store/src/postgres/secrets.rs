//! [`SecretStore`]: sealed function secrets in PostgreSQL (`migrations/postgres/0004_audit_secrets.sql`).

use async_trait::async_trait;
use chrono::Utc;
use sqlx::Row;

use super::PostgresStore;
use crate::common::{
    function_label, is_foreign_key_violation, sealed_secret_from_row, secret_name,
};
use crate::{SecretInfo, SecretStore, StoreError};
use fnmesh_core::names::{FunctionName, Namespace};
use fnmesh_core::secrets::{SealedSecrets, SealedValue, SecretName};

#[async_trait]
impl SecretStore for PostgresStore {
    async fn put_secret(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &SecretName,
        value: &SealedValue,
    ) -> Result<(), StoreError> {
        let pool = &self.pool;
        let done = sqlx::query(
            "INSERT INTO function_secrets \
             (namespace, function, name, key_id, nonce, ciphertext, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (namespace, function, name) DO UPDATE SET key_id = excluded.key_id, \
             nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
             updated_at = excluded.updated_at",
        )
        .bind(namespace.as_str())
        .bind(function.as_str())
        .bind(name.as_str())
        .bind(&value.key_id)
        .bind(&value.nonce)
        .bind(&value.ciphertext)
        .bind(Utc::now())
        .execute(pool)
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
        let pool = &self.pool;
        let rows = sqlx::query(
            "SELECT name, updated_at FROM function_secrets \
             WHERE namespace = $1 AND function = $2 ORDER BY name",
        )
        .bind(namespace.as_str())
        .bind(function.as_str())
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|row| {
                let name: String = row.try_get("name")?;

                Ok(SecretInfo {
                    name: secret_name(&name)?,
                    updated_at: row.try_get("updated_at")?,
                })
            })
            .collect()
    }

    async fn sealed_secrets(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
    ) -> Result<SealedSecrets, StoreError> {
        let pool = &self.pool;
        let rows = sqlx::query(
            "SELECT name, key_id, nonce, ciphertext FROM function_secrets \
             WHERE namespace = $1 AND function = $2 ORDER BY name",
        )
        .bind(namespace.as_str())
        .bind(function.as_str())
        .fetch_all(pool)
        .await?;
        let items = rows
            .iter()
            .map(sealed_secret_from_row)
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(SealedSecrets(items))
    }

    async fn delete_secret(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &SecretName,
    ) -> Result<bool, StoreError> {
        let pool = &self.pool;
        let done = sqlx::query(
            "DELETE FROM function_secrets WHERE namespace = $1 AND function = $2 AND name = $3",
        )
        .bind(namespace.as_str())
        .bind(function.as_str())
        .bind(name.as_str())
        .execute(pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }
}
