//! A small HTTP client for the v1 API, used by the client commands.

use anyhow::{anyhow, bail, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::args::ClientArgs;

/// An authenticated connection to a gateway.
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    key: String,
}

/// A non-2xx answer, rendered from the API's `{"error":{"code","message"}}`.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {code}: {message}")]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl ApiClient {
    /// Connects with the key from the flags, the environment or the data dir's admin key.
    pub fn new(args: &ClientArgs) -> Result<Self> {
        let key = match &args.api_key {
            Some(k) => k.clone(),
            None => {
                let path = args.data_dir.join("admin.key");
                std::fs::read_to_string(&path)
                    .map(|s| s.trim().to_owned())
                    .with_context(|| {
                        format!(
                            "no API key: set FNMESH_API_KEY (or --api-key), or run from the directory whose {} holds the admin key",
                            path.display()
                        )
                    })?
            }
        };
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(960))
                .build()?,
            base: args.url.trim_end_matches('/').to_owned(),
            key,
        })
    }

    /// Sends a request and returns the status and the JSON body (if any).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Value)> {
        self.call_with(method, path, body, &[]).await
    }

    /// [`Self::call`] with more request headers.
    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Value)> {
        self.send(method, path, body, "application/json", headers)
            .await
    }

    /// Sends `body` as `content_type` (a raw upload) with more request headers.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Value)> {
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(&self.key)
            .header("content-type", content_type);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.with_context(|| {
            format!(
                "cannot reach the gateway at {} (is `fnmesh up` running?)",
                self.base
            )
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|_| anyhow!("{status}: {}", String::from_utf8_lossy(&bytes)))?
        };
        if !status.is_success() {
            let err = &value["error"];
            bail!(ApiFailure {
                status,
                code: err["code"].as_str().unwrap_or("unknown").to_owned(),
                message: err["message"].as_str().unwrap_or("").to_owned(),
            });
        }
        Ok((status, value))
    }

    /// Opens a long-lived GET (a server-sent event stream): no overall timeout; a non-2xx
    /// answer is an [`ApiFailure`].
    pub async fn open_stream(&self, path: &str) -> Result<reqwest::Response> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        let resp = http
            .get(format!("{}{}", self.base, path))
            .bearer_auth(&self.key)
            .header("accept", "text/event-stream")
            .send()
            .await
            .with_context(|| format!("cannot reach the gateway at {}", self.base))?;
        let status = resp.status();
        if !status.is_success() {
            let value: Value = resp.json().await.unwrap_or(Value::Null);
            let err = &value["error"];
            bail!(ApiFailure {
                status,
                code: err["code"].as_str().unwrap_or("unknown").to_owned(),
                message: err["message"].as_str().unwrap_or("").to_owned(),
            });
        }
        Ok(resp)
    }
}
