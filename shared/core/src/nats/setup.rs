//! `fnmesh nats init`: a complete NATS setup in one directory, for a `nats-server` in operator
//! (JWT) mode with its accounts preloaded in the config.
//!
//! | account | who | what it has |
//! |---|---|---|
//! | `SYS` | the server | the system account |
//! | `FNMESH` | gateways and nodes | JetStream (unlimited in its JWT), every fnmesh stream and subject; exports the request/reply service `fnmesh.v1.req.>` |
//! | `CLIENTS` | NATS request/reply clients | no JetStream; imports only that service |
//!
//! One `.creds` file per role (gateway, node, client) holds a user of these accounts whose
//! permissions are the least the role needs ([`permissions`], built from
//! [`crate::subjects`] for each region). Anonymous connections are refused: in operator mode
//! the server admits only users signed by a preloaded account.
//!
//! The operator and account seeds stay in the directory (files 0600, directory 0700), so
//! later commands can mint more credentials; they are never logged.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::jwt::{self, Claims, JwtError, UserPermissions};
use crate::subjects::{self, BusPrefix, BusRole, InboxOwner};

/// The config file `nats-server -c` reads.
pub const CONFIG_FILE: &str = "nats-server.conf";

/// The gateways' work signing key (an nkey seed; `FNMESH_SIGNING_KEY_FILE`).
pub const SIGNING_KEY_FILE: &str = "signing.nk";

/// The public keys nodes trust (`FNMESH_TRUSTED_KEYS_FILE`).
pub const TRUSTED_KEYS_FILE: &str = "trusted.keys";

/// The operator's seed file (the account seeds are `account-<name>.nk` beside it).
const OPERATOR_SEED: &str = "operator.nk";

/// How long a gateway may take to answer a NATS request (its reply permission lasts this
/// long): longer than the longest sync invocation.
const RESPONSE_WINDOW: Duration = Duration::from_secs(30 * 60);

/// A role that gets a `.creds` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `fnmesh gateway`: the HTTP and NATS request APIs, streams, recorder.
    Gateway,
    /// `fnmesh node`: pulls work, runs it, reports.
    Node,
    /// A NATS request/reply client.
    Client,
}

impl Role {
    /// Every role, in the order their files are written.
    pub const ALL: [Role; 3] = [Role::Gateway, Role::Node, Role::Client];

    /// `gateway`, `node` or `client`: the user's name and the creds file's stem.
    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Node => "node",
            Role::Client => "client",
        }
    }

    /// `<name>.creds`.
    pub fn creds_file(self) -> String {
        format!("{}.creds", self.name())
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The directory to write (created 0700; must not hold a setup already).
    pub dir: PathBuf,
    /// The client port.
    pub port: u16,
    /// The address the server listens on.
    pub host: String,
    /// The regions (bus prefixes) gateways and nodes work in.
    pub regions: Vec<BusPrefix>,
}

/// Why the setup could not be written.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The directory already holds a setup (its keys would be lost).
    #[error("{0} already holds a NATS setup; remove it or choose another directory")]
    Exists(PathBuf),
    /// Creating a key or signing a token failed.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// No region was given.
    #[error("at least one region is needed")]
    NoRegion,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// The config file.
    pub config: PathBuf,
    /// The creds file of each role.
    pub creds: Vec<(Role, PathBuf)>,
    /// The gateways' work signing key ([`SIGNING_KEY_FILE`], 0600).
    pub signing_key: PathBuf,
    /// The public keys nodes trust ([`TRUSTED_KEYS_FILE`]).
    pub trusted_keys: PathBuf,
    /// The internal account's public key (gateways and nodes).
    pub internal_account: String,
    /// The client account's public key.
    pub client_account: String,
}

