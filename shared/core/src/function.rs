//! Functions: the deployable unit, its runtime, code reference and limits.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::checksum::Checksum;
use crate::ids::FunctionId;
use crate::names::{FunctionName, Namespace};

/// A limit: a sustained rate plus a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RateLimit {
    /// Sustained requests per second (≥ 1).
    pub per_second: u32,
    /// Requests admitted at once from idle (≥ 1).
    pub burst: u32,
}

/// The language runtime a function runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Runtime {
    /// `handle(event, context)` in a Python module; handler `module.function`.
    Python3,
    /// An export of a CommonJS module; handler `file.export`.
    Nodejs,
    /// An executable in the bundle: JSON payload on stdin, result on stdout.
    Exec,
    /// An OCI image ([`Function::image`]): its own command, run per invocation (`exec`) or as
    /// a long-lived HTTP server (`http`).
    Image,
}

impl Runtime {
    /// The wire name (`python3`, `nodejs`, `exec`).
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Python3 => "python3",
            Runtime::Nodejs => "nodejs",
            Runtime::Exec => "exec",
            Runtime::Image => "image",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "python3" => Some(Runtime::Python3),
            "nodejs" => Some(Runtime::Nodejs),
            "exec" => Some(Runtime::Exec),
            "image" => Some(Runtime::Image),
            _ => None,
        }
    }

    /// The file (relative to the code root) that a handler names, e.g. `main.py` for
    /// `main.handle`. Checks the handler's shape for this runtime. An image function has no
    /// handler (its image says what runs) and no file: its code holds [`IMAGE_CODE_FILE`].
    pub fn handler_file(self, handler: &str) -> Result<String, ConfigError> {
        let bad = || ConfigError::Handler {
            runtime: self.as_str(),
            handler: handler.chars().take(80).collect(),
        };
        let ident = |s: &str| {
            let mut chars = s.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        match self {
            Runtime::Python3 => {
                let (module, func) = handler.rsplit_once('.').ok_or_else(bad)?;
                if !ident(func) || module.is_empty() || !module.split('.').all(ident) {
                    return Err(bad());
                }
                Ok(format!("{}.py", module.replace('.', "/")))
            }
            Runtime::Nodejs => {
                let (file, export) = handler.rsplit_once('.').ok_or_else(bad)?;
                let file_ok = !file.is_empty()
                    && file.split('/').all(|seg| {
                        !seg.is_empty()
                            && seg != ".."
                            && seg != "."
                            && seg
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    });
                if !file_ok || !ident(export) {
                    return Err(bad());
                }
                Ok(format!("{file}.js"))
            }
            Runtime::Image if handler.is_empty() => Ok(IMAGE_CODE_FILE.to_owned()),
            Runtime::Image => Err(bad()),
            Runtime::Exec => {
                let ok = !handler.is_empty()
                    && handler.len() <= 255
                    && !handler.starts_with('/')
                    && handler.split('/').all(|seg| {
                        !seg.is_empty()
                            && seg != ".."
                            && seg != "."
                            && seg
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                    });
                if ok {
                    Ok(handler.to_owned())
                } else {
                    Err(bad())
                }
            }
        }
    }
}

/// The one file of the code of an image function pulled from a registry: its [`ImageSpec`]
/// (so every version has content-addressed code, and the code changes with the image).
pub const IMAGE_CODE_FILE: &str = "image.json";
/// The port an `http` image's server listens on when the function names none.
pub const DEFAULT_IMAGE_PORT: u16 = 8080;

/// How an image function is talked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ImageMode {
    /// The image's command runs per invocation: the payload on stdin, the JSON result on
    /// stdout, stderr to the logs.
    #[default]
    Exec,
    /// The image's command is a server listening on `$PORT` on the sandbox's loopback; each
    /// invocation is a `POST /` with the payload, the response body is the result.
    Http,
}

impl ImageMode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageMode::Exec => "exec",
            ImageMode::Http => "http",
        }
    }
}

/// The image of a function of runtime [`Runtime::Image`], as pinned at deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageSpec {
    /// Where nodes pull it from, pinned: `host[:port]/repo@sha256:<hex>`. `None` when the
    /// image is the version's uploaded code (an OCI image layout), for sites with no registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// What the deploy named (a tag, say), kept for people; never pulled again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<String>,
    /// The manifest digest that runs (`sha256:<hex>`).
    pub digest: String,
    /// How invocations reach it.
    #[serde(default)]
    pub mode: ImageMode,
    /// `http` mode: the port its server listens on (`PORT`; default 8080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl ImageSpec {
    /// The port of an `http` image's server.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_IMAGE_PORT)
    }
}

