//! The production code store: blobs as objects in an S3 bucket (AWS S3 or any S3-compatible
//! server such as Garage or MinIO), at [`subjects::code_key`] (`code/sha256/<hex>`).
//!
//! The client is built by hand from [`S3Config`] — static credentials, rustls with ring, no
//! credential provider chain — so starting it does no I/O; [`CodeStore::ping`] (HeadBucket) is
//! the reachability check.
//!
//! A put always uploads (an S3 PUT replaces the object atomically, so re-storing identical bytes
//! is a no-op in effect and also repairs a damaged object) and sends the SHA-256 as
//! `x-amz-checksum-sha256`, so a server that understands it rejects bytes damaged in transit.
//! A get verifies the SHA-256 of what comes back and reports a mismatch as
//! [`CodeStoreError::Corrupt`]; a missing object is `None`, never a backend error.
//!
//! Configuration from the environment ([`S3Config::from_env`]):
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `FNMESH_S3_ENDPOINT` | `http(s)://host:port` of an S3-compatible server | AWS |
//! | `FNMESH_S3_REGION` | signing region | `us-east-1` |
//! | `FNMESH_S3_PATH_STYLE` | `true`/`false`/`1`/`0`: `host/bucket/key` addressing | true with an endpoint |
//! | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` | static credentials (both or neither) | — |

use std::fmt;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::{CodeStore, CodeStoreError};
use fnmesh_core::checksum::Checksum;
use fnmesh_core::subjects;

/// Environment variable: the endpoint of an S3-compatible server.
pub const ENV_ENDPOINT: &str = "FNMESH_S3_ENDPOINT";
/// Environment variable: the signing region.
pub const ENV_REGION: &str = "FNMESH_S3_REGION";
/// Environment variable: path-style addressing (`true`, `false`, `1`, `0`).
pub const ENV_PATH_STYLE: &str = "FNMESH_S3_PATH_STYLE";
/// Environment variable: the access key id (the standard AWS one).
pub const ENV_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// Environment variable: the secret access key (the standard AWS one).
pub const ENV_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// The region used when none is configured.
pub const DEFAULT_REGION: &str = "us-east-1";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(300);

/// An invalid S3 setting; the message names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3ConfigError {
    /// A boolean setting that is not `true`, `false`, `1` or `0`.
    #[error("invalid {var} {value:?}: expected true, false, 1 or 0")]
    InvalidBool {
        /// The variable.
        var: &'static str,
        /// What it held.
        value: String,
    },
    /// An endpoint that is not an `http://` or `https://` URL.
    #[error("invalid {var} {value:?}: expected an http:// or https:// URL")]
    InvalidEndpoint {
        /// The variable.
        var: &'static str,
        /// What it held.
        value: String,
    },
    /// One credential variable is set and its twin is not.
    #[error("{missing} is not set but {present} is: set both or neither")]
    HalfCredentials {
        /// The unset variable.
        missing: &'static str,
        /// The set one.
        present: &'static str,
    },
    /// A variable that is not valid UTF-8.
    #[error("{var} is not valid UTF-8")]
    NotUnicode {
        /// The variable.
        var: &'static str,
    },
}

/// Where and how to reach the bucket.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket holding the code.
    pub bucket: String,
    /// `http(s)://host:port` of an S3-compatible server; `None` for AWS.
    pub endpoint: Option<String>,
    /// The signing region (Garage checks it against its `s3_region`).
    pub region: String,
    /// Path-style (`host/bucket/key`) rather than virtual-hosted (`bucket.host/key`) URLs.
    pub path_style: bool,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key; never logged.
    pub secret_access_key: Option<String>,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &redacted(&self.access_key_id))
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .finish()
    }
}

