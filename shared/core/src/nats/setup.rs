//! `fnmesh nats init`: a complete NATS setup in one directory, for a `nats-server` in operator
//! (JWT) mode with its accounts preloaded in the config.
//!
//! | account | who | what it has |
//! |---|---|---|
//! | `SYS` | the server | the system account |
//! | `FNMESH` | gateways and nodes | JetStream (unlimited in its JWT), every fnmesh stream and subject; exports the request/reply service `fnmesh.v1.req.>` and the stream of destinations `fnmesh.v1.dest.>` |
//! | `CLIENTS` | NATS request/reply clients | no JetStream; imports only that service and that stream |
//!
//! One `.creds` file per role holds a user of these accounts whose permissions are the least
//! the role needs ([`permissions`], built from [`crate::subjects`] for each region):
//! `gateway.creds`, `client.creds`, and one `node-<id>.creds` **per node** ([`node_permissions`]):
//! a node may write only its own registry entry and read only its own inboxes
//! (`_FNMESH.node.<id>.>`), so one node cannot replace another's signing key, take it out of
//! the registry or read the deliveries (and claims) of its pulls. Its id is in the user's
//! tags (`fnmesh-node:<id>`), from which `fnmesh node` takes its `FNMESH_NODE_ID`.
//! Anonymous connections are refused: in operator mode the server admits only users signed by
//! a preloaded account.
//!
//! The operator and account seeds stay in the directory (files 0600, directory 0700), with the
//! list of regions (`regions`), so [`add_node`] (`fnmesh nats add-node`) can mint a node's
//! credentials later; seeds are never logged.
//!
//! **Edge topology** ([`Topology`], `--edge NAME=PORT`): instead of one `nats-server.conf`, a
//! hub server (`hub.conf`: region and JetStream domain `hub`, a leafnode listener) and one
//! server per edge (`edge-NAME.conf`: region and JetStream domain `NAME`, a leafnode remote
//! that dials the hub with credentials of its own, `leaf-NAME.creds`). Every server preloads
//! the same operator and accounts, so one set of creds works at any of them; the leaf
//! connection binds the edge's `FNMESH` account to the hub's, and only that account crosses
//! it (request/reply clients at an edge stay at that edge).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::jwt::{self, Claims, JwtError, UserPermissions};
use crate::ids::NodeId;
use crate::subjects::{self, BusPrefix, BusRole, InboxOwner};

/// The config file `nats-server -c` reads.
pub const CONFIG_FILE: &str = "nats-server.conf";

/// The hub server's config file in an edge topology.
pub const HUB_CONFIG_FILE: &str = "hub.conf";

/// The region, server name and JetStream domain of the hub in an edge topology.
pub const HUB_REGION: &str = "hub";

/// The config file of edge `name`'s server: `edge-<name>.conf`.
pub fn edge_config_file(name: &BusPrefix) -> String {
    format!("edge-{name}.conf")
}

/// The credentials edge `name`'s server dials the hub with: `leaf-<name>.creds`.
pub fn leaf_creds_file(name: &BusPrefix) -> String {
    format!("leaf-{name}.creds")
}

/// The gateways' work signing key (an nkey seed; `FNMESH_SIGNING_KEY_FILE`).
pub const SIGNING_KEY_FILE: &str = "signing.nk";

/// The public keys nodes trust (`FNMESH_TRUSTED_KEYS_FILE`).
pub const TRUSTED_KEYS_FILE: &str = "trusted.keys";

/// The operator's seed file (the account seeds are `account-<name>.nk` beside it).
const OPERATOR_SEED: &str = "operator.nk";

/// The internal account's seed file: [`add_node`] signs node users with it.
const INTERNAL_ACCOUNT_SEED: &str = "account-fnmesh.nk";

/// The regions the setup was written for, one per line ([`add_node`] reads them).
const REGIONS_FILE: &str = "regions";

/// The tag of a node user's JWT that names its node id: `fnmesh-node:<id>`.
const NODE_TAG: &str = "fnmesh-node:";

/// How long a gateway may take to answer a NATS request (its reply permission lasts this
/// long): longer than the longest sync invocation.
const RESPONSE_WINDOW: Duration = Duration::from_secs(30 * 60);

