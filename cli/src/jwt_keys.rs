//! The gateway's token settings from [`TokenArgs`]: the signing key (an HS256 secret from the
//! environment or a file, or an Ed25519 / RS256 PEM private key file), its `kid`, issuer,
//! audience and lifetimes. With no key configured, an HS256 secret is generated once into
//! `<data dir>/jwt-hs256.secret` (mode 0600) and reused, so `fnmesh up` works out of the box;
//! gateways that share a database must share a configured key instead.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fnmesh_gateway::auth::jwt::{SigningKey, TokenConfig};

use crate::args::TokenArgs;

/// Name of the generated secret in the data dir.
const GENERATED_SECRET_FILE: &str = "jwt-hs256.secret";

/// Builds the token settings; an invalid setting is an error naming it.
pub fn token_config(args: &TokenArgs, data_dir: &Path) -> Result<TokenConfig> {
    let set: Vec<&str> = [
        ("FNMESH_JWT_HS256_SECRET", args.jwt_hs256_secret.is_some()),
        (
            "FNMESH_JWT_HS256_SECRET_FILE",
            args.jwt_hs256_secret_file.is_some(),
        ),
        (
            "FNMESH_JWT_ED25519_KEY_FILE",
            args.jwt_ed25519_key_file.is_some(),
        ),
        (
            "FNMESH_JWT_RS256_KEY_FILE",
            args.jwt_rs256_key_file.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    if set.len() > 1 {
        bail!("set only one token signing key, not {}", set.join(" and "));
    }
    let kid = args.jwt_kid.as_str();
    let key = if let Some(secret) = &args.jwt_hs256_secret {
        SigningKey::hs256(kid, secret.trim().as_bytes()).context("FNMESH_JWT_HS256_SECRET")?
    } else if let Some(path) = &args.jwt_hs256_secret_file {
        let secret = read(path, "FNMESH_JWT_HS256_SECRET_FILE")?;
        SigningKey::hs256(kid, secret.trim_ascii()).context("FNMESH_JWT_HS256_SECRET_FILE")?
    } else if let Some(path) = &args.jwt_ed25519_key_file {
        let pem = read(path, "FNMESH_JWT_ED25519_KEY_FILE")?;
        SigningKey::ed25519_pem(kid, &pem).context("FNMESH_JWT_ED25519_KEY_FILE")?
    } else if let Some(path) = &args.jwt_rs256_key_file {
        let pem = read(path, "FNMESH_JWT_RS256_KEY_FILE")?;
        SigningKey::rs256_pem(kid, &pem).context("FNMESH_JWT_RS256_KEY_FILE")?
    } else {
        let secret = generated_secret(data_dir)?;
        SigningKey::hs256(kid, secret.as_bytes()).context("the generated HS256 secret")?
    };
    if args.jwt_issuer.trim().is_empty() {
        bail!("FNMESH_JWT_ISSUER must not be empty");
    }
    if args.jwt_audience.trim().is_empty() {
        bail!("FNMESH_JWT_AUDIENCE must not be empty");
    }
    if args.jwt_access_ttl_secs == 0 {
        bail!("FNMESH_JWT_ACCESS_TTL_SECS must be at least 1");
    }
    if args.jwt_refresh_ttl_secs == 0 {
        bail!("FNMESH_JWT_REFRESH_TTL_SECS must be at least 1");
    }
    if args.jwt_refresh_family_ttl_secs == 0 {
        bail!("FNMESH_JWT_REFRESH_FAMILY_TTL_SECS must be at least 1");
    }
    Ok(TokenConfig {
        keys: vec![key],
        issuer: args.jwt_issuer.clone(),
        audience: args.jwt_audience.clone(),
        access_ttl: Duration::from_secs(args.jwt_access_ttl_secs),
        refresh_ttl: Duration::from_secs(args.jwt_refresh_ttl_secs),
        refresh_family_ttl: Duration::from_secs(args.jwt_refresh_family_ttl_secs),
        ..TokenConfig::default()
    })
}

fn read(path: &Path, setting: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{setting}: reading {}", path.display()))
}

/// The secret in `<data dir>/jwt-hs256.secret`, generated (mode 0600) if absent.
fn generated_secret(data_dir: &Path) -> Result<String> {
    let path = data_dir.join(GENERATED_SECRET_FILE);
    if path.exists() {
        let secret = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned();
        if secret.is_empty() {
            bail!(
                "{} is empty; delete it to generate a new secret",
                path.display()
            );
        }
        return Ok(secret);
    }
    let secret = SigningKey::random_hs256_secret();
    crate::private_file::create(&path, &secret)?;
    tracing::info!(path = %path.display(), "generated a token signing secret");
    Ok(secret)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args() -> TokenArgs {
        TokenArgs {
            jwt_kid: "k1".into(),
            jwt_issuer: "fnmesh".into(),
            jwt_audience: "fnmesh-api".into(),
            jwt_access_ttl_secs: 900,
            jwt_refresh_ttl_secs: 3600,
            jwt_refresh_family_ttl_secs: 7200,
            ..TokenArgs::default()
        }
    }

    #[test]
    fn generates_one_secret_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = token_config(&args(), dir.path()).unwrap();
        let file = dir.path().join(GENERATED_SECRET_FILE);
        let mode = std::fs::metadata(&file).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let secret = std::fs::read_to_string(&file).unwrap();
        token_config(&args(), dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), secret);
        assert_eq!(first.keys[0].kid(), "k1");
    }

    #[test]
    fn refuses_two_keys_and_short_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let two = TokenArgs {
            jwt_hs256_secret: Some("x".repeat(40)),
            jwt_rs256_key_file: Some("/nonexistent".into()),
            ..args()
        };
        let e = token_config(&two, dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("FNMESH_JWT_HS256_SECRET and FNMESH_JWT_RS256_KEY_FILE"),
            "{e}"
        );
        let short = TokenArgs {
            jwt_hs256_secret: Some("short".into()),
            ..args()
        };
        let e = format!("{:#}", token_config(&short, dir.path()).unwrap_err());
        assert!(e.contains("FNMESH_JWT_HS256_SECRET"), "{e}");
    }
}