impl S3Config {
    /// Reads `FNMESH_S3_ENDPOINT`, `FNMESH_S3_REGION`, `FNMESH_S3_PATH_STYLE`,
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (see the module docs).
    pub fn from_env(bucket: impl Into<String>) -> Result<Self, S3ConfigError> {
        let vars = [
            ENV_ENDPOINT,
            ENV_REGION,
            ENV_PATH_STYLE,
            ENV_ACCESS_KEY_ID,
            ENV_SECRET_ACCESS_KEY,
        ];
        let mut values = Vec::with_capacity(vars.len());
        for var in vars {
            match std::env::var(var) {
                Ok(value) => values.push((var, value)),
                Err(std::env::VarError::NotPresent) => {}
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(S3ConfigError::NotUnicode { var })
                }
            }
        }
        Self::from_lookup(bucket, |name| {
            values
                .iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| value.clone())
        })
    }

    /// [`S3Config::from_env`] over any source of variables: `lookup(name)` is the value of
    /// `name`, if set. An empty value counts as unset.
    pub fn from_lookup(
        bucket: impl Into<String>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, S3ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let endpoint = get(ENV_ENDPOINT)
            .map(|e| {
                let e = e.trim().trim_end_matches('/').to_owned();
                if e.starts_with("http://") || e.starts_with("https://") {
                    Ok(e)
                } else {
                    Err(S3ConfigError::InvalidEndpoint {
                        var: ENV_ENDPOINT,
                        value: e,
                    })
                }
            })
            .transpose()?;
        let region = get(ENV_REGION)
            .map(|r| r.trim().to_owned())
            .unwrap_or_else(|| DEFAULT_REGION.to_owned());
        let path_style = match get(ENV_PATH_STYLE) {
            Some(value) => parse_bool(ENV_PATH_STYLE, &value)?,
            None => endpoint.is_some(),
        };
        let access_key_id = get(ENV_ACCESS_KEY_ID);
        let secret_access_key = get(ENV_SECRET_ACCESS_KEY);
        match (&access_key_id, &secret_access_key) {
            (Some(_), None) => {
                return Err(S3ConfigError::HalfCredentials {
                    missing: ENV_SECRET_ACCESS_KEY,
                    present: ENV_ACCESS_KEY_ID,
                })
            }
            (None, Some(_)) => {
                return Err(S3ConfigError::HalfCredentials {
                    missing: ENV_ACCESS_KEY_ID,
                    present: ENV_SECRET_ACCESS_KEY,
                })
            }
            _ => {}
        }
        Ok(Self {
            bucket: bucket.into(),
            endpoint,
            region,
            path_style,
            access_key_id,
            secret_access_key,
        })
    }
}

/// Parses `true`/`false`/`1`/`0` (case-insensitive); an error names `var`.
pub fn parse_bool(var: &'static str, value: &str) -> Result<bool, S3ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(S3ConfigError::InvalidBool {
            var,
            value: value.to_owned(),
        }),
    }
}