/// A role that gets one shared `.creds` file (nodes get one each: [`node_creds_file`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `fnmesh gateway`: the HTTP and NATS request APIs, streams, recorder.
    Gateway,
    /// A NATS request/reply client.
    Client,
}

impl Role {
    /// Every role, in the order their files are written.
    pub const ALL: [Role; 2] = [Role::Gateway, Role::Client];

    /// `gateway` or `client`: the user's name and the creds file's stem.
    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Client => "client",
        }
    }

    /// `<name>.creds`.
    pub fn creds_file(self) -> String {
        format!("{}.creds", self.name())
    }
}

/// The creds file of node `id`: `node-<id>.creds`.
pub fn node_creds_file(id: &NodeId) -> String {
    format!("node-{id}.creds")
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
    /// The nodes to write credentials for now ([`add_node`] adds more later).
    pub nodes: Vec<NodeId>,
    /// Where the server keeps its JetStream data (default: `dir` itself; in an edge topology
    /// each server in its own `<name>/` below it).
    pub store_dir: Option<PathBuf>,
    /// A hub and its edges instead of one server ([`Topology`]); the hub listens on `port`.
    pub topology: Option<Topology>,
}

/// A hub and its edge servers, each region its own server and JetStream domain.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The hub's leafnode port, which edge servers dial.
    pub leafnode_port: u16,
    /// The URL edge servers dial the hub at (default: `nats-leaf://<host>:<leafnode_port>`,
    /// with 127.0.0.1 for a wildcard host).
    pub hub_leaf_url: Option<String>,
    /// The edges.
    pub edges: Vec<EdgeServer>,
}

