//! Function management: one module per operation, plus the request parsing they share.

use std::collections::BTreeMap;

use base64::Engine as _;
use fnmesh_core::archive;
use fnmesh_core::{CodeInfo, FunctionConfig, FunctionName, Runtime};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::state::State;

pub(crate) mod aliases;
pub(crate) mod create;
pub(crate) mod delete;
pub(crate) mod get;
pub(crate) mod image;
pub(crate) mod list;
pub(crate) mod logs;
pub(crate) mod quota;
pub(crate) mod update;
pub(crate) mod versions;

/// The only `code.source_type` accepted today.
pub(crate) const SOURCE_TYPE_INLINE: &str = "inline";
/// Most metadata labels per function.
const MAX_METADATA_ENTRIES: usize = 64;
/// Most metadata bytes (keys + values) per function.
const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Default page size of listings.
pub(crate) const DEFAULT_PAGE_LIMIT: u32 = 50;
/// Largest page size of listings.
pub(crate) const MAX_PAGE_LIMIT: u32 = 1000;

/// `code` of a create or update body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(crate) struct CodeBody {
    /// Base64 of a zip, tar.gz, tar or single file.
    pub source: String,
    /// How the code is supplied; only `inline`.
    #[serde(default)]
    pub source_type: Option<String>,
}

impl CodeBody {
    /// The uploaded bytes: `source_type` must be `inline` (or absent), `source` base64.
    pub(crate) fn decode(&self) -> Result<Vec<u8>, ApiError> {
        let source_type = self.source_type.as_deref().unwrap_or(SOURCE_TYPE_INLINE);
        if source_type != SOURCE_TYPE_INLINE {
            return Err(ApiError::InvalidJson(format!(
                "code.source_type {:?} is not supported: use \"inline\"",
                source_type.chars().take(40).collect::<String>()
            )));
        }
        base64::engine::general_purpose::STANDARD
            .decode(self.source.trim())
            .map_err(|e| ApiError::InvalidBase64(format!("code.source is not valid base64: {e}")))
    }
}

/// The code of an upload: inline (`code.source`, base64 in the JSON body) or an archive
/// spooled to disk (a raw or multipart upload, [`crate::body::Upload`]).
pub(crate) enum Code<'a> {
    /// Base64 in the JSON body.
    Inline(&'a CodeBody),
    /// A file the upload was spooled to.
    Spooled(&'a std::path::Path),
}

impl<'a> Code<'a> {
    /// The upload's code, if it has one: `code` of the JSON fields or the spooled archive,
    /// not both.
    pub(crate) fn of(
        inline: Option<&'a CodeBody>,
        spooled: Option<&'a tempfile::TempPath>,
    ) -> Result<Option<Self>, ApiError> {
        match (inline, spooled) {
            (Some(_), Some(_)) => Err(ApiError::BadRequest(
                "the code is uploaded as the body: the fields must not have `code` too".into(),
            )),
            (Some(body), None) => Ok(Some(Self::Inline(body))),
            (None, Some(path)) => Ok(Some(Self::Spooled(path))),
            (None, None) => Ok(None),
        }
    }

    /// The whole upload in memory (image archives, whose layers are read at random).
    pub(crate) async fn bytes(&self) -> Result<Vec<u8>, ApiError> {
        match self {
            Self::Inline(body) => body.decode(),
            Self::Spooled(path) => tokio::fs::read(path)
                .await
                .map_err(|e| ApiError::Internal(format!("reading the spooled upload: {e}"))),
        }
    }
}

/// `?limit=&cursor=` of listings.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Page size (1..=1000, default 50).
    pub limit: Option<u32>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    /// The validated page size.
    pub(crate) fn limit(&self) -> Result<u32, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_PAGE_LIMIT),
            Some(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::InvalidQuery(format!(
                "limit {n} is out of range (1..={MAX_PAGE_LIMIT})"
            ))),
        }
    }
}

/// Parses a JSON body: malformed JSON or a wrong shape is `invalid_json`.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(format!("invalid body: {e}")))
}

/// Validates a function name from a body, path or query.
pub(crate) fn parse_name(raw: &str) -> Result<FunctionName, ApiError> {
    Ok(FunctionName::parse(raw)?)
}

/// Parses a runtime's wire name.
pub(crate) fn parse_runtime(raw: &str) -> Result<Runtime, ApiError> {
    Runtime::parse(raw).ok_or_else(|| {
        ApiError::InvalidRuntime(format!(
            "unknown runtime {:?}: expected python3, nodejs, exec or image",
            raw.chars().take(40).collect::<String>()
        ))
    })
}

