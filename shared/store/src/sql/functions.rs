//! [`FunctionStore`] on any [`SqlEngine`]: functions and their immutable versions.

use async_trait::async_trait;

use super::{execute, fetch_all, fetch_optional, fetch_page, Listing, Sql, SqlEngine, SqlRow};
use crate::common::{
    clamp_limit, from_json, function_cursor, function_label, is_unique_violation, FUNCTION_CURSOR,
};
use crate::{FunctionStore, Page, StoreError};
use fnmesh_core::function::Function;
use fnmesh_core::names::{FunctionName, Namespace};

/// Functions by name.
const FUNCTIONS: Listing<Function> = Listing {
    seek: " AND f.name > ",
    cast: "",
    order: " ORDER BY f.name LIMIT ",
    cursor: FUNCTION_CURSOR,
    key: |f| f.name.to_string(),
};

/// Inserts a version. Binds: namespace, name, version, body, created_at.
const INSERT_VERSION_SQL: &str =
    "INSERT INTO function_versions (namespace, name, version, body, created_at) \
     VALUES ($1, $2, $3, $4::jsonb, $5)";

/// The bodies of rows whose `body` column is the only one read.
fn bodies<R: SqlRow>(rows: &[R]) -> Result<Vec<Function>, StoreError> {
    rows.iter()
        .map(|row| from_json(&row.text("body")?))
        .collect()
}

#[async_trait]
impl<E: SqlEngine> FunctionStore for E {
    async fn create_function(&self, function: &Function) -> Result<(), StoreError> {
        let label = function_label(&function.namespace, &function.name);
        let body = E::to_json(function)?;
        let mut tx = self.begin_write().await?;
        let inserted = E::execute(
            &mut tx,
            Sql::new(
                "INSERT INTO functions (namespace, name, id, latest_version, created_at) \
                 VALUES ($1, $2, $3::uuid, $4, $5)",
            )
            .bind(function.namespace.as_str())
            .bind(function.name.as_str())
            .bind(function.id.to_string())
            .bind(i64::from(function.version))
            .bind(function.created_at),
        )
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(label)),
            Err(e) => return Err(e.into()),
        }
        E::execute(
            &mut tx,
            Sql::new(INSERT_VERSION_SQL)
                .bind(function.namespace.as_str())
                .bind(function.name.as_str())
                .bind(i64::from(function.version))
                .bind(body)
                .bind(function.updated_at),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_version(&self, function: &Function) -> Result<(), StoreError> {
        let label = function_label(&function.namespace, &function.name);
        let body = E::to_json(function)?;
        let version = i64::from(function.version);
        // Of two concurrent n+1 updates exactly one wins: SQLite's write transaction cannot
        // interleave with another writer, and in PostgreSQL the row lock of this UPDATE makes
        // a second n+1 wait, then re-check `latest_version` on the committed row.
        let mut tx = self.begin_write().await?;
        let bumped = E::execute(
            &mut tx,
            Sql::new(
                "UPDATE functions SET latest_version = $1 \
                 WHERE namespace = $2 AND name = $3 AND latest_version = $1 - 1",
            )
            .bind(version)
            .bind(function.namespace.as_str())
            .bind(function.name.as_str()),
        )
        .await?;
        if bumped == 0 {
            let latest = E::fetch_optional(
                &mut tx,
                Sql::new("SELECT latest_version FROM functions WHERE namespace = $1 AND name = $2")
                    .bind(function.namespace.as_str())
                    .bind(function.name.as_str()),
            )
            .await?;
            return Err(match latest {
                None => StoreError::NotFound(label),
                Some(row) => StoreError::Conflict(format!(
                    "{label} version {} (latest is {})",
                    function.version,
                    row.int("latest_version")?
                )),
            });
        }
        E::execute(
            &mut tx,
            Sql::new(INSERT_VERSION_SQL)
                .bind(function.namespace.as_str())
                .bind(function.name.as_str())
                .bind(version)
                .bind(body)
                .bind(function.updated_at),
        )
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
        let query = match version {
            Some(version) => Sql::new(
                "SELECT body::text AS body FROM function_versions \
                 WHERE namespace = $1 AND name = $2 AND version = $3",
            )
            .bind(namespace.as_str())
            .bind(name.as_str())
            .bind(i64::from(version)),
            None => Sql::new(
                "SELECT v.body::text AS body FROM functions f JOIN function_versions v \
                 ON v.namespace = f.namespace AND v.name = f.name \
                 AND v.version = f.latest_version \
                 WHERE f.namespace = $1 AND f.name = $2",
            )
            .bind(namespace.as_str())
            .bind(name.as_str()),
        };
        let row = fetch_optional(self, query).await?;
        row.map(|row| from_json(&row.text("body")?)).transpose()
    }

    async fn list_functions(
        &self,
        namespace: &Namespace,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<Function>, StoreError> {
        let limit = clamp_limit(limit);
        let after = function_cursor(cursor)?;
        let query = Sql::new(
            "SELECT v.body::text AS body FROM functions f JOIN function_versions v \
             ON v.namespace = f.namespace AND v.name = f.name \
             AND v.version = f.latest_version WHERE f.namespace = $1",
        )
        .bind(namespace.as_str());
        let body = |row: &E::Row| from_json(&row.text("body")?);
        fetch_page(self, query, &FUNCTIONS, after, limit, body).await
    }

    async fn list_versions(
        &self,
        namespace: &Namespace,
        name: &FunctionName,
    ) -> Result<Vec<Function>, StoreError> {
        let rows = fetch_all(
            self,
            Sql::new(
                "SELECT body::text AS body FROM function_versions \
                 WHERE namespace = $1 AND name = $2 ORDER BY version",
            )
            .bind(namespace.as_str())
            .bind(name.as_str()),
        )
        .await?;
        bodies(&rows)
    }

    async fn function_namespaces(&self) -> Result<Vec<Namespace>, StoreError> {
        let rows = fetch_all(
            self,
            Sql::new("SELECT DISTINCT namespace FROM functions ORDER BY namespace"),
        )
        .await?;
        rows.iter()
            .map(|row| {
                Namespace::parse(&row.text("namespace")?)
                    .map_err(|e| StoreError::Backend(format!("decode namespace: {e}")))
            })
            .collect()
    }

    async fn delete_function(
        &self,
        namespace: &Namespace,
        name: &FunctionName,
    ) -> Result<bool, StoreError> {
        // Versions go with it (ON DELETE CASCADE).
        let deleted = execute(
            self,
            Sql::new("DELETE FROM functions WHERE namespace = $1 AND name = $2")
                .bind(namespace.as_str())
                .bind(name.as_str()),
        )
        .await?;
        Ok(deleted > 0)
    }
}
