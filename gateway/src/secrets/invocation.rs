//! The secrets an invocation carries: the function's stored secrets, re-sealed for the version
//! and code being invoked ([`Keyring::seal_for_invocation`]), so a node opens them only for that
//! function id, version and code checksum.
//!
//! Re-sealing costs two AES-GCM operations per secret; a gateway keeps the result per (function
//! id, version, checksum, digest of the stored form), so the invocation path pays a lookup. A
//! changed secret changes the stored digest, so a stale entry is never used; the cache is
//! bounded and emptied when full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fnmesh_core::secrets::{Keyring, SealedSecrets};
use fnmesh_core::{Checksum, Function, FunctionId};

use crate::error::ApiError;

/// Entries kept at most (one per function version with secrets that was invoked lately).
const CAPACITY: usize = 4096;

type Key = (FunctionId, u32, Checksum, String);

/// Re-sealed secrets by function version and stored digest.
#[derive(Default)]
pub(crate) struct InvocationSecrets {
    cache: Mutex<HashMap<Key, Arc<SealedSecrets>>>,
}

impl InvocationSecrets {
    /// The secrets an invocation of `function` carries, given its stored ones (`None` when it
    /// has none). A gateway without a keyring cannot re-seal: 503, as for `PUT` of a secret.
    pub(crate) fn for_invocation(
        &self,
        keyring: Option<&Keyring>,
        function: &Function,
        stored: &SealedSecrets,
    ) -> Result<Option<SealedSecrets>, ApiError> {
        if stored.is_empty() {
            return Ok(None);
        }
        let key = (
            function.id,
            function.version,
            function.code.checksum.clone(),
            stored.digest(),
        );
        if let Some(hit) = self.lock().get(&key) {
            return Ok(Some(SealedSecrets::clone(hit)));
        }
        let keyring = keyring.ok_or_else(|| {
            ApiError::Unavailable(
                "the function has secrets but this gateway has no secrets key: set \
                 FNMESH_SECRETS_KEY or FNMESH_SECRETS_KEY_FILE"
                    .to_owned(),
            )
        })?;
        let sealed = keyring.seal_for_invocation(function, stored).map_err(|e| {
            tracing::error!(function.name = %function.name, error = %e, "re-sealing a function's secrets failed");
            ApiError::Unavailable(format!("the function's secrets cannot be opened here: {e}"))
        })?;
        let mut cache = self.lock();
        if cache.len() >= CAPACITY {
            cache.clear();
        }
        cache.insert(key, Arc::new(sealed.clone()));
        Ok(Some(sealed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<SealedSecrets>>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}