/// Where a function's code is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CodeInfo {
    /// SHA-256 of the stored (normalised tar) code archive.
    pub checksum: Checksum,
    /// Size of the stored archive in bytes.
    pub size: u64,
    /// How the code was supplied (`inline`).
    pub source_type: String,
}

/// Default invocation timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Largest accepted timeout (15 minutes, like Lambda).
pub const MAX_TIMEOUT_MS: u64 = 900_000;
/// Default memory limit.
pub const DEFAULT_MEMORY_MB: u32 = 128;
/// Accepted memory limits.
pub const MEMORY_MB_RANGE: std::ops::RangeInclusive<u32> = 64..=4096;
/// Default per-function concurrency (across the cluster).
pub const DEFAULT_MAX_CONCURRENCY: u32 = 10;
/// Largest per-function concurrency.
pub const MAX_CONCURRENCY: u32 = 1000;
/// Largest `retries`.
pub const MAX_RETRIES: u32 = 10;
/// Largest `min_warm`.
pub const MAX_MIN_WARM: u32 = 32;
/// Largest `rate_limit.per_second` and `rate_limit.burst`.
pub const MAX_RATE_LIMIT: u32 = 1_000_000;

/// Limits and settings of a function version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FunctionConfig {
    /// Wall-clock limit of one invocation.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Memory limit of the sandbox (swap equal: none beyond it).
    #[serde(default = "default_memory")]
    pub memory_mb: u32,
    /// Invocations of this function running at once across the whole cluster.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: u32,
    /// Extra attempts of an async invocation whose handler failed (`handler_error`, `timeout`,
    /// `oom`, `invalid_result`); a crashed sandbox is always retried until the bus's
    /// `max_deliver`.
    #[serde(default)]
    pub retries: u32,
    /// Sandboxes kept warm once a node has seen this function.
    #[serde(default)]
    pub min_warm: u32,
    /// Environment variables visible to the function (and nothing else of the node's).
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Invocations of this function admitted across all gateways (`None`: no function limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// The edge regions the function is placed in: an edge gateway that follows the hub
    /// serves it only if its region is listed (`None`: every region). The hub always has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
    /// CPU weight of the sandbox against the node's other sandboxes when the CPU is busy
    /// (cgroup `cpu.shares`, 2..=262144; `None`: the default, 1024). Idle CPU is never held
    /// back by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u32>,
    /// Disk bandwidth of the sandbox, read and write each, in bytes per second (cgroup block
    /// I/O throttle on the device holding the node's sandboxes and code; ≥ 65536; `None`:
    /// unthrottled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_io_bps: Option<u64>,
    /// The priority of the function's invocations, and the highest one a caller may ask for
    /// per invocation (`high`, `normal` or `low`; see [`crate::priority`]).
    #[serde(default, skip_serializing_if = "crate::Priority::is_normal")]
    pub priority: crate::Priority,
    /// Where the records of finished async invocations are sent (see [`crate::destination`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destinations: Option<crate::destination::Destinations>,
}

/// `cpu_shares`: the sandbox's CPU weight relative to other sandboxes when the CPU is busy
/// (cgroup `cpu.shares`; 1024 is one share of the default weight).
pub const CPU_SHARES_RANGE: std::ops::RangeInclusive<u32> = 2..=262_144;
/// `disk_io_bps`: the least a sandbox may be throttled to, bytes per second (64 KiB/s).
pub const MIN_DISK_IO_BPS: u64 = 64 * 1024;

/// Regions a function may name in `config.regions`, at most.
pub const MAX_REGIONS: usize = 64;

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_memory() -> u32 {
    DEFAULT_MEMORY_MB
}
fn default_concurrency() -> u32 {
    DEFAULT_MAX_CONCURRENCY
}

impl Default for FunctionConfig {
    fn default() -> Self {
        Self {
            timeout_ms: DEFAULT_TIMEOUT_MS,
            memory_mb: DEFAULT_MEMORY_MB,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            retries: 0,
            min_warm: 0,
            environment: BTreeMap::new(),
            rate_limit: None,
            regions: None,
            cpu_shares: None,
            disk_io_bps: None,
            priority: crate::Priority::Normal,
            destinations: None,
        }
    }
}