/// One edge of a [`Topology`].
#[derive(Debug, Clone)]
pub struct EdgeServer {
    /// Its region and JetStream domain (not `hub`; unique).
    pub name: BusPrefix,
    /// Its client port.
    pub port: u16,
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
    /// The directory holds no setup written by `fnmesh nats init` (or a damaged one).
    #[error("{path} is not a directory written by `fnmesh nats init`: {why}")]
    NotASetup {
        /// The directory.
        path: PathBuf,
        /// What is missing or unreadable.
        why: String,
    },
    /// The node already has credentials in the directory.
    #[error("{0} already exists: node ids are unique (remove it to mint new credentials)")]
    NodeExists(PathBuf),
    /// An edge topology that cannot work.
    #[error("edge topology: {0}")]
    Topology(String),
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// The config file (the hub's in an edge topology).
    pub config: PathBuf,
    /// Each edge's config file and leaf credentials, in an edge topology.
    pub edges: Vec<(BusPrefix, PathBuf, PathBuf)>,
    /// The creds file of each role.
    pub creds: Vec<(Role, PathBuf)>,
    /// The creds file of each node.
    pub nodes: Vec<(NodeId, PathBuf)>,
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
    match role {
        Role::Client => UserPermissions {
            publish: vec![subjects::requests_every()],
            // The client account holds nothing else: its inboxes are its own, and the
            // destinations gateways publish (imported).
            subscribe: vec!["_INBOX.>".to_owned(), subjects::destinations_all()],
            responses: None,
            ..Default::default()
        },
        Role::Gateway => {
            // Other domains' JetStream too: an edge gateway reads its hub's code bucket and
            // a hub gateway reaches its edges' streams.
            let mut publish = vec![
                subjects::jetstream_api_all(),
                subjects::jetstream_domain_api_all(),
                // Acks of the streams that source edges' records into a hub.
                subjects::jetstream_acks_all(),
                // Functions' NATS destinations.
                subjects::destinations_all(),
            ];
            let mut subscribe = vec![gw_inboxes, subjects::requests_all()];
            for p in regions {
                publish.extend([
                    // The catalog a hub writes and the mirror of it an edge reads.
                    subjects::kv_entries_all(&subjects::catalog_bucket(p)),
                    subjects::jetstream_flow_control(&subjects::catalog_mirror_stream(p)),
                    subjects::bus_invocations_all(p),
                    // Sync work sent straight to a node with a free slot.
                    subjects::bus_direct_all(p),
                    // Cancellations, to the region's nodes.
                    subjects::bus_cancel(p),
                    // An edge's finished invocations, for its hub; an edge's overflow to it.
                    subjects::bus_records(p),
                    subjects::forwards(p),
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
                // Nodes asking for a function consumer the server deleted while work waited.
                subscribe.push(subjects::bus_consumer_missing(p));
                subscribe.push(subjects::requests_in(p));
                subscribe.push(subjects::forwards(p));
            }
            UserPermissions {
                publish,
                subscribe,
                responses: Some(RESPONSE_WINDOW),
                ..Default::default()
            }
        }
    }
}

/// The longest protocol line the servers `init` writes accept (nats-server's default is
/// 4096), so that a CONNECT with a node's JWT fits however many regions it covers.
pub const MAX_CONTROL_LINE: usize = 32 * 1024;

/// The permissions of node `id` in `regions`: pull and settle work, publish its events,
/// logs, replies and dead-letter records, write its own registry entry, read code; subscribe
/// to its own inboxes and the work hints, and read its region's catalog of functions and
/// registry credentials.
pub fn node_permissions(id: &NodeId, regions: &[BusPrefix]) -> UserPermissions {
    // Sync replies go to gateways' inboxes.
    let mut publish = vec![subjects::inboxes_of(InboxOwner::Gateway)];
    // Its own inboxes only: pull deliveries (with their claims) come back on them.
    let mut subscribe = vec![subjects::node_inboxes(id)];
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
            // Work found without its consumer (deleted when inactive): gateways make it.
            subjects::bus_consumer_missing(p),
            // The registry: its bucket looked up, its own entry written (heartbeats,
            // leaving); no other node's.
            subjects::jetstream_api(&["STREAM", "INFO", &registry]),
            subjects::node_registry_entry(p, id),
            // Code, read only: the bucket looked up, an object's metadata by direct
            // get, its chunks through an ordered (ephemeral) consumer, whose flow
            // control it answers (large objects only).
            subjects::jetstream_api(&["STREAM", "INFO", &code]),
            subjects::jetstream_api(&["DIRECT", "GET", &code, ">"]),
            subjects::jetstream_api(&["CONSUMER", "CREATE", &code]),
            subjects::jetstream_flow_control(&code),
        ]);
        subscribe.push(subjects::bus_work_ready(p));
        // Sync work sent straight to it (queue group: one node takes each), answered on
        // the gateway's inbox it names.
        subscribe.push(subjects::bus_direct_all(p));
        // Cancellations (signed by a gateway; never published by a node).
        subscribe.push(subjects::bus_cancel(p));
    }
    // The region's catalog (or, at an edge, its mirror of the hub's), read only and only its
    // functions and registry credentials (what pre-pulling needs; never API keys, secrets or
    // quotas): one consumer per kind, named for this node, whose filter is part of the
    // create subject; its pulls; its deletion (a restarted node starts it afresh). Allowed on
    // any stream (only catalog streams hold `$KV.*.fn.>` and `$KV.*.reg.>` subjects), so the
    // number of permissions, and the size of the node's JWT, does not grow with the regions.
    for kind in subjects::NODE_CATALOG_KINDS {
        let consumer = subjects::placements_consumer(kind, id);
        publish.extend([
            subjects::jetstream_api(&[
                "CONSUMER",
                "CREATE",
                "*",
                &consumer,
                &subjects::catalog_entries_of_kind(kind),
            ]),
            subjects::jetstream_api(&["CONSUMER", "MSG", "NEXT", "*", &consumer]),
            subjects::jetstream_api(&["CONSUMER", "DELETE", "*", &consumer]),
        ]);
    }
    UserPermissions {
        publish,
        subscribe,
        responses: None,
        ..Default::default()
    }
}

