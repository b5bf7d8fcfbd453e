//! The secrets keyring of a gateway or node, from `FNMESH_SECRETS_KEY` /
//! `FNMESH_SECRETS_KEY_FILE`, `FNMESH_SECRETS_KEY_ID` and `FNMESH_SECRETS_OLD_KEYS`; without a
//! key setting, from `<data dir>/secrets.key` (generated, mode 0600, on first start). Keys are
//! never printed.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use fnmesh_core::secrets::{self, Keyring};

use crate::args::SecretsArgs;

/// The keyring these settings describe.
pub fn keyring(args: &SecretsArgs, data_dir: &Path) -> Result<Arc<Keyring>> {
    let key_text = match (&args.secrets_key, &args.secrets_key_file) {
        (Some(_), Some(_)) => {
            bail!("set FNMESH_SECRETS_KEY or FNMESH_SECRETS_KEY_FILE, not both")
        }
        (Some(key), None) => key.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("FNMESH_SECRETS_KEY_FILE: reading {}", file.display()))?,
        (None, None) => local_key(data_dir)?,
    };
    let key = secrets::parse_key(&key_text).context("FNMESH_SECRETS_KEY")?;
    let mut ring = Keyring::new(&args.secrets_key_id, &key).context("FNMESH_SECRETS_KEY_ID")?;
    if let Some(old) = &args.secrets_old_keys {
        ring = ring.with_old_keys(old).context("FNMESH_SECRETS_OLD_KEYS")?;
    }
    tracing::info!(secrets.key_id = ring.current_id(), "secrets keyring ready");
    Ok(Arc::new(ring))
}

/// `<data dir>/secrets.key`, generated when absent.
fn local_key(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("secrets.key");
    if path.exists() {
        return std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()));
    }
    let key = secrets::generate_key();
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    crate::private_file::create(&path, &key)?;
    tracing::warn!(
        path = %path.display(),
        "generated a secrets key in the data dir (reused by later starts on this data dir); \
         a cluster must set one shared FNMESH_SECRETS_KEY on every gateway and node"
    );
    Ok(key)
}
