//! Connecting to NATS: one place that turns the operator's settings (URL, creds file, TLS)
//! into an [`async_nats::Client`], shared by the bus, the node registry and the code store.
//! A server older than [`server::MIN_SERVER_VERSION`] is refused with an error naming both
//! versions.

pub mod jwt;
pub mod server;
pub mod setup;

use std::path::PathBuf;

use crate::subjects::{self, InboxOwner};

/// How to reach the NATS servers.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// `nats://host:port` (or `tls://…`); several separated by commas.
    pub url: String,
    /// A `.creds` file (JWT + nkey seed) to authenticate with.
    pub creds_file: Option<PathBuf>,
    /// A PEM file of CA certificates to verify the server with (implies TLS).
    pub tls_ca_file: Option<PathBuf>,
    /// A PEM client certificate for mutual TLS (with `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// The PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Refuse a connection without TLS.
    pub require_tls: bool,
    /// Whose inboxes the connection makes: its inbox prefix (never NATS's default `_INBOX`,
    /// see [`subjects::inbox_prefix`]).
    pub inbox_owner: InboxOwner,
    /// A node's id, when it is known before connecting: its inboxes are then its own
    /// ([`subjects::node_inbox_prefix`]), as per-node credentials require.
    pub node_id: Option<crate::ids::NodeId>,
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    /// A setting is unusable (a missing creds file, half a client certificate).
    #[error("nats settings: {0}")]
    Settings(String),
    /// The servers could not be reached or refused us.
    #[error("connecting to nats: {0}")]
    Connect(String),
    /// The server is older than fnmesh supports.
    #[error("{0}")]
    Unsupported(String),
}

impl NatsOptions {
    /// Options for `url` alone.
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// The inbox prefix of this connection.
    pub fn inbox_prefix(&self) -> String {
        match (self.inbox_owner, &self.node_id) {
            (InboxOwner::Node, Some(id)) => subjects::node_inbox_prefix(id),
            (owner, _) => subjects::inbox_prefix(owner).to_owned(),
        }
    }

    /// Connects, naming the connection `name` (it shows in the server's monitoring).
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, NatsConnectError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .custom_inbox_prefix(self.inbox_prefix())
            .event_callback(|event| async move {
                match event {
                    // Permission violations (a role's NATS permissions lack a subject) and
                    // other errors the server reports on the connection.
                    async_nats::Event::ServerError(e) => {
                        tracing::warn!(error = %e, "nats server error");
                    }
                    async_nats::Event::Disconnected | async_nats::Event::LameDuckMode => {
                        tracing::warn!(nats.event = %event, "nats connection");
                    }
                    other => tracing::debug!(nats.event = %other, "nats connection"),
                }
            });
        if let Some(creds) = &self.creds_file {
            options = options.credentials_file(creds).await.map_err(|e| {
                NatsConnectError::Settings(format!(
                    "reading the creds file {}: {e}",
                    creds.display()
                ))
            })?;
        }
        if let Some(ca) = &self.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                options = options
                    .add_client_certificate(cert.clone(), key.clone())
                    .require_tls(true);
            }
            (None, None) => {}
            _ => {
                return Err(NatsConnectError::Settings(
                    "a TLS client certificate needs both the certificate and its key".into(),
                ))
            }
        }
        if self.require_tls {
            options = options.require_tls(true);
        }
        let servers: Vec<&str> = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let client = options
            .connect(servers.as_slice())
            .await
            .map_err(|e| NatsConnectError::Connect(e.to_string()))?;
        check_server(&client)?;
        Ok(client)
    }
}

/// Refuses a server older than [`server::MIN_SERVER_VERSION`].
pub fn check_server(client: &async_nats::Client) -> Result<(), NatsConnectError> {
    let version = client.server_info().version;
    if server::is_supported(&version) {
        return Ok(());
    }
    let (major, minor) = server::MIN_SERVER_VERSION;
    Err(NatsConnectError::Unsupported(format!(
        "nats-server {version} is older than {major}.{minor}, the oldest fnmesh supports"
    )))
}