/// The permissions of edge `edge`'s leaf connection at the hub, in the `FNMESH` account
/// (`publish`: what the edge may send into the hub; `subscribe`: what the hub may send to
/// the edge). Everything the regions' gateways and nodes exchange across the link is allowed —
/// JetStream of the other domain (catalog mirror, code reads, records sources, probes),
/// overflow forwards and their replies, client requests to another region, inboxes, flow
/// control and acks — and denied is what no edge needs and a compromised edge site could
/// abuse:
/// - writing the hub's buckets (`$KV.>`, `$O.>`: the catalog every edge follows, the node
///   registry, code), forging JetStream advisories (`$JS.EVENT.>`);
/// - any region's work, events, dead-letter records, finished records, work hints and logs,
///   in either direction (`fnmesh.v1.<r>.inv.>` …): work carries payloads and sealed
///   secrets, and an edge's own never needs to cross;
/// - through the hub's JetStream API: reading its work, event and dead-letter streams
///   (direct and message gets, pulls, new consumers) and deleting, purging or changing its
///   streams; any other edge's JetStream API.
pub fn leaf_permissions(edge: &BusPrefix, regions: &[BusPrefix]) -> UserPermissions {
    let hub_api = |tokens: &[&str]| {
        let mut subject = format!("$JS.{HUB_REGION}.API");
        for token in tokens {
            subject.push('.');
            subject.push_str(token);
        }
        subject
    };
    let mut publish_deny = vec![
        "$KV.>".to_owned(),
        "$O.>".to_owned(),
        "$JS.EVENT.>".to_owned(),
        hub_api(&["STREAM", "DELETE", ">"]),
        hub_api(&["STREAM", "PURGE", ">"]),
        hub_api(&["STREAM", "UPDATE", ">"]),
        hub_api(&["STREAM", "MSG", "DELETE", ">"]),
        hub_api(&["ACCOUNT", "PURGE", ">"]),
    ];
    let mut subscribe_deny = Vec::new();
    for r in regions {
        let region_subjects = [
            subjects::bus_invocations_all(r),
            subjects::bus_direct_all(r),
            subjects::bus_cancel(r),
            subjects::bus_node_events_all(r),
            subjects::bus_dead_letter_records(r),
            subjects::bus_records(r),
            subjects::bus_work_ready(r),
            subjects::bus_consumer_missing(r),
            subjects::bus_function_logs_all(r),
        ];
        publish_deny.extend(region_subjects.iter().cloned());
        subscribe_deny.extend(region_subjects);
        if r.as_str() != HUB_REGION && r != edge {
            publish_deny.push(format!("$JS.{r}.API.>"));
        }
    }
    let hub = BusPrefix::parse(HUB_REGION).unwrap_or_else(|_| edge.clone());
    for role in [BusRole::Invocations, BusRole::Events, BusRole::DeadLetters] {
        let stream = subjects::bus_stream(&hub, role);
        publish_deny.extend([
            hub_api(&["DIRECT", "GET", &stream]),
            hub_api(&["DIRECT", "GET", &stream, ">"]),
            hub_api(&["STREAM", "MSG", "GET", &stream]),
            hub_api(&["CONSUMER", "MSG", "NEXT", &stream, ">"]),
            hub_api(&["CONSUMER", "CREATE", &stream]),
            hub_api(&["CONSUMER", "CREATE", &stream, ">"]),
            hub_api(&["CONSUMER", "DURABLE", "CREATE", &stream, ">"]),
        ]);
    }
    UserPermissions {
        publish: vec![">".to_owned()],
        subscribe: vec![">".to_owned()],
        publish_deny,
        subscribe_deny,
        responses: None,
    }
}

