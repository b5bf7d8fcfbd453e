//! Function secrets: names, the sealed (encrypted) form they are stored and carried in, and the
//! [`Keyring`] that seals and opens them.
//!
//! A secret value is encrypted with AES-256-GCM under the keyring's current key, with a fresh
//! random 96-bit nonce, and with associated data that binds it to its namespace, function and
//! name ([`secret_aad`]): a ciphertext copied to another function or name does not open. Each
//! [`SealedValue`] names the key it was sealed with, so a keyring can hold old keys (to open)
//! next to its current one (to seal), which is how keys are rotated.
//!
//! Sealed values are what the metadata store keeps and what an `InvocationRequest` carries over
//! the bus; only a node opens them, right before building a sandbox's environment. Nothing here
//! prints a key or a value: every `Debug` impl is redacting.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::function::Function;
use crate::names::{FunctionName, Namespace};
use crate::registry::{RegistryCredential, RegistryHost};

/// Largest secret value, in bytes.
pub const MAX_SECRET_VALUE_BYTES: usize = 4096;
/// Most secrets per function.
pub const MAX_SECRETS_PER_FUNCTION: usize = 64;
/// Longest secret name.
pub const MAX_SECRET_NAME_LEN: usize = 128;
/// The key id used when none is configured.
pub const DEFAULT_KEY_ID: &str = "k1";
/// Bytes of an AES-256 key.
pub const KEY_BYTES: usize = 32;
/// Bytes of a GCM nonce.
const NONCE_BYTES: usize = 12;
/// Longest key id.
const MAX_KEY_ID_LEN: usize = 32;

/// Errors of secrets handling. Messages never contain a key or a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    /// A secret name that is not an environment variable name, or a reserved one.
    #[error(
        "invalid secret name {0:?}: must match [A-Z_][A-Z0-9_]*, be at most 128 characters \
         and not start with FNMESH_ or FUNCTION_"
    )]
    InvalidName(String),
    /// A key or key id that cannot be used.
    #[error("invalid secrets key: {0}")]
    InvalidKey(String),
    /// A sealed value names a key this keyring does not hold.
    #[error("secrets key {0:?} is not configured here")]
    UnknownKeyId(String),
    /// Authentication failed: wrong key, wrong associated data or tampered ciphertext.
    #[error("a secret could not be decrypted (wrong key, or it was tampered with)")]
    Decrypt,
    /// Encryption failed (not expected with valid inputs).
    #[error("a secret could not be encrypted")]
    Encrypt,
}

/// A secret's name: an environment variable name, `[A-Z_][A-Z0-9_]*`, not `FNMESH_*` (the
/// platform's) nor `FUNCTION_*` (set by the runtime).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct SecretName(String);