/// A setting outside its accepted range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A numeric limit out of range.
    #[error("config.{field} = {value} is out of range ({range})")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The accepted range, for the message.
        range: &'static str,
    },
    /// An environment variable name that is not `[A-Za-z_][A-Za-z0-9_]*` or is reserved.
    #[error(
        "config.environment key {0:?} is invalid: use [A-Za-z_][A-Za-z0-9_]* and no FNMESH_ prefix"
    )]
    EnvKey(String),
    /// The environment is too large.
    #[error("config.environment is too large (max 64 entries, 32 KiB in total)")]
    EnvTooLarge,
    /// A region list with an invalid or repeated name, or too many names.
    #[error("config.regions is invalid: {0}")]
    Regions(String),
    /// A destination that cannot be used.
    #[error(transparent)]
    Destinations(#[from] crate::destination::DestinationError),
    /// A handler that does not fit its runtime.
    #[error("handler {handler:?} is invalid for runtime {runtime}")]
    Handler {
        /// The runtime.
        runtime: &'static str,
        /// The handler given.
        handler: String,
    },
}

impl FunctionConfig {
    /// Whether the function is placed in `region` (see [`Self::regions`]).
    pub fn placed_in(&self, region: &str) -> bool {
        self.regions
            .as_ref()
            .is_none_or(|regions| regions.iter().any(|r| r == region))
    }

    /// Checks every limit.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(ConfigError::OutOfRange {
                field: "timeout_ms",
                value: self.timeout_ms,
                range: "1..=900000",
            });
        }
        if !MEMORY_MB_RANGE.contains(&self.memory_mb) {
            return Err(ConfigError::OutOfRange {
                field: "memory_mb",
                value: self.memory_mb.into(),
                range: "64..=4096",
            });
        }
        if self.max_concurrency == 0 || self.max_concurrency > MAX_CONCURRENCY {
            return Err(ConfigError::OutOfRange {
                field: "max_concurrency",
                value: self.max_concurrency.into(),
                range: "1..=1000",
            });
        }
        if self.retries > MAX_RETRIES {
            return Err(ConfigError::OutOfRange {
                field: "retries",
                value: self.retries.into(),
                range: "0..=10",
            });
        }
        if self.min_warm > MAX_MIN_WARM || self.min_warm > self.max_concurrency {
            return Err(ConfigError::OutOfRange {
                field: "min_warm",
                value: self.min_warm.into(),
                range: "0..=min(32, max_concurrency)",
            });
        }
        if let Some(limit) = self.rate_limit {
            for (field, value) in [
                ("rate_limit.per_second", limit.per_second),
                ("rate_limit.burst", limit.burst),
            ] {
                if value == 0 || value > MAX_RATE_LIMIT {
                    return Err(ConfigError::OutOfRange {
                        field,
                        value: value.into(),
                        range: "1..=1000000",
                    });
                }
            }
        }
        if let Some(shares) = self.cpu_shares {
            if !CPU_SHARES_RANGE.contains(&shares) {
                return Err(ConfigError::OutOfRange {
                    field: "cpu_shares",
                    value: shares.into(),
                    range: "2..=262144",
                });
            }
        }
        if let Some(bps) = self.disk_io_bps {
            if bps < MIN_DISK_IO_BPS {
                return Err(ConfigError::OutOfRange {
                    field: "disk_io_bps",
                    value: bps,
                    range: "65536..",
                });
            }
        }
        if let Some(destinations) = &self.destinations {
            destinations.validate()?;
        }
        if let Some(regions) = &self.regions {
            if regions.len() > MAX_REGIONS {
                return Err(ConfigError::Regions(format!(
                    "at most {MAX_REGIONS} regions"
                )));
            }
            let mut seen = std::collections::BTreeSet::new();
            for region in regions {
                crate::subjects::BusPrefix::parse(region).map_err(|_| {
                    ConfigError::Regions(format!(
                        "{:?} is not a region name ([a-z0-9-], 1..=32, not starting with '-')",
                        region.chars().take(40).collect::<String>()
                    ))
                })?;
                if !seen.insert(region) {
                    return Err(ConfigError::Regions(format!("{region:?} is named twice")));
                }
            }
        }
        let total: usize = self
            .environment
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        if self.environment.len() > 64 || total > 32 * 1024 {
            return Err(ConfigError::EnvTooLarge);
        }
        for (key, value) in &self.environment {
            let mut chars = key.chars();
            let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !key.to_ascii_uppercase().starts_with("FNMESH_")
                && !value.contains('\0');
            if !ok {
                return Err(ConfigError::EnvKey(key.chars().take(80).collect()));
            }
        }
        Ok(())
    }
}