/// Writes the setup (see the module docs) into `options.dir`, issued at `now` (Unix seconds).
pub fn init(options: &InitOptions, now: i64) -> Result<Written, InitError> {
    if options.regions.is_empty() {
        return Err(InitError::NoRegion);
    }
    if let Some(topology) = &options.topology {
        check_topology(topology, &options.regions)?;
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
    let config_path = dir.join(match options.topology {
        Some(_) => HUB_CONFIG_FILE,
        None => CONFIG_FILE,
    });
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
    // Destinations of finished invocations, published by gateways, read by clients.
    let destinations = "fnmesh destinations";
    let destination_subjects = subjects::destinations_all();
    let internal_jwt = Claims::account(&internal.public_key(), "FNMESH", true)
        .export_service(service, &requests)
        .export_stream(destinations, &destination_subjects)
        .sign(&operator, now)?;
    let clients_jwt = Claims::account(&clients.public_key(), "CLIENTS", false)
        .import_service(service, &internal.public_key(), &requests)
        .import_stream(destinations, &internal.public_key(), &destination_subjects)
        .sign(&operator, now)?;

    for (name, pair) in [
        (OPERATOR_SEED, &operator),
        ("account-sys.nk", &system),
        (INTERNAL_ACCOUNT_SEED, &internal),
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
    let regions: String = options.regions.iter().map(|r| format!("{r}\n")).collect();
    write_secret(&dir.join(REGIONS_FILE), regions.as_bytes())?;
    let mut nodes = Vec::new();
    for id in &options.nodes {
        let path = write_node_creds(&dir, &internal, id, &options.regions, now)?;
        nodes.push((id.clone(), path));
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

    // A server keeps its streams in `<store_dir>/jetstream` (`<store_dir>/<name>/jetstream`
    // for each server of a topology).
    let store = options.store_dir.clone().unwrap_or_else(|| dir.clone());
    let accounts = format!(
        "operator: {operator_jwt}\n\
         system_account: {sys}\n\
         resolver: MEMORY\n\
         resolver_preload: {{\n  {sys}: {system_jwt}\n  {int}: {internal_jwt}\n  {cli}: {clients_jwt}\n}}\n",
        sys = system.public_key(),
        int = internal.public_key(),
        cli = clients.public_key(),
    );
    let server = |name: Option<&str>, host: &str, port: u16, domain: &str, extra: &str| {
        let store = match name {
            Some(name) => store.join(name),
            None => store.clone(),
        };
        let mut config = String::from(
            "# Written by `fnmesh nats init`: operator mode, accounts preloaded.\n\
             # Accounts: SYS (system), FNMESH (gateways and nodes, JetStream), CLIENTS (imports\n\
             # the request service fnmesh.v1.req.> only). Credentials: gateway.creds,\n\
             # client.creds, node-<id>.creds (one per node). Anonymous connections are refused.\n",
        );
        if let Some(name) = name {
            config += &format!("server_name: {name:?}\n");
        }
        config += &format!("host: {host:?}\nport: {port}\n");
        // A client's CONNECT carries its user JWT, whose permissions grow with the regions a
        // node's credentials cover: past nats-server's default 4 KB protocol line a node of a
        // hub with four edges could not connect.
        config += &format!("max_control_line: {MAX_CONTROL_LINE}\n{accounts}");
        config += &format!(
            "jetstream {{\n  store_dir: {:?}\n",
            store.display().to_string()
        );
        if !domain.is_empty() {
            config += &format!("  domain: {domain:?}\n");
        }
        config += "}\n";
        config + extra
    };
    let mut edges = Vec::new();
    let config = match &options.topology {
        None => server(None, &options.host, options.port, "", ""),
        Some(topology) => {
            let leafnodes = format!(
                "# Edge servers dial in here (leaf-<edge>.creds, account FNMESH).\n\
                 leafnodes {{\n  host: {:?}\n  port: {}\n}}\n",
                options.host, topology.leafnode_port
            );
            let hub_url = topology.hub_leaf_url.clone().unwrap_or_else(|| {
                let host = match options.host.as_str() {
                    "0.0.0.0" | "::" | "" => "127.0.0.1",
                    host => host,
                };
                format!("nats-leaf://{host}:{}", topology.leafnode_port)
            });
            for edge in &topology.edges {
                let creds = dir.join(leaf_creds_file(&edge.name));
                let user = key(nkeys::KeyPairType::User)?;
                let token = Claims::user(
                    &user.public_key(),
                    &format!("leaf {}", edge.name),
                    &leaf_permissions(&edge.name, &options.regions),
                )
                .sign(&internal, now)?;
                let seed = user.seed().map_err(|e| JwtError::Key(e.to_string()))?;
                write_secret(&creds, jwt::creds_file(&token, &seed).as_bytes())?;
                let remote = format!(
                    "# The link to the hub: only the FNMESH account crosses it.\n\
                     leafnodes {{\n  remotes: [\n    {{\n      urls: [{hub_url:?}]\n      \
                     account: {int}\n      credentials: {creds:?}\n    }}\n  ]\n}}\n",
                    int = internal.public_key(),
                    creds = creds.display().to_string(),
                );
                let name = edge.name.as_str();
                let path = dir.join(edge_config_file(&edge.name));
                write_secret(
                    &path,
                    server(Some(name), &options.host, edge.port, name, &remote).as_bytes(),
                )?;
                edges.push((edge.name.clone(), path, creds));
            }
            server(
                Some(HUB_REGION),
                &options.host,
                options.port,
                HUB_REGION,
                &leafnodes,
            )
        }
    };
    write_secret(&config_path, config.as_bytes())?;
    Ok(Written {
        config: config_path,
        edges,
        creds,
        nodes,
        signing_key,
        trusted_keys,
        internal_account: internal.public_key(),
        client_account: clients.public_key(),
    })
}

/// Checks that a topology can run: the hub and every edge among the regions, edge names
/// unique and not the hub's, ports distinct.
fn check_topology(topology: &Topology, regions: &[BusPrefix]) -> Result<(), InitError> {
    let bad = |why: String| Err(InitError::Topology(why));
    if topology.edges.is_empty() {
        return bad("at least one edge is needed".into());
    }
    let mut names = std::collections::HashSet::new();
    let mut ports = std::collections::HashSet::from([topology.leafnode_port]);
    for edge in &topology.edges {
        if edge.name.as_str() == HUB_REGION {
            return bad(format!("an edge may not be named {HUB_REGION:?}"));
        }
        if !names.insert(edge.name.as_str()) {
            return bad(format!("edge {} is listed twice", edge.name));
        }
        if !ports.insert(edge.port) {
            return bad(format!("port {} is used twice", edge.port));
        }
    }
    for needed in std::iter::once(HUB_REGION).chain(names) {
        if !regions.iter().any(|r| r.as_str() == needed) {
            return bad(format!("region {needed} is not among the regions"));
        }
    }
    Ok(())
}

/// Mints the credentials of node `id` in the setup at `dir` (written by [`init`]), issued at
/// `now`: `DIR/node-<id>.creds`, for the regions the setup was written for.
pub fn add_node(dir: &Path, id: &NodeId, now: i64) -> Result<PathBuf, InitError> {
    let not_a_setup = |why: String| InitError::NotASetup {
        path: dir.to_owned(),
        why,
    };
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|e| not_a_setup(format!("{name}: {e}")))
    };
    let seed = read(INTERNAL_ACCOUNT_SEED)?;
    let account = nkeys::KeyPair::from_seed(seed.trim())
        .map_err(|e| not_a_setup(format!("{INTERNAL_ACCOUNT_SEED}: {e}")))?;
    let regions = read(REGIONS_FILE)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            BusPrefix::parse(l.trim()).map_err(|e| not_a_setup(format!("{REGIONS_FILE}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if regions.is_empty() {
        return Err(not_a_setup(format!("{REGIONS_FILE} lists no region")));
    }
    write_node_creds(dir, &account, id, &regions, now)
}

/// The node id a node's credentials were minted for (the `fnmesh-node:<id>` tag of its user
/// JWT), or `None` for other credentials (a gateway's, or a user made by other tools).
pub fn node_of_creds(creds: &str) -> Result<Option<NodeId>, JwtError> {
    let Some(token) = jwt::creds_user_jwt(creds) else {
        return Err(JwtError::Malformed("no user JWT in the creds file".into()));
    };
    let claims = jwt::decode_verified(token)?;
    let tags = claims["nats"]["tags"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for tag in tags {
        if let Some(id) = tag.as_str().and_then(|t| t.strip_prefix(NODE_TAG)) {
            return NodeId::parse(id)
                .map(Some)
                .map_err(|e| JwtError::Malformed(e.to_string()));
        }
    }
    Ok(None)
}

fn write_node_creds(
    dir: &Path,
    account: &nkeys::KeyPair,
    id: &NodeId,
    regions: &[BusPrefix],
    now: i64,
) -> Result<PathBuf, InitError> {
    let path = dir.join(node_creds_file(id));
    if path.exists() {
        return Err(InitError::NodeExists(path));
    }
    let user = nkeys::KeyPair::new_from_raw(nkeys::KeyPairType::User, crate::random::bytes::<32>())
        .map_err(|e| JwtError::Key(e.to_string()))?;
    let token = Claims::user(
        &user.public_key(),
        &format!("node {id}"),
        &node_permissions(id, regions),
    )
    .tag(&format!("{NODE_TAG}{id}"))
    .sign(account, now)?;
    let seed = user.seed().map_err(|e| JwtError::Key(e.to_string()))?;
    write_secret(&path, jwt::creds_file(&token, &seed).as_bytes())?;
    Ok(path)
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
            nodes: vec![NodeId::parse("node-1").unwrap()],
            store_dir: None,
            topology: None,
        }
    }

    fn topology(dir: &Path, edges: &[(&str, u16)]) -> InitOptions {
        let edges: Vec<EdgeServer> = edges
            .iter()
            .map(|(name, port)| EdgeServer {
                name: BusPrefix::parse(name).unwrap(),
                port: *port,
            })
            .collect();
        let mut regions = vec![BusPrefix::parse(HUB_REGION).unwrap()];
        regions.extend(edges.iter().map(|e| e.name.clone()));
        InitOptions {
            regions,
            topology: Some(Topology {
                leafnode_port: 7422,
                hub_leaf_url: None,
                edges,
            }),
            ..options(dir)
        }
    }

    #[test]
    fn a_topology_writes_a_hub_and_one_server_per_edge_each_its_own_domain() {
        let tmp = tempfile::tempdir().unwrap();
        let written = init(&topology(tmp.path(), &[("eu", 4223), ("us", 4224)]), 1).unwrap();
        let dir = written.config.parent().unwrap();
        assert_eq!(written.config, dir.join(HUB_CONFIG_FILE));
        assert!(!dir.join(CONFIG_FILE).exists());
        let hub = std::fs::read_to_string(&written.config).unwrap();
        assert!(hub.contains("domain: \"hub\""), "{hub}");
        assert!(
            hub.contains("leafnodes {\n  host: \"127.0.0.1\"\n  port: 7422"),
            "{hub}"
        );
        assert!(hub.contains(&format!(
            "store_dir: {:?}",
            dir.join("hub").display().to_string()
        )));
        let names: Vec<&str> = written.edges.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["eu", "us"]);
        for (name, config, creds) in &written.edges {
            assert_eq!(config, &dir.join(format!("edge-{name}.conf")));
            let text = std::fs::read_to_string(config).unwrap();
            assert!(text.contains(&format!("domain: \"{name}\"")), "{text}");
            assert!(
                text.contains("urls: [\"nats-leaf://127.0.0.1:7422\"]"),
                "{text}"
            );
            assert!(text.contains(&format!("account: {}", written.internal_account)));
            assert!(text.contains(&format!("credentials: {:?}", creds.display().to_string())));
            // The same operator and accounts as the hub.
            let operator = |t: &str| {
                t.lines()
                    .find(|l| l.starts_with("operator:"))
                    .map(str::to_owned)
            };
            assert_eq!(operator(&text), operator(&hub));
            let leaf = std::fs::read_to_string(creds).unwrap();
            let claims = jwt::decode_verified(jwt::creds_user_jwt(&leaf).unwrap()).unwrap();
            assert_eq!(&claims["iss"], written.internal_account.as_str());
        }
        // Node credentials cover every region.
        let node = std::fs::read_to_string(&written.nodes[0].1).unwrap();
        let claims = jwt::decode_verified(jwt::creds_user_jwt(&node).unwrap()).unwrap();
        let publish = claims["nats"]["pub"]["allow"].to_string();
        for region in ["hub", "eu", "us"] {
            assert!(
                publish.contains(&format!("fnmesh-{region}-inv")),
                "{publish}"
            );
        }
    }

    #[test]
    fn topologies_that_cannot_run_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for (edges, why) in [
            (vec![("hub", 4223)], "named"),
            (vec![("eu", 4223), ("eu", 4224)], "twice"),
            (vec![("eu", 4223), ("us", 4223)], "port 4223"),
            (vec![("eu", 7422)], "port 7422"),
            (vec![], "at least one edge"),
        ] {
            let options = topology(tmp.path(), &edges);
            let err = init(&options, 1).unwrap_err();
            assert!(
                matches!(&err, InitError::Topology(m) if m.contains(why)),
                "{edges:?}: {err}"
            );
        }
        let mut options = topology(tmp.path(), &[("eu", 4223)]);
        options.regions.truncate(1);
        assert!(matches!(init(&options, 1), Err(InitError::Topology(_))));
        assert!(!tmp.path().join("nats").exists(), "nothing written");
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
    fn each_node_gets_credentials_of_its_own_and_more_can_be_added() {
        let tmp = tempfile::tempdir().unwrap();
        let written = init(&options(tmp.path()), 1).unwrap();
        let dir = written.config.parent().unwrap();
        let first = NodeId::parse("node-1").unwrap();
        assert_eq!(
            written.nodes,
            vec![(first.clone(), dir.join("node-node-1.creds"))]
        );
        let text = std::fs::read_to_string(&written.nodes[0].1).unwrap();
        assert_eq!(node_of_creds(&text).unwrap(), Some(first.clone()));
        let claims = jwt::decode_verified(jwt::creds_user_jwt(&text).unwrap()).unwrap();
        assert_eq!(&claims["iss"], written.internal_account.as_str());
        // A gateway's credentials name no node.
        let gateway = std::fs::read_to_string(dir.join("gateway.creds")).unwrap();
        assert_eq!(node_of_creds(&gateway).unwrap(), None);

        let second = NodeId::parse("edge-7").unwrap();
        let path = add_node(dir, &second, 2).unwrap();
        assert_eq!(path, dir.join("node-edge-7.creds"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(node_of_creds(&text).unwrap(), Some(second.clone()));
        let claims = jwt::decode_verified(jwt::creds_user_jwt(&text).unwrap()).unwrap();
        assert_eq!(&claims["iss"], written.internal_account.as_str());
        let publish = claims["nats"]["pub"]["allow"].as_array().unwrap();
        assert!(publish.contains(&serde_json::json!("$KV.fnmesh-local-nodes.edge-7")));
        assert!(matches!(
            add_node(dir, &second, 3),
            Err(InitError::NodeExists(_))
        ));
        assert!(matches!(
            add_node(tmp.path(), &second, 3),
            Err(InitError::NotASetup { .. })
        ));
    }

    #[test]
    fn a_node_may_touch_only_its_own_registry_entry_and_inboxes() {
        let regions = [
            BusPrefix::parse("eu-1").unwrap(),
            BusPrefix::parse("eu-2").unwrap(),
        ];
        let id = NodeId::parse("edge-1").unwrap();
        let node = node_permissions(&id, &regions);
        let registry: Vec<&String> = node
            .publish
            .iter()
            .filter(|p| p.starts_with("$KV."))
            .collect();
        assert_eq!(
            registry,
            vec![
                "$KV.fnmesh-eu-1-nodes.edge-1",
                "$KV.fnmesh-eu-2-nodes.edge-1"
            ]
        );
        let inboxes: Vec<&String> = node
            .subscribe
            .iter()
            .filter(|s| s.starts_with("_FNMESH"))
            .collect();
        assert_eq!(inboxes, vec!["_FNMESH.node.edge-1.>"]);
        assert!(!node
            .publish
            .iter()
            .any(|p| p.ends_with('>') && p.starts_with("$KV")));
    }

    #[test]
    fn clients_and_nodes_cannot_publish_invocations_or_manage_streams() {
        let regions = [BusPrefix::parse("eu-1").unwrap()];
        let client = permissions(Role::Client, &regions);
        assert_eq!(client.publish, vec!["fnmesh.v1.req.>".to_owned()]);
        let node = node_permissions(&NodeId::parse("n1").unwrap(), &regions);
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

    #[test]
    fn a_leaf_link_denies_buckets_work_and_the_hubs_work_streams() {
        let regions: Vec<BusPrefix> = ["hub", "eu", "us"]
            .iter()
            .map(|r| BusPrefix::parse(r).unwrap())
            .collect();
        let leaf = leaf_permissions(&regions[1], &regions);
        assert_eq!(leaf.publish, vec![">"]);
        for denied in [
            "$KV.>",
            "$O.>",
            "fnmesh.v1.hub.inv.>",
            "fnmesh.v1.hub.direct.>",
            "fnmesh.v1.eu.direct.>",
            "fnmesh.v1.eu.evt.>",
            "fnmesh.v1.us.dlq",
            "$JS.hub.API.STREAM.DELETE.>",
            "$JS.hub.API.DIRECT.GET.fnmesh-hub-inv.>",
            "$JS.hub.API.CONSUMER.MSG.NEXT.fnmesh-hub-dlq.>",
            "$JS.us.API.>",
        ] {
            assert!(
                leaf.publish_deny.contains(&denied.to_owned()),
                "{denied} not denied"
            );
        }
        assert!(leaf
            .subscribe_deny
            .contains(&"fnmesh.v1.hub.inv.>".to_owned()));
        // What the regions exchange stays open.
        for open in [
            "fnmesh.v1.hub.fwd",
            "$JS.hub.API.>",
            "$JS.eu.API.>",
            "fnmesh.v1.req.>",
        ] {
            assert!(!leaf.publish_deny.contains(&open.to_owned()), "{open}");
        }
    }
}
