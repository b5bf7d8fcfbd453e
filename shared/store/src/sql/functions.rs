//! [`FunctionStore`] on any [`SqlEngine`]: functions and their immutable versions.

use async_trait::async_trait;

use super::{execute, fetch_all, fetch_optional, fetch_page, Listing, Sql, SqlEngine, SqlRow};
use crate::common::{
    clamp_limit, from_json, function_cursor, function_label, is_unique_violation, FUNCTION_CURSOR,
};
use crate::{FunctionStore, Page, StoreError};
use chrono::{DateTime, Utc};
use fnmesh_core::alias::{Alias, Routing};
use fnmesh_core::function::Function;
use fnmesh_core::names::{AliasName, FunctionName, Namespace};

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

    async fn put_alias(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &AliasName,
        routing: &Routing,
        at: DateTime<Utc>,
    ) -> Result<Alias, StoreError> {
        replace_alias(self, namespace, function, name, at, |current| {
            let (previous, revision, created_at) = match current {
                // The same target again: nothing changes (its previous stays the rollback).
                Some(alias) if &alias.routing == routing => return Ok(None),
                Some(alias) => (Some(alias.routing), alias.revision + 1, alias.created_at),
                None => (None, 1, at),
            };
            Ok(Some(Alias {
                namespace: namespace.clone(),
                function: function.clone(),
                name: name.clone(),
                routing: routing.clone(),
                previous,
                revision,
                created_at,
                updated_at: at,
            }))
        })
        .await
    }

    async fn rollback_alias(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &AliasName,
        at: DateTime<Utc>,
    ) -> Result<Alias, StoreError> {
        let label = alias_label(namespace, function, name);
        replace_alias(self, namespace, function, name, at, |current| {
            let alias = current.ok_or_else(|| StoreError::NotFound(label.clone()))?;
            let previous = alias.previous.clone().ok_or_else(|| {
                StoreError::Conflict(format!("{label} has no previous target to roll back to"))
            })?;
            Ok(Some(Alias {
                routing: previous,
                previous: Some(alias.routing),
                revision: alias.revision + 1,
                updated_at: at,
                ..alias
            }))
        })
        .await
    }

    async fn get_alias(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &AliasName,
    ) -> Result<Option<Alias>, StoreError> {
        let row = fetch_optional(
            self,
            Sql::new(
                "SELECT body::text AS body FROM function_aliases \
                 WHERE namespace = $1 AND function = $2 AND name = $3",
            )
            .bind(namespace.as_str())
            .bind(function.as_str())
            .bind(name.as_str()),
        )
        .await?;
        row.map(|row| from_json(&row.text("body")?)).transpose()
    }

    async fn list_aliases(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
    ) -> Result<Vec<Alias>, StoreError> {
        let rows = fetch_all(
            self,
            Sql::new(
                "SELECT body::text AS body FROM function_aliases \
                 WHERE namespace = $1 AND function = $2 ORDER BY name",
            )
            .bind(namespace.as_str())
            .bind(function.as_str()),
        )
        .await?;
        rows.iter()
            .map(|row| from_json(&row.text("body")?))
            .collect()
    }

    async fn delete_alias(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &AliasName,
    ) -> Result<bool, StoreError> {
        let deleted = execute(
            self,
            Sql::new(
                "DELETE FROM function_aliases \
                 WHERE namespace = $1 AND function = $2 AND name = $3",
            )
            .bind(namespace.as_str())
            .bind(function.as_str())
            .bind(name.as_str()),
        )
        .await?;
        Ok(deleted > 0)
    }
}

/// `function "f" alias "prod" in namespace "ns"`, for errors.
fn alias_label(namespace: &Namespace, function: &FunctionName, name: &AliasName) -> String {
    format!(
        "{} alias {:?}",
        function_label(namespace, function),
        name.as_str()
    )
}

/// Replaces an alias in one write transaction: `change` gets the alias as it is (`None` if
/// absent) and returns what to store (`None`: leave it as it is). The function's row is
/// locked first, so changes of one function's aliases run one at a time, and every version
/// the new routing names must be one of the function's (versions are never removed alone,
/// so 1 ..= latest all exist).
async fn replace_alias<E: SqlEngine>(
    engine: &E,
    namespace: &Namespace,
    function: &FunctionName,
    name: &AliasName,
    at: DateTime<Utc>,
    change: impl FnOnce(Option<Alias>) -> Result<Option<Alias>, StoreError> + Send,
) -> Result<Alias, StoreError> {
    let mut tx = engine.begin_write().await?;
    let latest = E::fetch_optional(
        &mut tx,
        // `LOCK_ROW` locks the row of the table named `i`.
        Sql::new(format!(
            "SELECT i.latest_version FROM functions i WHERE i.namespace = $1 AND i.name = $2{}",
            E::LOCK_ROW
        ))
        .bind(namespace.as_str())
        .bind(function.as_str()),
    )
    .await?
    .ok_or_else(|| StoreError::NotFound(function_label(namespace, function)))?
    .int("latest_version")?;
    let current = E::fetch_optional(
        &mut tx,
        Sql::new(
            "SELECT body::text AS body FROM function_aliases \
             WHERE namespace = $1 AND function = $2 AND name = $3",
        )
        .bind(namespace.as_str())
        .bind(function.as_str())
        .bind(name.as_str()),
    )
    .await?
    .map(|row| from_json::<Alias>(&row.text("body")?))
    .transpose()?;
    let Some(alias) = change(current.clone())? else {
        // Unchanged: dropping the transaction rolls it back.
        return current.ok_or_else(|| StoreError::NotFound(alias_label(namespace, function, name)));
    };
    if let Some(missing) = alias.routing.versions().find(|v| i64::from(*v) > latest) {
        return Err(StoreError::NotFound(format!(
            "version {missing} of {}",
            function_label(namespace, function)
        )));
    }
    E::execute(
        &mut tx,
        Sql::new(
            "INSERT INTO function_aliases (namespace, function, name, body, updated_at) \
             VALUES ($1, $2, $3, $4::jsonb, $5) \
             ON CONFLICT (namespace, function, name) \
             DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
        )
        .bind(namespace.as_str())
        .bind(function.as_str())
        .bind(name.as_str())
        .bind(E::to_json(&alias)?)
        .bind(at),
    )
    .await?;
    tx.commit().await?;
    Ok(alias)
}
