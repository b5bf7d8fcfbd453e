//! Connections to a `nats-server` started with `fnmesh nats init`'s setup
//! ([`TestNats::start_with_accounts`]), as one role, recording what the server reports.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fnmesh_core::subjects::{self, InboxOwner};

use crate::servers::nats::TestNats;

/// What the server reported on one connection (permission violations and other errors).
#[derive(Clone, Default)]
pub struct ServerErrors(Arc<Mutex<Vec<String>>>);

impl ServerErrors {
    /// Everything reported so far.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (up to 5 s) until the server reported a permission violation for `action`
    /// (`publish` or `subscription`) on `subject`.
    pub async fn expect_violation(&self, action: &str, subject: &str) {
        let wanted = format!("permissions violation for {action} to \"{subject}\"");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self
                .all()
                .iter()
                .any(|e| e.to_lowercase().contains(&wanted.to_lowercase()))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no violation {wanted:?}; the server reported {:?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Connects with `role`'s creds file (`gateway`, `client`), making inboxes under `owner`'s
/// prefix (or NATS's default `_INBOX` for `None`, as a plain client library does).
pub async fn connect(
    nats: &TestNats,
    role: &str,
    owner: Option<InboxOwner>,
) -> (async_nats::Client, ServerErrors) {
    let prefix = owner.map(|o| subjects::inbox_prefix(o).to_owned());
    connect_with(nats, &nats.creds(role), prefix, role).await
}

/// Connects as node `id` with its own creds file (minted on first use), making inboxes under
/// its own prefix `_FNMESH.node.<id>`, as `fnmesh node` does.
pub async fn connect_node(nats: &TestNats, id: &str) -> (async_nats::Client, ServerErrors) {
    let node = fnmesh_core::ids::NodeId::parse(id).expect("a valid node id");
    let prefix = subjects::node_inbox_prefix(&node);
    connect_with(nats, &nats.node_creds(id), Some(prefix), id).await
}

/// Connects to `nats` with the creds file `creds`, making inboxes under `inbox_prefix` (or
/// NATS's default); `who` names the connection in the server's log.
pub async fn connect_with(
    nats: &TestNats,
    creds: &std::path::Path,
    inbox_prefix: Option<String>,
    who: &str,
) -> (async_nats::Client, ServerErrors) {
    let errors = ServerErrors::default();
    let seen = errors.clone();
    let mut options = async_nats::ConnectOptions::new()
        .credentials_file(creds)
        .await
        .expect("reading the creds file")
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    seen.0
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(e.to_string());
                }
            }
        });
    if let Some(prefix) = inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    let client = options
        .connect(nats.url())
        .await
        .unwrap_or_else(|e| panic!("connecting as {who}: {e}"));
    (client, errors)
}
