//! [`FunctionStore`] on PostgreSQL: functions and their immutable versions.

use async_trait::async_trait;

use super::{to_json, PostgresStore};
use crate::common::{
    clamp_limit, from_json, function_cursor, function_label, is_unique_violation,
    page_from_extra_row, FUNCTION_CURSOR,
};
use crate::{FunctionStore, Page, StoreError};
use fnmesh_core::function::Function;
use fnmesh_core::names::{FunctionName, Namespace};

#[async_trait]
impl FunctionStore for PostgresStore {
    async fn create_function(&self, function: &Function) -> Result<(), StoreError> {
        let label = function_label(&function.namespace, &function.name);
        let body = to_json(function)?;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO functions (namespace, name, id, latest_version, created_at) \
             VALUES ($1, $2, $3::uuid, $4, $5)",
        )
        .bind(function.namespace.as_str())
        .bind(function.name.as_str())
        .bind(function.id.to_string())
        .bind(i64::from(function.version))
        .bind(function.created_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(label)),
            Err(e) => return Err(e.into()),
        }
        sqlx::query(
            "INSERT INTO function_versions (namespace, name, version, body, created_at) \
             VALUES ($1, $2, $3, $4::jsonb, $5)",
        )
        .bind(function.namespace.as_str())
        .bind(function.name.as_str())
        .bind(i64::from(function.version))
        .bind(body)
        .bind(function.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_version(&self, function: &Function) -> Result<(), StoreError> {
        let label = function_label(&function.namespace, &function.name);
        let body = to_json(function)?;
        let version = i64::from(function.version);
        let mut tx = self.pool.begin().await?;
        // The row lock of this UPDATE serialises concurrent updates: a second n+1 waits, then
        // re-checks `latest_version` on the committed row and matches nothing.
        let bumped = sqlx::query(
            "UPDATE functions SET latest_version = $1 \
             WHERE namespace = $2 AND name = $3 AND latest_version = $1 - 1",
        )
        .bind(version)
        .bind(function.namespace.as_str())
        .bind(function.name.as_str())
        .execute(&mut *tx)
        .await?;
        if bumped.rows_affected() == 0 {
            let latest: Option<i64> = sqlx::query_scalar(
                "SELECT latest_version FROM functions WHERE namespace = $1 AND name = $2",
            )
            .bind(function.namespace.as_str())
            .bind(function.name.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            return Err(match latest {
                None => StoreError::NotFound(label),
                Some(latest) => StoreError::Conflict(format!(
                    "{label} version {} (latest is {latest})",
                    function.version
                )),
            });
        }
        sqlx::query(
            "INSERT INTO function_versions (namespace, name, version, body, created_at) \
             VALUES ($1, $2, $3, $4::jsonb, $5)",
        )
        .bind(function.namespace.as_str())
        .bind(function.name.as_str())
        .bind(version)
        .bind(body)
        .bind(function.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("{label} version {}", function.version))
            } else {
                e.into()
            }
        })?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_function(
        &self,
        namespace: &Namespace,
        name: &FunctionName,
        version: Option<u32>,
    ) -> Result<Option<Function>, StoreError> {
        let body: Option<String> = match version {
            Some(version) => {
                sqlx::query_scalar(
                    "SELECT body::text FROM function_versions \
                     WHERE namespace = $1 AND name = $2 AND version = $3",
                )
                .bind(namespace.as_str())
                .bind(name.as_str())
                .bind(i64::from(version))
                .fetch_optional(&self.pool)
                .await?
            }
            None => {
                sqlx::query_scalar(
                    "SELECT v.body::text FROM functions f JOIN function_versions v \
                     ON v.namespace = f.namespace AND v.name = f.name \
                     AND v.version = f.latest_version \
                     WHERE f.namespace = $1 AND f.name = $2",
                )
                .bind(namespace.as_str())
                .bind(name.as_str())
                .fetch_optional(&self.pool)
                .await?
            }
        };
        body.as_deref().map(from_json).transpose()
    }

    async fn list_functions(
        &self,
        namespace: &Namespace,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<Function>, StoreError> {
        let limit = clamp_limit(limit);
        let after = function_cursor(cursor)?;
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT v.body::text FROM functions f JOIN function_versions v \
             ON v.namespace = f.namespace AND v.name = f.name AND v.version = f.latest_version \
             WHERE f.namespace = $1 AND ($2::text IS NULL OR f.name > $2) \
             ORDER BY f.name LIMIT $3",
        )
        .bind(namespace.as_str())
        .bind(after.as_deref())
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows
            .iter()
            .map(|b| from_json::<Function>(b))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page_from_extra_row(items, limit, FUNCTION_CURSOR, |f| {
            f.name.to_string()
        }))
    }

    async fn list_versions(
        &self,
        namespace: &Namespace,
        name: &FunctionName,
    ) -> Result<Vec<Function>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT body::text FROM function_versions WHERE namespace = $1 AND name = $2 \
             ORDER BY version",
        )
        .bind(namespace.as_str())
        .bind(name.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|b| from_json(b)).collect()
    }

    async fn delete_function(
        &self,
        namespace: &Namespace,
        name: &FunctionName,
    ) -> Result<bool, StoreError> {
        // Versions go with it (ON DELETE CASCADE).
        let done = sqlx::query("DELETE FROM functions WHERE namespace = $1 AND name = $2")
            .bind(namespace.as_str())
            .bind(name.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