/// A [`CodeStore`] in an S3 bucket.
#[derive(Clone)]
pub struct S3CodeStore {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl fmt::Debug for S3CodeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3CodeStore")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

fn invalid(message: impl fmt::Display) -> CodeStoreError {
    CodeStoreError::Backend(format!("invalid s3 config: {message}"))
}

impl S3CodeStore {
    /// Builds the client; does no I/O (use [`CodeStore::ping`] to check the bucket).
    pub fn new(config: S3Config) -> Result<Self, CodeStoreError> {
        if config.bucket.is_empty() {
            return Err(invalid("the bucket name is empty"));
        }
        if config.region.is_empty() {
            return Err(invalid("the region is empty"));
        }
        let (Some(access_key_id), Some(secret_access_key)) =
            (&config.access_key_id, &config.secret_access_key)
        else {
            return Err(invalid(format_args!(
                "no credentials: set {ENV_ACCESS_KEY_ID} and {ENV_SECRET_ACCESS_KEY}"
            )));
        };
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(config.region.clone()))
            .credentials_provider(Credentials::new(
                access_key_id,
                secret_access_key,
                None,
                None,
                "fnmesh-static",
            ))
            .force_path_style(config.path_style)
            // We verify SHA-256 ourselves; CRC trailers are not understood by every
            // S3-compatible server.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build(),
            );
        if let Some(endpoint) = &config.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(invalid(format_args!(
                    "endpoint {endpoint:?} is not an http:// or https:// URL"
                )));
            }
            builder = builder.endpoint_url(endpoint);
        }
        tracing::debug!(
            s3.bucket = %config.bucket,
            s3.endpoint = config.endpoint.as_deref().unwrap_or("aws"),
            s3.region = %config.region,
            s3.path_style = config.path_style,
            "s3 code store configured"
        );
        Ok(Self {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: config.bucket,
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The underlying S3 client (for tests and tooling that work on the bucket directly).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    fn failed<E, R>(&self, op: &str, key: &str, err: SdkError<E, R>) -> CodeStoreError
    where
        E: std::error::Error + Send + Sync + 'static,
        R: fmt::Debug,
    {
        CodeStoreError::Backend(format!(
            "s3 {op} s3://{}/{key}: {}",
            self.bucket,
            DisplayErrorContext(&err)
        ))
    }

    /// HEAD of the object: whether it exists.
    async fn head(&self, key: &str) -> Result<bool, CodeStoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            // HEAD responses have no body, so some servers' 404s carry no error code.
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(self.failed("head object", key, e)),
        }
    }
}

impl S3CodeStore {
    /// PUT of `body` (`size` bytes with SHA-256 `digest`, which the server checks) under the
    /// code key of `checksum`.
    async fn put_object(
        &self,
        checksum: &Checksum,
        size: u64,
        digest: &[u8],
        body: ByteStream,
    ) -> Result<(), CodeStoreError> {
        let key = subjects::code_key(checksum);
        let content_length = i64::try_from(size).map_err(|_| {
            CodeStoreError::Backend(format!("code blob of {size} bytes is too large"))
        })?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/octet-stream")
            .content_length(content_length)
            .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(digest))
            .body(body)
            .send()
            .await
            .map_err(|e| self.failed("put object", &key, e))?;
        tracing::debug!(code.checksum = %checksum, code.size_bytes = size, "code stored in s3");
        Ok(())
    }

    /// GET of the object; `None` if it does not exist.
    async fn get_object(
        &self,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::get_object::GetObjectOutput>, CodeStoreError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => Ok(Some(output)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            // A 404 without NoSuchKey: a missing object on servers that omit the code, but a
            // missing bucket (NoSuchBucket) is a backend error.
            Err(e) if status_of(&e) == Some(404) && e.code() != Some("NoSuchBucket") => Ok(None),
            Err(e) => Err(self.failed("get object", key, e)),
        }
    }
}

fn status_of<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