/// The permissions of `role` in `regions`: publish and subscribe allow lists (everything
/// else is denied by the server), and whether it answers requests.
pub fn permissions(role: Role, regions: &[BusPrefix]) -> UserPermissions {
    let gw_inboxes = subjects::inboxes_of(InboxOwner::Gateway);
    let node_inboxes = subjects::inboxes_of(InboxOwner::Node);
    match role {
        Role::Client => UserPermissions {
            publish: vec![subjects::requests_every()],
            // The client account holds nothing else: its inboxes are its own.
            subscribe: vec!["_INBOX.>".to_owned()],
            responses: None,
        },
        Role::Gateway => {
            let mut publish = vec![subjects::jetstream_api_all()];
            let mut subscribe = vec![gw_inboxes, subjects::requests_all()];
            for p in regions {
                publish.extend([
                    subjects::bus_invocations_all(p),
                    subjects::bus_work_ready(p),
                    subjects::jetstream_acks(&subjects::bus_stream(p, BusRole::Events)),
                    subjects::jetstream_acks(&subjects::bus_stream(p, BusRole::DeadLetters)),
                    subjects::object_store_all(&subjects::code_bucket(p)),
                    subjects::jetstream_flow_control(&subjects::object_stream(
                        &subjects::code_bucket(p),
                    )),
                    subjects::jetstream_flow_control(&subjects::kv_stream(
                        &subjects::node_registry_bucket(p),
                    )),
                ]);
                subscribe.push(subjects::bus_function_logs_all(p));
            }
            UserPermissions {
                publish,
                subscribe,
                responses: Some(RESPONSE_WINDOW),
            }
        }
        Role::Node => {
            let mut publish = vec![gw_inboxes];
            let mut subscribe = vec![node_inboxes];
            for p in regions {
                let work = subjects::bus_stream(p, BusRole::Invocations);
                let code = subjects::object_stream(&subjects::code_bucket(p));
                let registry = subjects::kv_stream(&subjects::node_registry_bucket(p));
                // Each line is a subject the node was seen using (nats-server trace of
                // tests/tests/nats_accounts.rs), unless its comment says otherwise.
                publish.extend([
                    // The work queue: look up the stream, list and read its consumers, pull;
                    // settle deliveries (ack, nak, progress, term).
                    subjects::jetstream_api(&["STREAM", "INFO", &work]),
                    subjects::jetstream_api(&["CONSUMER", "LIST", &work]),
                    subjects::jetstream_api(&["CONSUMER", "INFO", &work, "*"]),
                    subjects::jetstream_api(&["CONSUMER", "MSG", "NEXT", &work, "*"]),
                    subjects::jetstream_acks(&work),
                    // Its own signed record of a failed last attempt, captured by the
                    // dead-letter stream (only on a last attempt); never the server's
                    // advisory subjects, which gateways take unsigned.
                    subjects::bus_dead_letter_records(p),
                    // Events and logs out; work hints both ways.
                    subjects::bus_node_events_all(p),
                    subjects::bus_function_logs_all(p),
                    subjects::bus_work_ready(p),
                    // The registry: its bucket looked up, its entries written (heartbeats,
                    // leaving). One node.creds for every node: any node's key.
                    subjects::jetstream_api(&["STREAM", "INFO", &registry]),
                    subjects::kv_entries_all(&subjects::node_registry_bucket(p)),
                    // Code, read only: the bucket looked up, an object's metadata by direct
                    // get, its chunks through an ordered (ephemeral) consumer, whose flow
                    // control it answers (large objects only).
                    subjects::jetstream_api(&["STREAM", "INFO", &code]),
                    subjects::jetstream_api(&["DIRECT", "GET", &code, ">"]),
                    subjects::jetstream_api(&["CONSUMER", "CREATE", &code]),
                    subjects::jetstream_flow_control(&code),
                ]);
                subscribe.push(subjects::bus_work_ready(p));
            }
            UserPermissions {
                publish,
                subscribe,
                responses: None,
            }
        }
    }
}