/// One immutable version of a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Function {
    /// Stable across versions.
    pub id: FunctionId,
    /// The tenant it belongs to.
    pub namespace: Namespace,
    /// Unique within the namespace.
    pub name: FunctionName,
    /// 1 on create, n+1 on each update.
    pub version: u32,
    /// The runtime.
    pub runtime: Runtime,
    /// What to call (runtime specific, see [`Runtime::handler_file`]).
    pub handler: String,
    /// Stored code.
    pub code: CodeInfo,
    /// The image of an `image` function (`None` for every other runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// Limits.
    pub config: FunctionConfig,
    /// Free-form labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// When version 1 was created.
    pub created_at: DateTime<Utc>,
    /// When this version was created.
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_files() {
        assert_eq!(
            Runtime::Python3.handler_file("main.handle").unwrap(),
            "main.py"
        );
        assert_eq!(
            Runtime::Python3.handler_file("pkg.mod.handle").unwrap(),
            "pkg/mod.py"
        );
        assert_eq!(
            Runtime::Nodejs.handler_file("index.handler").unwrap(),
            "index.js"
        );
        assert_eq!(Runtime::Exec.handler_file("bin/run").unwrap(), "bin/run");
        for (rt, h) in [
            (Runtime::Python3, "main"),
            (Runtime::Python3, "../x.handle"),
            (Runtime::Nodejs, "../index.handler"),
            (Runtime::Exec, "/bin/sh"),
            (Runtime::Exec, "../x"),
            (Runtime::Exec, ""),
        ] {
            assert!(rt.handler_file(h).is_err(), "{h}");
        }
    }

    #[test]
    fn placement_defaults_to_every_region() {
        let every: FunctionConfig = serde_json::from_str("{}").unwrap();
        assert!(every.placed_in("eu") && every.placed_in("hub"));
        assert!(!serde_json::to_string(&every).unwrap().contains("regions"));
        let some: FunctionConfig = serde_json::from_str(r#"{"regions":["eu","us-2"]}"#).unwrap();
        assert!(some.validate().is_ok());
        assert!(some.placed_in("eu") && some.placed_in("us-2") && !some.placed_in("ap"));
        let none: FunctionConfig = serde_json::from_str(r#"{"regions":[]}"#).unwrap();
        assert!(none.validate().is_ok() && !none.placed_in("eu"));
        let many = FunctionConfig {
            regions: Some((0..=MAX_REGIONS).map(|i| format!("r{i}")).collect()),
            ..FunctionConfig::default()
        };
        assert!(many.validate().is_err());
    }

    #[test]
    fn config_defaults_and_ranges() {
        let c: FunctionConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c.timeout_ms, 30_000);
        assert_eq!(c.memory_mb, 128);
        assert_eq!(c.max_concurrency, 10);
        assert!(c.validate().is_ok());
        for bad in [
            r#"{"timeout_ms":900001}"#,
            r#"{"timeout_ms":0}"#,
            r#"{"memory_mb":63}"#,
            r#"{"memory_mb":4097}"#,
            r#"{"max_concurrency":0}"#,
            r#"{"environment":{"FNMESH_X":"1"}}"#,
            r#"{"environment":{"a b":"1"}}"#,
            r#"{"rate_limit":{"per_second":0,"burst":1}}"#,
            r#"{"rate_limit":{"per_second":1,"burst":0}}"#,
            r#"{"rate_limit":{"per_second":1000001,"burst":1}}"#,
            r#"{"rate_limit":{"per_second":1,"burst":1000001}}"#,
            r#"{"regions":["eu","Eu"]}"#,
            r#"{"regions":["eu","eu"]}"#,
            r#"{"regions":["-eu"]}"#,
            r#"{"regions":["eu.x"]}"#,
        ] {
            let c: FunctionConfig = serde_json::from_str(bad).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<FunctionConfig>(r#"{"nope":1}"#).is_err());
        let c: FunctionConfig =
            serde_json::from_str(r#"{"rate_limit":{"per_second":50,"burst":10}}"#).unwrap();
        assert_eq!(
            c.rate_limit,
            Some(RateLimit {
                per_second: 50,
                burst: 10
            })
        );
        assert!(c.validate().is_ok());
        assert!(
            !serde_json::to_string(&FunctionConfig::default())
                .unwrap()
                .contains("rate_limit"),
            "no limit, no field: stored configs stay as they were"
        );
    }
}