impl SecretName {
    /// Validates a name.
    pub fn parse(raw: &str) -> Result<Self, SecretsError> {
        let mut chars = raw.chars();
        let shape = matches!(chars.next(), Some(c) if c.is_ascii_uppercase() || c == '_')
            && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        let reserved = raw.starts_with("FNMESH_") || raw.starts_with("FUNCTION_");
        if shape && !reserved && raw.len() <= MAX_SECRET_NAME_LEN {
            Ok(Self(raw.to_owned()))
        } else {
            Err(SecretsError::InvalidName(raw.chars().take(64).collect()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// The associated data a secret is sealed with: it binds the ciphertext to one namespace,
/// function and name (names cannot contain NUL, so the encoding is unambiguous).
pub fn secret_aad(namespace: &Namespace, function: &FunctionName, name: &SecretName) -> Vec<u8> {
    format!(
        "fnmesh.secret.v1\0{}\0{}\0{}",
        namespace.as_str(),
        function.as_str(),
        name.as_str()
    )
    .into_bytes()
}

/// The associated data a secret is sealed with for one invocation: it binds the ciphertext to
/// the function's namespace, name and id, the version and its code checksum, and the secret's
/// name. A gateway re-seals the stored secrets with it for each version it invokes
/// ([`Keyring::seal_for_invocation`]), so sealed secrets copied from one request into another
/// that names other code, another version or another function do not open on a node.
pub fn invocation_secret_aad(function: &Function, name: &SecretName) -> Vec<u8> {
    format!(
        "fnmesh.secret.invocation.v1\0{}\0{}\0{}\0{}\0{}\0{}",
        function.namespace.as_str(),
        function.name.as_str(),
        function.id,
        function.version,
        function.code.checksum,
        name.as_str()
    )
    .into_bytes()
}

/// The associated data a namespace's registry credential is sealed with at rest (and in the
/// catalog): it binds the ciphertext to the namespace and the registry host.
pub fn registry_credential_aad(namespace: &Namespace, host: &RegistryHost) -> Vec<u8> {
    format!(
        "fnmesh.registry.v1\0{}\0{}",
        namespace.as_str(),
        host.as_str()
    )
    .into_bytes()
}

/// The associated data a registry credential is sealed with for one invocation: the
/// function's namespace, name, id, version and code checksum, and the host. A credential
/// copied into a request for another function or version does not open on a node.
pub fn invocation_registry_aad(function: &Function, host: &RegistryHost) -> Vec<u8> {
    format!(
        "fnmesh.registry.invocation.v1\0{}\0{}\0{}\0{}\0{}\0{}",
        function.namespace.as_str(),
        function.name.as_str(),
        function.id,
        function.version,
        function.code.checksum,
        host.as_str()
    )
    .into_bytes()
}

/// One encrypted value: the id of the key it was sealed with, its nonce and the ciphertext
/// (with the GCM tag). Serialised with base64 fields.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedValue {
    /// Which key of the keyring sealed it.
    pub key_id: String,
    /// The 96-bit nonce.
    #[serde(with = "b64")]
    pub nonce: Vec<u8>,
    /// Ciphertext and tag.
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedValue")
            .field("key_id", &self.key_id)
            .field("ciphertext_bytes", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// One named sealed secret of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    /// Its name (the environment variable).
    pub name: SecretName,
    /// Its value, sealed.
    pub value: SealedValue,
}

/// A function's secrets as an invocation carries them to the node: sealed, opened only there.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SealedSecrets(pub Vec<SealedSecret>);

impl fmt::Debug for SealedSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedSecrets(<{} redacted>)", self.0.len())
    }
}

impl SealedSecrets {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A SHA-256 (hex) of the sealed form: it changes whenever a secret is set again (each
    /// sealing has a fresh nonce), and reveals nothing of the values. Nodes key warm sandboxes
    /// by it, so a changed secret never reaches a sandbox started with the old one.
    pub fn digest(&self) -> String {
        let mut hash = Sha256::new();
        for s in &self.0 {
            for part in [
                s.name.as_str().as_bytes(),
                s.value.key_id.as_bytes(),
                &s.value.nonce,
                &s.value.ciphertext,
            ] {
                hash.update((part.len() as u64).to_be_bytes());
                hash.update(part);
            }
        }
        hex::encode(hash.finalize())
    }
}

/// Opened secrets: environment variables for one sandbox. `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretEnv {
    vars: BTreeMap<String, String>,
    digest: Option<String>,
}

impl fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretEnv")
            .field("names", &self.vars.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl SecretEnv {
    /// Variables from pairs, with the digest of their sealed form (for tests and tools).
    pub fn from_pairs(
        pairs: impl IntoIterator<Item = (SecretName, String)>,
        digest: Option<String>,
    ) -> Self {
        Self {
            vars: pairs.into_iter().map(|(k, v)| (k.0, v)).collect(),
            digest,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// `(name, value)` pairs, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The [`SealedSecrets::digest`] these were opened from (`None` when there are none).
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
}

/// AES-256-GCM keys by id: the current one seals, every one opens.
#[derive(Clone)]
pub struct Keyring {
    current: String,
    keys: HashMap<String, Aes256Gcm>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<_> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("key_ids", &ids)
            .finish()
    }
}

fn check_key_id(id: &str) -> Result<(), SecretsError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(SecretsError::InvalidKey(format!(
            "key id {:?} must be 1..=32 characters of [A-Za-z0-9._-]",
            id.chars().take(40).collect::<String>()
        )))
    }
}

/// Decodes a base64 (standard alphabet, padded or not) 32-byte key.
pub fn parse_key(text: &str) -> Result<[u8; KEY_BYTES], SecretsError> {
    let text = text.trim();
    let bytes = STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
        .map_err(|_| SecretsError::InvalidKey("not base64".to_owned()))?;
    <[u8; KEY_BYTES]>::try_from(bytes.as_slice()).map_err(|_| {
        SecretsError::InvalidKey(format!(
            "must decode to {KEY_BYTES} bytes, got {}",
            bytes.len()
        ))
    })
}

/// A fresh random key, base64.
pub fn generate_key() -> String {
    STANDARD.encode(crate::random::bytes::<KEY_BYTES>())
}

impl Keyring {
    /// A keyring whose current key is `key`, with id `id`.
    pub fn new(id: &str, key: &[u8; KEY_BYTES]) -> Result<Self, SecretsError> {
        check_key_id(id)?;
        let mut keys = HashMap::new();
        keys.insert(id.to_owned(), Aes256Gcm::new(key.into()));
        Ok(Self {
            current: id.to_owned(),
            keys,
        })
    }

    /// Adds an old key, used only to open values sealed with it. Its id must differ from
    /// every key already held.
    pub fn with_old_key(mut self, id: &str, key: &[u8; KEY_BYTES]) -> Result<Self, SecretsError> {
        check_key_id(id)?;
        if self.keys.contains_key(id) {
            return Err(SecretsError::InvalidKey(format!(
                "key id {id:?} is given twice"
            )));
        }
        self.keys.insert(id.to_owned(), Aes256Gcm::new(key.into()));
        Ok(self)
    }

    /// Adds old keys from `id:base64` entries separated by commas (the format of
    /// `FNMESH_SECRETS_OLD_KEYS`); empty entries are ignored.
    pub fn with_old_keys(mut self, list: &str) -> Result<Self, SecretsError> {
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, key) = entry.split_once(':').ok_or_else(|| {
                SecretsError::InvalidKey("old keys must be `id:base64` entries".to_owned())
            })?;
            self = self.with_old_key(id.trim(), &parse_key(key)?)?;
        }
        Ok(self)
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &str {
        &self.current
    }

    /// Seals `plaintext` under the current key with a fresh random nonce, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<SealedValue, SecretsError> {
        let cipher = self
            .keys
            .get(&self.current)
            .ok_or_else(|| SecretsError::UnknownKeyId(self.current.clone()))?;
        let nonce = crate::random::bytes::<NONCE_BYTES>();
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| SecretsError::Encrypt)?;
        Ok(SealedValue {
            key_id: self.current.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens a value sealed by this keyring (current or old key) with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &SealedValue) -> Result<Vec<u8>, SecretsError> {
        let cipher = self
            .keys
            .get(&sealed.key_id)
            .ok_or_else(|| SecretsError::UnknownKeyId(sealed.key_id.clone()))?;
        let nonce: [u8; NONCE_BYTES] = sealed
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| SecretsError::Decrypt)?;
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map_err(|_| SecretsError::Decrypt)
    }

    /// Seals one secret value of `namespace/function`.
    pub fn seal_secret(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        name: &SecretName,
        value: &str,
    ) -> Result<SealedValue, SecretsError> {
        self.seal(&secret_aad(namespace, function, name), value.as_bytes())
    }

    /// Opens every secret of `namespace/function` into environment variables.
    pub fn open_secrets(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
        sealed: &SealedSecrets,
    ) -> Result<SecretEnv, SecretsError> {
        let mut vars = BTreeMap::new();
        for s in &sealed.0 {
            let plain = self.open(&secret_aad(namespace, function, &s.name), &s.value)?;
            let value = String::from_utf8(plain).map_err(|_| SecretsError::Decrypt)?;
            vars.insert(s.name.0.clone(), value);
        }
        let digest = (!sealed.is_empty()).then(|| sealed.digest());
        Ok(SecretEnv { vars, digest })
    }

    /// Re-seals a function's stored secrets (bound to its namespace, name and each secret's
    /// name) for invocations of one version of it ([`invocation_secret_aad`]), under the
    /// current key.
    pub fn seal_for_invocation(
        &self,
        function: &Function,
        stored: &SealedSecrets,
    ) -> Result<SealedSecrets, SecretsError> {
        let mut out = Vec::with_capacity(stored.0.len());
        for s in &stored.0 {
            let plain = self.open(
                &secret_aad(&function.namespace, &function.name, &s.name),
                &s.value,
            )?;
            let value = self.seal(&invocation_secret_aad(function, &s.name), &plain)?;
            out.push(SealedSecret {
                name: s.name.clone(),
                value,
            });
        }
        Ok(SealedSecrets(out))
    }

    /// Opens the secrets an invocation of `function` carries (sealed by
    /// [`Keyring::seal_for_invocation`] for that very version and code) into environment
    /// variables. Their digest is a SHA-256 of the opened names and values: it differs
    /// whenever a value does, and is the same whichever gateway sealed them (each sealing has
    /// its own nonce). It never leaves the node's memory.
    pub fn open_invocation_secrets(
        &self,
        function: &Function,
        sealed: &SealedSecrets,
    ) -> Result<SecretEnv, SecretsError> {
        let mut vars = BTreeMap::new();
        for s in &sealed.0 {
            let plain = self.open(&invocation_secret_aad(function, &s.name), &s.value)?;
            let value = String::from_utf8(plain).map_err(|_| SecretsError::Decrypt)?;
            vars.insert(s.name.0.clone(), value);
        }
        let digest = (!vars.is_empty()).then(|| {
            let mut hash = Sha256::new();
            for (name, value) in &vars {
                for part in [name.as_bytes(), value.as_bytes()] {
                    hash.update((part.len() as u64).to_be_bytes());
                    hash.update(part);
                }
            }
            hex::encode(hash.finalize())
        });
        Ok(SecretEnv { vars, digest })
    }
}

impl Keyring {
    /// Seals `namespace`'s credential for registry `host` for storing.
    pub fn seal_registry_credential(
        &self,
        namespace: &Namespace,
        host: &RegistryHost,
        credential: &RegistryCredential,
    ) -> Result<SealedValue, SecretsError> {
        let plain = serde_json::to_vec(credential).map_err(|_| SecretsError::Encrypt)?;
        self.seal(&registry_credential_aad(namespace, host), &plain)
    }