/// Writes the setup (see the module docs) into `options.dir`, issued at `now` (Unix seconds).
pub fn init(options: &InitOptions, now: i64) -> Result<Written, InitError> {
    if options.regions.is_empty() {
        return Err(InitError::NoRegion);
    }
    let dir = &options.dir;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| InitError::Io { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let dir = std::fs::canonicalize(dir).map_err(io(dir))?;
    let config_path = dir.join(CONFIG_FILE);
    if config_path.exists() || dir.join(OPERATOR_SEED).exists() {
        return Err(InitError::Exists(dir));
    }
    // An existing directory keeps its mode; ours are 0700 whatever the umask.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;

    let key = |kind| nkeys::KeyPair::new_from_raw(kind, crate::random::bytes::<32>());
    let key = |kind| key(kind).map_err(|e| JwtError::Key(e.to_string()));
    let operator = key(nkeys::KeyPairType::Operator)?;
    let system = key(nkeys::KeyPairType::Account)?;
    let internal = key(nkeys::KeyPairType::Account)?;
    let clients = key(nkeys::KeyPairType::Account)?;

    let operator_jwt = Claims::operator(&operator.public_key(), "fnmesh", &system.public_key())
        .sign(&operator, now)?;
    let system_jwt = Claims::account(&system.public_key(), "SYS", false).sign(&operator, now)?;
    let service = "fnmesh requests";
    let requests = subjects::requests_every();
    let internal_jwt = Claims::account(&internal.public_key(), "FNMESH", true)
        .export_service(service, &requests)
        .sign(&operator, now)?;
    let clients_jwt = Claims::account(&clients.public_key(), "CLIENTS", false)
        .import_service(service, &internal.public_key(), &requests)
        .sign(&operator, now)?;

    for (name, pair) in [
        (OPERATOR_SEED, &operator),
        ("account-sys.nk", &system),
        ("account-fnmesh.nk", &internal),
        ("account-clients.nk", &clients),
    ] {
        let seed = pair.seed().map_err(|e| JwtError::Key(e.to_string()))?;
        write_secret(&dir.join(name), format!("{seed}\n").as_bytes())?;
    }

    let mut creds = Vec::new();
    for role in Role::ALL {
        let user = key(nkeys::KeyPairType::User)?;
        let account = if role == Role::Client {
            &clients
        } else {
            &internal
        };
        let token = Claims::user(
            &user.public_key(),
            role.name(),
            &permissions(role, &options.regions),
        )
        .sign(account, now)?;
        let seed = user.seed().map_err(|e| JwtError::Key(e.to_string()))?;
        let path = dir.join(role.creds_file());
        write_secret(&path, jwt::creds_file(&token, &seed).as_bytes())?;
        creds.push((role, path));
    }

    // The gateways' work signing key, and the list of public keys nodes trust.
    let signing = crate::signing::SigningKey::generate();
    let signing_key = dir.join(SIGNING_KEY_FILE);
    write_secret(&signing_key, format!("{}\n", signing.seed()).as_bytes())?;
    let trusted_keys = dir.join(TRUSTED_KEYS_FILE);
    write_secret(
        &trusted_keys,
        format!(
            "# Public keys of the gateways whose signed work nodes run (FNMESH_TRUSTED_KEYS_FILE).\n{}\n",
            signing.public_key()
        )
        .as_bytes(),
    )?;

    // The server keeps its streams in `<store_dir>/jetstream`.
    let store = dir.clone();
    let config = format!(
        "# Written by `fnmesh nats init`: operator mode, accounts preloaded.\n\
         # Accounts: SYS (system), FNMESH (gateways and nodes, JetStream), CLIENTS (imports\n\
         # the request service fnmesh.v1.req.> only). Credentials: gateway.creds, node.creds,\n\
         # client.creds. Anonymous connections are refused.\n\
         host: {host:?}\n\
         port: {port}\n\
         operator: {operator_jwt}\n\
         system_account: {sys}\n\
         resolver: MEMORY\n\
         resolver_preload: {{\n  {sys}: {system_jwt}\n  {int}: {internal_jwt}\n  {cli}: {clients_jwt}\n}}\n\
         jetstream {{\n  store_dir: {store:?}\n}}\n",
        host = options.host,
        port = options.port,
        sys = system.public_key(),
        int = internal.public_key(),
        cli = clients.public_key(),
        store = store.display().to_string(),
    );
    write_secret(&config_path, config.as_bytes())?;
    Ok(Written {
        config: config_path,
        creds,
        signing_key,
        trusted_keys,
        internal_account: internal.public_key(),
        client_account: clients.public_key(),
    })
}

/// Writes a new file with mode 0600.
fn write_secret(path: &Path, contents: &[u8]) -> Result<(), InitError> {
    let io = |source| InitError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path) -> InitOptions {
        InitOptions {
            dir: dir.join("nats"),
            port: 4222,
            host: "127.0.0.1".into(),
            regions: vec![BusPrefix::parse("local").unwrap()],
        }
    }

    #[test]
    fn init_writes_the_config_creds_and_seeds_privately() {
        let tmp = tempfile::tempdir().unwrap();
        let written = init(&options(tmp.path()), 1).unwrap();
        let dir = written.config.parent().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir), 0o700);
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
        for role in Role::ALL {
            let text = std::fs::read_to_string(dir.join(role.creds_file())).unwrap();
            let token = text.lines().nth(1).unwrap();
            let claims = jwt::decode_verified(token).unwrap();
            assert_eq!(claims["name"], role.name());
            let account = if role == Role::Client {
                &written.client_account
            } else {
                &written.internal_account
            };
            assert_eq!(&claims["iss"], account.as_str());
        }
        let config = std::fs::read_to_string(&written.config).unwrap();
        assert!(config.contains("resolver: MEMORY"));
        assert!(config.contains("port: 4222"));
        // The signing key's public half is the one trusted key.
        let seed = std::fs::read_to_string(&written.signing_key).unwrap();
        let key = crate::signing::SigningKey::from_seed(&seed).unwrap();
        let listed = std::fs::read_to_string(&written.trusted_keys).unwrap();
        let keys: Vec<&str> = listed.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(keys, vec![key.public_key()]);
        assert!(matches!(
            init(&options(tmp.path()), 1),
            Err(InitError::Exists(_))
        ));
    }

    #[test]
    fn clients_and_nodes_cannot_publish_invocations_or_manage_streams() {
        let regions = [BusPrefix::parse("eu-1").unwrap()];
        let client = permissions(Role::Client, &regions);
        assert_eq!(client.publish, vec!["fnmesh.v1.req.>".to_owned()]);
        let node = permissions(Role::Node, &regions);
        for p in &node.publish {
            assert!(!p.contains(".inv."), "{p}");
            assert!(
                !p.contains("STREAM.CREATE") && !p.contains("STREAM.DELETE"),
                "{p}"
            );
            assert!(p != "$JS.API.>" && p != ">", "{p}");
        }
        assert!(node
            .publish
            .contains(&"$JS.API.CONSUMER.MSG.NEXT.fnmesh-eu-1-inv.*".to_owned()));
        assert!(!node.subscribe.iter().any(|s| s.starts_with("_FNMESH.gw")));
        let gateway = permissions(Role::Gateway, &regions);
        assert!(gateway.publish.contains(&"fnmesh.v1.eu-1.inv.>".to_owned()));
        assert!(gateway.responses.is_some());
    }
}
