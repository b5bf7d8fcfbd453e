//! Backend selection by configuration: which metadata store, code store and rate limiter a
//! gateway uses. Each setting parses into an enum whose error names the setting and the
//! accepted forms; the choice is logged at start (without credentials).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use fnmesh_code::local::LocalCodeStore;
use fnmesh_code::s3::{S3CodeStore, S3Config};
use fnmesh_code::CodeStore;
use fnmesh_ratelimit::local::LocalRateLimiter;
use fnmesh_ratelimit::redis::{FailurePolicy, RedisRateLimiter};
use fnmesh_ratelimit::RateLimiter;
use fnmesh_store::postgres::PostgresStore;
use fnmesh_store::sqlite::SqliteStore;
use fnmesh_store::MetadataStore;

/// `FNMESH_DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite://<path>` (relative paths are relative to the working directory).
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…`.
    Postgres(String),
}

impl DatabaseUrl {
    /// Parses the setting.
    pub fn parse(value: &str) -> Result<Self> {
        if let Some(path) = value.strip_prefix("sqlite://") {
            if path.is_empty() {
                bail!("FNMESH_DATABASE_URL={value:?}: sqlite:// needs a file path, e.g. sqlite://./.fnmesh/fnmesh.db");
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            return Ok(Self::Postgres(value.to_owned()));
        }
        bail!(
            "FNMESH_DATABASE_URL={:?} is not supported: use postgres://user@host:port/db or sqlite://<path>",
            redact(value)
        )
    }

    /// For logs: the kind and a credential-free location.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(p) => format!("sqlite ({})", p.display()),
            Self::Postgres(url) => format!("postgres ({})", redact(url)),
        }
    }
}

/// `FNMESH_CODE_STORE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeStoreLocation {
    /// A local directory.
    Dir(PathBuf),
    /// `s3://<bucket>`, configured by `FNMESH_S3_*` and the standard AWS variables.
    S3(String),
}

impl CodeStoreLocation {
    /// Parses the setting.
    pub fn parse(value: &str) -> Result<Self> {
        if let Some(bucket) = value.strip_prefix("s3://") {
            let bucket = bucket.trim_end_matches('/');
            let ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !ok {
                bail!("FNMESH_CODE_STORE={value:?}: the bucket name must be 3-63 lowercase letters, digits, '-' or '.'");
            }
            return Ok(Self::S3(bucket.to_owned()));
        }
        if value.contains("://") {
            bail!("FNMESH_CODE_STORE={value:?} is not supported: use s3://<bucket> or a directory path");
        }
        if value.is_empty() {
            bail!("FNMESH_CODE_STORE is empty: use s3://<bucket> or a directory path");
        }
        Ok(Self::Dir(PathBuf::from(value)))
    }

    fn describe(&self) -> String {
        match self {
            Self::Dir(p) => format!("local directory ({})", p.display()),
            Self::S3(b) => format!("s3 (bucket {b})"),
        }
    }
}

/// `FNMESH_RATE_LIMIT_FAILURE`.
pub fn parse_failure_policy(value: &str) -> Result<FailurePolicy> {
    value
        .parse::<FailurePolicy>()
        .map_err(|e| anyhow::anyhow!("FNMESH_RATE_LIMIT_FAILURE={value:?}: {e}"))
}

/// Hides the password of a URL.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
            } else {
                url.to_owned()
            }
        }
        _ => url.to_owned(),
    }
}

/// Opens the metadata store; Postgres migrations run only when `migrate` is set.
pub async fn open_store(url: &DatabaseUrl, migrate: bool) -> Result<Arc<dyn MetadataStore>> {
    tracing::info!(backend = %url.describe(), "metadata store");
    Ok(match url {
        DatabaseUrl::Sqlite(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            Arc::new(
                SqliteStore::open(path)
                    .await
                    .context("opening the SQLite metadata store")?,
            )
        }
        DatabaseUrl::Postgres(url) => {
            let store = PostgresStore::connect(url)
                .await
                .context("connecting to PostgreSQL (FNMESH_DATABASE_URL)")?;
            if migrate {
                store
                    .migrate()
                    .await
                    .context("applying PostgreSQL migrations")?;
                tracing::info!("postgres migrations applied");
            }
            Arc::new(store)
        }
    })
}

/// Opens the code store.
pub async fn open_code_store(location: &CodeStoreLocation) -> Result<Arc<dyn CodeStore>> {
    tracing::info!(backend = %location.describe(), "code store");
    Ok(match location {
        CodeStoreLocation::Dir(dir) => Arc::new(
            LocalCodeStore::open(dir)
                .await
                .with_context(|| format!("opening the code directory {}", dir.display()))?,
        ),
        CodeStoreLocation::S3(bucket) => {
            let config = S3Config::from_env(bucket.clone())?;
            Arc::new(S3CodeStore::new(config).context("configuring the S3 code store")?)
        }
    })
}

/// Opens the rate limiter: Redis when a URL is given, else in memory.
pub async fn open_limiter(
    redis_url: Option<&str>,
    policy: FailurePolicy,
) -> Result<Arc<dyn RateLimiter>> {
    Ok(match redis_url {
        Some(url) => {
            tracing::info!(backend = %format!("redis ({})", redact(url)), policy = ?policy, "rate limiter");
            Arc::new(
                RedisRateLimiter::connect(url, policy)
                    .await
                    .context("connecting to Redis (FNMESH_REDIS_URL)")?,
            )
        }
        None => {
            tracing::info!(backend = "in-memory (governor)", "rate limiter");
            Arc::new(LocalRateLimiter::new())
        }
    })
}

/// The default SQLite URL inside a data dir.
pub fn default_database(data_dir: &Path) -> DatabaseUrl {
    DatabaseUrl::Sqlite(data_dir.join("fnmesh.db"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        assert_eq!(
            DatabaseUrl::parse("sqlite:///tmp/x.db").unwrap(),
            DatabaseUrl::Sqlite("/tmp/x.db".into())
        );
        assert!(matches!(
            DatabaseUrl::parse("postgres://u:p@h/db").unwrap(),
            DatabaseUrl::Postgres(_)
        ));
        let err = DatabaseUrl::parse("mysql://u:secret@h/db")
            .unwrap_err()
            .to_string();
        assert!(err.contains("FNMESH_DATABASE_URL"), "{err}");
        assert!(err.contains("postgres://"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn code_store_locations() {
        assert_eq!(
            CodeStoreLocation::parse("s3://fn-code").unwrap(),
            CodeStoreLocation::S3("fn-code".into())
        );
        assert_eq!(
            CodeStoreLocation::parse("./code").unwrap(),
            CodeStoreLocation::Dir("./code".into())
        );
        let err = CodeStoreLocation::parse("gs://x").unwrap_err().to_string();
        assert!(
            err.contains("FNMESH_CODE_STORE") && err.contains("s3://"),
            "{err}"
        );
        assert!(CodeStoreLocation::parse("s3://A").is_err());
    }

    #[test]
    fn failure_policy_and_redaction() {
        assert!(parse_failure_policy("fail_open").is_ok());
        let err = parse_failure_policy("maybe").unwrap_err().to_string();
        assert!(err.contains("FNMESH_RATE_LIMIT_FAILURE"));
        assert_eq!(
            redact("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