    /// Opens a stored credential of `namespace` for registry `host`.
    pub fn open_registry_credential(
        &self,
        namespace: &Namespace,
        host: &RegistryHost,
        sealed: &SealedValue,
    ) -> Result<RegistryCredential, SecretsError> {
        let plain = self.open(&registry_credential_aad(namespace, host), sealed)?;
        serde_json::from_slice(&plain).map_err(|_| SecretsError::Decrypt)
    }

    /// Re-seals a stored credential (of `function`'s namespace for `host`) for invocations of
    /// that very version and code ([`invocation_registry_aad`]).
    pub fn seal_registry_for_invocation(
        &self,
        function: &Function,
        host: &RegistryHost,
        stored: &SealedValue,
    ) -> Result<SealedValue, SecretsError> {
        let plain = self.open(&registry_credential_aad(&function.namespace, host), stored)?;
        self.seal(&invocation_registry_aad(function, host), &plain)
    }

    /// Opens the registry credential an invocation of `function` carries.
    pub fn open_invocation_registry(
        &self,
        function: &Function,
        host: &RegistryHost,
        sealed: &SealedValue,
    ) -> Result<RegistryCredential, SecretsError> {
        let plain = self.open(&invocation_registry_aad(function, host), sealed)?;
        serde_json::from_slice(&plain).map_err(|_| SecretsError::Decrypt)
    }
}

mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn key(byte: u8) -> [u8; KEY_BYTES] {
        [byte; KEY_BYTES]
    }