#[async_trait]
impl CodeStore for S3CodeStore {
    async fn ping(&self) -> Result<(), CodeStoreError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| self.failed("head bucket", "", e))?;
        Ok(())
    }

    async fn put(&self, bytes: Bytes) -> Result<Checksum, CodeStoreError> {
        let checksum = Checksum::of(&bytes);
        self.put_raw(&checksum, bytes).await?;
        Ok(checksum)
    }

    async fn put_raw(&self, checksum: &Checksum, bytes: Bytes) -> Result<(), CodeStoreError> {
        let digest = Sha256::digest(&bytes);
        let size = bytes.len() as u64;
        self.put_object(checksum, size, &digest, ByteStream::from(bytes))
            .await
    }

    async fn put_file(&self, path: &Path) -> Result<Checksum, CodeStoreError> {
        crate::put_file_streamed(self, path).await
    }

    async fn get_file(&self, checksum: &Checksum, dest: &Path) -> Result<bool, CodeStoreError> {
        crate::get_file_streamed(self, checksum, dest).await
    }

    async fn put_raw_file(&self, checksum: &Checksum, path: &Path) -> Result<(), CodeStoreError> {
        let key = subjects::code_key(checksum);
        let (raw, size) = crate::checksum_file(path).await?;
        let digest = raw.digest();
        // Read from the file as it is sent, never whole.
        let body = ByteStream::from_path(path).await.map_err(|e| {
            CodeStoreError::Backend(format!(
                "s3 put object s3://{}/{key}: reading {}: {e}",
                self.bucket,
                path.display()
            ))
        })?;
        self.put_object(checksum, size, &digest, body).await
    }

    async fn get_raw_file(
        &self,
        checksum: &Checksum,
        dest: &Path,
    ) -> Result<Option<Checksum>, CodeStoreError> {
        let key = subjects::code_key(checksum);
        let Some(output) = self.get_object(&key).await? else {
            return Ok(None);
        };
        let cap = u64::try_from(crate::MAX_BLOB_BYTES).unwrap_or(u64::MAX);
        let (written, _) = crate::copy_to_file(output.body.into_async_read(), dest, cap)
            .await
            .map_err(|e| {
                CodeStoreError::Backend(format!(
                    "s3 get object s3://{}/{key}: reading the body into {}: {e}",
                    self.bucket,
                    dest.display()
                ))
            })?;
        Ok(Some(written))
    }

    async fn get(&self, checksum: &Checksum) -> Result<Option<Bytes>, CodeStoreError> {
        let Some(bytes) = self.get_raw(checksum).await? else {
            return Ok(None);
        };
        if Checksum::of(&bytes) != *checksum {
            tracing::error!(code.checksum = %checksum, s3.bucket = %self.bucket, "code object is corrupt");
            return Err(CodeStoreError::Corrupt(checksum.clone()));
        }
        Ok(Some(bytes))
    }

    async fn get_raw(&self, checksum: &Checksum) -> Result<Option<Bytes>, CodeStoreError> {
        let key = subjects::code_key(checksum);
        let Some(output) = self.get_object(&key).await? else {
            return Ok(None);
        };
        let bytes = output
            .body
            .collect()
            .await
            .map_err(|e| {
                CodeStoreError::Backend(format!(
                    "s3 get object s3://{}/{key}: reading the body: {}",
                    self.bucket,
                    DisplayErrorContext(&e)
                ))
            })?
            .into_bytes();
        Ok(Some(bytes))
    }

    async fn exists(&self, checksum: &Checksum) -> Result<bool, CodeStoreError> {
        self.head(&subjects::code_key(checksum)).await
    }

    async fn delete(&self, checksum: &Checksum) -> Result<bool, CodeStoreError> {
        let key = subjects::code_key(checksum);
        // S3 DELETE succeeds whether or not the object exists, so ask first.
        if !self.head(&key).await? {
            return Ok(false);
        }
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| self.failed("delete object", &key, e))?;
        tracing::debug!(code.checksum = %checksum, "code deleted from s3");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<S3Config, S3ConfigError> {
        S3Config::from_lookup("code", |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn debug_never_shows_credentials() {
        let c = config(&[
            (ENV_ACCESS_KEY_ID, "GKexample"),
            (ENV_SECRET_ACCESS_KEY, "topsecret"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("topsecret") && !shown.contains("GKexample"),
            "{shown}"
        );
    }

    #[test]
    fn new_needs_credentials_and_a_bucket() {
        let c = config(&[]).unwrap();
        let err = S3CodeStore::new(c).unwrap_err().to_string();
        assert!(err.contains(ENV_ACCESS_KEY_ID), "{err}");
        let c = config(&[(ENV_ACCESS_KEY_ID, "a"), (ENV_SECRET_ACCESS_KEY, "b")]).unwrap();
        assert!(S3CodeStore::new(S3Config {
            bucket: String::new(),
            ..c.clone()
        })
        .is_err());
        assert!(S3CodeStore::new(c).is_ok());
    }
}