/// Builds a config from `base` overlaid with the fields of `patch`, then validates it.
/// Unknown fields and out-of-range values are `invalid_config`.
pub(crate) fn merge_config(
    base: &FunctionConfig,
    patch: Option<Value>,
) -> Result<FunctionConfig, ApiError> {
    let config = match patch {
        None | Some(Value::Null) => base.clone(),
        Some(Value::Object(fields)) => {
            let mut merged = match serde_json::to_value(base) {
                Ok(Value::Object(map)) => map,
                _ => {
                    return Err(ApiError::Internal(
                        "config does not serialise to an object".into(),
                    ))
                }
            };
            merged.extend(fields);
            serde_json::from_value(Value::Object(merged))
                .map_err(|e| ApiError::InvalidConfig(format!("invalid config: {e}")))?
        }
        Some(_) => {
            return Err(ApiError::InvalidConfig(
                "config must be a JSON object".into(),
            ))
        }
    };
    config.validate()?;
    Ok(config)
}

/// Checks the webhook destinations of `config` against the operator's allowlist
/// (`invalid_config` naming the host): a deploy is refused rather than every delivery failing.
pub(crate) fn check_destinations(state: &State, config: &FunctionConfig) -> Result<(), ApiError> {
    let Some(destinations) = &config.destinations else {
        return Ok(());
    };
    for raw in destinations.webhook_urls() {
        let url = fnmesh_core::destination::WebhookUrl::parse(raw)
            .map_err(|e| ApiError::InvalidConfig(format!("config.destinations: {e}")))?;
        state
            .config
            .destinations
            .allowlist
            .check_url(&url)
            .map_err(|e| ApiError::InvalidConfig(format!("config.destinations: {e}")))?;
    }
    Ok(())
}

/// Checks metadata stays within its limits.
pub(crate) fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if metadata.len() > MAX_METADATA_ENTRIES || bytes > MAX_METADATA_BYTES {
        return Err(ApiError::InvalidMetadata(format!(
            "metadata is too large (max {MAX_METADATA_ENTRIES} entries, {MAX_METADATA_BYTES} bytes)"
        )));
    }
    if metadata.keys().any(|k| k.is_empty()) {
        return Err(ApiError::InvalidMetadata(
            "metadata keys must not be empty".into(),
        ));
    }
    Ok(())
}

/// Decodes, normalises and stores uploaded code; `handler_file` must be in it. The stored
/// form is the normalized tar, gzip-compressed; a spooled upload is read from its file.
pub(crate) async fn store_code(
    state: &State,
    code: &Code<'_>,
    handler_file: String,
) -> Result<CodeInfo, ApiError> {
    enum Source {
        Bytes(Vec<u8>),
        File(std::path::PathBuf),
    }
    let source = match code {
        Code::Inline(body) => Source::Bytes(body.decode()?),
        Code::Spooled(path) => Source::File(path.to_path_buf()),
    };
    let limits = state.config.archive;
    let _permit = state
        .normalize_permits
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(format!("normalisation permits closed: {e}")))?;
    let started = std::time::Instant::now();
    // Normalized into a temporary file and stored from it a piece at a time: neither the
    // upload nor its stored form is ever held in memory whole.
    let (stored, source_bytes) = tokio::task::spawn_blocking(move || {
        let staging = std::env::temp_dir();
        let packing = archive::Packing::TarGz;
        let stored = tempfile::Builder::new()
            .prefix("fnmesh-stored-code-")
            .tempfile_in(&staging)?;
        let out = std::io::BufWriter::new(stored.reopen()?);
        let (out, source_bytes) = match source {
            Source::Bytes(bytes) => archive::normalize_to(
                std::io::Cursor::new(&bytes),
                &handler_file,
                &limits,
                &staging,
                packing,
                out,
            )
            .map(|out| (out, bytes.len() as u64)),
            Source::File(path) => {
                let file = std::fs::File::open(&path)?;
                let len = file.metadata()?.len();
                archive::normalize_to(file, &handler_file, &limits, &staging, packing, out)
                    .map(|out| (out, len))
            }
        }?;
        out.into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        Ok::<_, archive::ArchiveError>((stored, source_bytes))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("code normalisation task failed: {e}")))??;
    let size = stored
        .as_file()
        .metadata()
        .map_err(|e| ApiError::Internal(format!("the normalized code's size: {e}")))?
        .len();
    if size > fnmesh_code::MAX_BLOB_BYTES as u64 {
        return Err(ApiError::InvalidArchive(format!(
            "the code is {size} bytes once normalized and compressed; the code store keeps at \
             most {} bytes",
            fnmesh_code::MAX_BLOB_BYTES
        )));
    }
    let checksum = state.backends.code.put_file(stored.path()).await?;
    tracing::info!(
        code.checksum = %checksum,
        code.source_bytes = source_bytes,
        code.stored_bytes = size,
        code.normalize_ms = started.elapsed().as_millis() as u64,
        "code stored"
    );
    Ok(CodeInfo {
        checksum,
        size,
        source_type: SOURCE_TYPE_INLINE.to_owned(),
    })
}