    fn ns() -> Namespace {
        Namespace::parse("team-a").unwrap()
    }

    fn fname(s: &str) -> FunctionName {
        FunctionName::parse(s).unwrap()
    }

    fn sname(s: &str) -> SecretName {
        SecretName::parse(s).unwrap()
    }

    fn function(version: u32, checksum: char) -> Function {
        let c = crate::Checksum::parse(&checksum.to_string().repeat(64)).unwrap();
        serde_json::from_value(serde_json::json!({
            "id": "0190a0b0-0000-7000-8000-000000000001",
            "namespace": "team-a",
            "name": "f",
            "version": version,
            "runtime": "python3",
            "handler": "main.handle",
            "code": {"checksum": c, "size": 1, "source_type": "inline"},
            "config": {},
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn invocation_secrets_open_only_for_the_version_and_code_they_were_sealed_for() {
        let ring = Keyring::new("k1", &key(1)).unwrap();
        let f = function(2, 'a');
        let stored = SealedSecrets(vec![SealedSecret {
            name: sname("TOKEN"),
            value: ring
                .seal_secret(&f.namespace, &f.name, &sname("TOKEN"), "s3cret")
                .unwrap(),
        }]);
        let sealed = ring.seal_for_invocation(&f, &stored).unwrap();
        let env = ring.open_invocation_secrets(&f, &sealed).unwrap();
        assert_eq!(env.iter().collect::<Vec<_>>(), vec![("TOKEN", "s3cret")]);
        // Another gateway's sealing (other nonces) opens to the same digest.
        let again = ring.seal_for_invocation(&f, &stored).unwrap();
        assert_ne!(again, sealed);
        assert_eq!(
            ring.open_invocation_secrets(&f, &again).unwrap().digest(),
            env.digest()
        );
        // Other code, another version, another function id: refused.
        for other in [function(2, 'b'), function(3, 'a'), {
            let mut g = function(2, 'a');
            g.id = crate::FunctionId::new();
            g
        }] {
            assert_eq!(
                ring.open_invocation_secrets(&other, &sealed),
                Err(SecretsError::Decrypt)
            );
        }
        // The stored form itself is not an invocation's.
        assert_eq!(
            ring.open_invocation_secrets(&f, &stored),
            Err(SecretsError::Decrypt)
        );
    }

    #[test]
    fn registry_credentials_open_only_where_they_were_sealed_for() {
        let ring = Keyring::new("k1", &key(1)).unwrap();
        let f = function(2, 'a');
        let host = RegistryHost::parse("registry.example.com").unwrap();
        let other_host = RegistryHost::parse("other.example.com").unwrap();
        let cred = RegistryCredential {
            username: "u".into(),
            password: "hunter2".into(),
        };
        let stored = ring
            .seal_registry_credential(&f.namespace, &host, &cred)
            .unwrap();
        assert!(!stored.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            ring.open_registry_credential(&f.namespace, &host, &stored)
                .unwrap(),
            cred
        );
        assert_eq!(
            ring.open_registry_credential(&f.namespace, &other_host, &stored),
            Err(SecretsError::Decrypt)
        );
        assert_eq!(
            ring.open_registry_credential(&ns_of("other"), &host, &stored),
            Err(SecretsError::Decrypt)
        );
        let carried = ring
            .seal_registry_for_invocation(&f, &host, &stored)
            .unwrap();
        assert_eq!(
            ring.open_invocation_registry(&f, &host, &carried).unwrap(),
            cred
        );
        for other in [function(2, 'b'), function(3, 'a')] {
            assert_eq!(
                ring.open_invocation_registry(&other, &host, &carried),
                Err(SecretsError::Decrypt)
            );
        }
        assert_eq!(
            ring.open_invocation_registry(&f, &other_host, &carried),
            Err(SecretsError::Decrypt)
        );
        assert_eq!(
            ring.open_invocation_registry(&f, &host, &stored),
            Err(SecretsError::Decrypt)
        );
    }

    fn ns_of(raw: &str) -> Namespace {
        Namespace::parse(raw).unwrap()
    }

    #[test]
    fn roundtrip_with_fresh_nonces() {
        let ring = Keyring::new("k1", &key(1)).unwrap();
        let a = ring.seal(b"aad", b"hunter2").unwrap();
        let b = ring.seal(b"aad", b"hunter2").unwrap();
        assert_ne!(a.nonce, b.nonce, "every sealing has its own nonce");
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_eq!(a.key_id, "k1");
        assert_eq!(ring.open(b"aad", &a).unwrap(), b"hunter2");
        assert!(!a.ciphertext.windows(7).any(|w| w == b"hunter2"));
    }

    #[test]
    fn wrong_aad_fails() {
        let ring = Keyring::new("k1", &key(1)).unwrap();
        let sealed = ring
            .seal_secret(&ns(), &fname("f"), &sname("TOKEN"), "v")
            .unwrap();
        let other_fn = secret_aad(&ns(), &fname("g"), &sname("TOKEN"));
        let other_name = secret_aad(&ns(), &fname("f"), &sname("OTHER"));
        assert_eq!(ring.open(&other_fn, &sealed), Err(SecretsError::Decrypt));
        assert_eq!(ring.open(&other_name, &sealed), Err(SecretsError::Decrypt));
        let right = secret_aad(&ns(), &fname("f"), &sname("TOKEN"));
        assert_eq!(ring.open(&right, &sealed).unwrap(), b"v");
    }

    #[test]
    fn tampering_fails() {
        let ring = Keyring::new("k1", &key(1)).unwrap();
        let sealed = ring.seal(b"aad", b"value").unwrap();
        for i in 0..sealed.ciphertext.len() {
            let mut bad = sealed.clone();
            bad.ciphertext[i] ^= 0x01;
            assert_eq!(ring.open(b"aad", &bad), Err(SecretsError::Decrypt));
        }
        let mut bad = sealed.clone();
        bad.nonce[0] ^= 0x01;
        assert_eq!(ring.open(b"aad", &bad), Err(SecretsError::Decrypt));
        let mut short = sealed.clone();
        short.nonce.pop();
        assert_eq!(ring.open(b"aad", &short), Err(SecretsError::Decrypt));
        let other = Keyring::new("k1", &key(2)).unwrap();
        assert_eq!(other.open(b"aad", &sealed), Err(SecretsError::Decrypt));
    }

    #[test]
    fn rotation_opens_old_values_and_seals_with_the_new_key() {
        let old = Keyring::new("k1", &key(1)).unwrap();
        let sealed_old = old.seal(b"aad", b"before").unwrap();
        let rotated = Keyring::new("k2", &key(2))
            .unwrap()
            .with_old_keys(&format!(" k1:{} ,", STANDARD.encode(key(1))))
            .unwrap();
        assert_eq!(rotated.current_id(), "k2");
        assert_eq!(rotated.open(b"aad", &sealed_old).unwrap(), b"before");
        let sealed_new = rotated.seal(b"aad", b"after").unwrap();
        assert_eq!(sealed_new.key_id, "k2");
        assert_eq!(
            old.open(b"aad", &sealed_new),
            Err(SecretsError::UnknownKeyId("k2".into()))
        );
        let without_old = Keyring::new("k2", &key(2)).unwrap();
        assert_eq!(
            without_old.open(b"aad", &sealed_old),
            Err(SecretsError::UnknownKeyId("k1".into()))
        );
        assert!(Keyring::new("k2", &key(2))
            .unwrap()
            .with_old_key("k2", &key(3))
            .is_err());
    }

    #[test]
    fn open_secrets_builds_the_env_and_a_digest() {
        let ring = Keyring::new("k1", &key(1)).unwrap();
        let (n, f) = (ns(), fname("f"));
        let sealed = SealedSecrets(vec![
            SealedSecret {
                name: sname("B"),
                value: ring.seal_secret(&n, &f, &sname("B"), "2").unwrap(),
            },
            SealedSecret {
                name: sname("A"),
                value: ring.seal_secret(&n, &f, &sname("A"), "1").unwrap(),
            },
        ]);
        let env = ring.open_secrets(&n, &f, &sealed).unwrap();
        assert_eq!(env.iter().collect::<Vec<_>>(), vec![("A", "1"), ("B", "2")]);
        assert_eq!(env.digest(), Some(sealed.digest().as_str()));
        assert!(ring.open_secrets(&n, &fname("g"), &sealed).is_err());
        let empty = ring
            .open_secrets(&n, &f, &SealedSecrets::default())
            .unwrap();
        assert!(empty.is_empty() && empty.digest().is_none());
    }

    #[test]
    fn debug_output_is_redacted() {
        let ring = Keyring::new("k1", &key(7)).unwrap();
        let sealed = ring.seal(b"aad", b"topsecret").unwrap();
        let env = SecretEnv::from_pairs([(sname("TOKEN"), "topsecret".to_owned())], None);
        let printed = format!(
            "{ring:?} {sealed:?} {env:?} {:?}",
            SealedSecrets(vec![SealedSecret {
                name: sname("TOKEN"),
                value: sealed.clone()
            }])
        );
        assert!(!printed.contains("topsecret"), "{printed}");
        assert!(!printed.contains(&STANDARD.encode(key(7))), "{printed}");
        assert!(!printed.contains(&STANDARD.encode(&sealed.ciphertext)));
    }

    #[test]
    fn sealed_values_serialise_with_base64_fields() {
        let ring = Keyring::new("k1", &key(1)).unwrap();
        let sealed = ring.seal(b"aad", b"x").unwrap();
        let json = serde_json::to_string(&sealed).unwrap();
        let back: SealedValue = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sealed);
    }

    #[test]
    fn secret_names_are_env_var_names() {
        for ok in ["A", "_X", "MY_SECRET_2", "DB_PASSWORD"] {
            assert!(SecretName::parse(ok).is_ok(), "{ok}");
        }
        let long = "A".repeat(MAX_SECRET_NAME_LEN + 1);
        for bad in [
            "",
            "a",
            "1A",
            "MY-SECRET",
            "A B",
            "A.B",
            "FNMESH_KEY",
            "FUNCTION_NAME",
            "A=B",
            long.as_str(),
        ] {
            assert!(SecretName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_parse_from_base64_of_32_bytes() {
        let generated = generate_key();
        assert!(parse_key(&generated).is_ok());
        assert!(parse_key(&format!(" {generated}\n")).is_ok());
        assert!(parse_key("c2hvcnQ=").is_err());
        assert!(parse_key("not base64!").is_err());
        assert!(Keyring::new("bad id", &key(1)).is_err());
        assert!(Keyring::new("", &key(1)).is_err());
    }
}
