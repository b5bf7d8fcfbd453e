//! `fnmesh migrate`: applies the PostgreSQL schema migrations (`migrations/postgres/`).

use anyhow::{bail, Context, Result};
use fnmesh_store::postgres::PostgresStore;

use crate::backends::{redact, DatabaseUrl};

pub async fn run(database_url: &str) -> Result<()> {
    match DatabaseUrl::parse(database_url)? {
        DatabaseUrl::Postgres(url) => {
            let store = PostgresStore::connect(&url)
                .await
                .with_context(|| format!("connecting to {}", redact(&url)))?;
            store.migrate().await.context("applying migrations")?;
            store.close().await;
            println!("migrations applied to {}", redact(&url));
            Ok(())
        }
        DatabaseUrl::Sqlite(_) => {
            bail!("SQLite databases are migrated automatically when fnmesh opens them")
        }
    }
}
