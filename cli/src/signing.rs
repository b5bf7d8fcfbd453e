//! The signatures of the work a process puts on or takes off NATS (`fnmesh_bus::Signatures`):
//! a gateway's signing key from `FNMESH_SIGNING_KEY` / `FNMESH_SIGNING_KEY_FILE` (without
//! either, `<data dir>/signing.nk`, generated with mode 0600 on first start and its public key
//! logged), and the gateway keys a node trusts from `FNMESH_TRUSTED_KEYS` /
//! `FNMESH_TRUSTED_KEYS_FILE`. A node over NATS refuses to start without trusted keys: it would
//! run nothing. Seeds are never printed.

use std::path::Path;

use anyhow::{bail, Context, Result};
use fnmesh_bus::Signatures;
use fnmesh_core::metrics::Registry;
use fnmesh_core::signing::{Rejections, SigningKey, TrustedKeys};

use crate::args::SigningArgs;

/// Which side of the work a process is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Signs the work it publishes (and, in `fnmesh up`, runs it too).
    Gateway,
    /// Only runs work signed by the trusted keys.
    Node,
}

/// The signatures of a process of `role`, its refusals counted in `metrics`.
pub fn signatures(
    args: &SigningArgs,
    data_dir: &Path,
    role: Role,
    metrics: &Registry,
) -> Result<Signatures> {
    let trusted = trusted_keys(args)?;
    // Nodes refuse work; gateways refuse node reports (events, replies, dead-letter records).
    let component = match role {
        Role::Gateway => "gateway",
        Role::Node => "node",
    };
    let rejections = Rejections::register(metrics, component)
        .context("registering the rejected-messages metric")?;
    let signer = match role {
        Role::Gateway => signing_key(args, data_dir)?,
        Role::Node => {
            if trusted.is_empty() {
                bail!(
                    "a node over NATS runs only work signed by a gateway it trusts: set \
                     FNMESH_TRUSTED_KEYS (or FNMESH_TRUSTED_KEYS_FILE) to the gateways' public \
                     signing keys (N…; `fnmesh nats init` writes them to DIR/trusted.keys, and \
                     each gateway logs its own at start)"
                );
            }
            // A node publishes no work; this key signs nothing anyone trusts.
            SigningKey::generate()
        }
    };
    if role == Role::Gateway {
        tracing::info!(
            signing.public_key = signer.public_key(),
            "work signing key ready"
        );
    }
    tracing::info!(trusted_keys = trusted.len(), "trusted work signing keys");
    Ok(Signatures::new(signer, trusted, rejections))
}

fn trusted_keys(args: &SigningArgs) -> Result<TrustedKeys> {
    let mut list = args.trusted_keys.clone().unwrap_or_default();
    if let Some(file) = &args.trusted_keys_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("FNMESH_TRUSTED_KEYS_FILE: reading {}", file.display()))?;
        // One key per line; `#` starts a comment.
        for line in text.lines() {
            let key = line.split('#').next().unwrap_or("").trim();
            if !key.is_empty() {
                list.push(',');
                list.push_str(key);
            }
        }
    }
    TrustedKeys::parse(&list).context("FNMESH_TRUSTED_KEYS")
}

fn signing_key(args: &SigningArgs, data_dir: &Path) -> Result<SigningKey> {
    let seed = match (&args.signing_key, &args.signing_key_file) {
        (Some(_), Some(_)) => bail!("set FNMESH_SIGNING_KEY or FNMESH_SIGNING_KEY_FILE, not both"),
        (Some(seed), None) => seed.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("FNMESH_SIGNING_KEY_FILE: reading {}", file.display()))?,
        (None, None) => return local_key(data_dir),
    };
    SigningKey::from_seed(&seed).context("FNMESH_SIGNING_KEY")
}

/// `<data dir>/signing.nk`, generated when absent.
fn local_key(data_dir: &Path) -> Result<SigningKey> {
    let path = data_dir.join("signing.nk");
    if path.exists() {
        let seed = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return SigningKey::from_seed(&seed).with_context(|| format!("{}", path.display()));
    }
    let key = SigningKey::generate();
    crate::private_file::create(&path, key.seed())?;
    tracing::warn!(
        path = %path.display(),
        signing.public_key = key.public_key(),
        "generated a work signing key in the data dir; nodes run this gateway's work only \
         with its public key in FNMESH_TRUSTED_KEYS"
    );
    Ok(key)
}
