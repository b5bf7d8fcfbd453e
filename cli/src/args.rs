//! Command-line arguments. Every flag has an environment twin.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// fnmesh: a self-hosted Function-as-a-Service platform.
#[derive(Debug, Parser)]
#[command(name = "fnmesh", version, about)]
pub struct Cli {
    /// Print JSON instead of tables (client commands).
    #[arg(long, global = true, env = "FNMESH_JSON")]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a gateway and a node in one process on the embedded backends.
    Up(UpArgs),
    /// Run a gateway (HTTP API) over NATS JetStream.
    Gateway(GatewayCommand),
    /// Run a worker node over NATS JetStream.
    Node(NodeCommand),
    /// Print every environment variable the binary reads, one per line.
    #[command(name = "env-vars", hide = true)]
    EnvVars,
    /// Manage functions.
    #[command(name = "fn", subcommand)]
    Function(FnCommand),
    /// Invoke a function.
    Invoke(InvokeArgs),
    /// Inspect invocations.
    #[command(subcommand)]
    Invocation(InvocationCommand),
    /// Show the captured output of an invocation.
    Logs(LogsArgs),
    /// Manage the namespace's credentials for image registries.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Benchmarks that print figures side by side with their baselines.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Set up NATS for a mesh.
    #[command(subcommand)]
    Nats(NatsCommand),
    /// Apply the PostgreSQL schema migrations.
    Migrate {
        /// The database to migrate.
        #[arg(long, env = "FNMESH_DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Internal: the single-threaded sandbox supervisor (started by nodes).
    #[command(name = "__supervisor", hide = true)]
    Supervisor,
}

/// `fnmesh nats …`.
#[derive(Debug, Subcommand)]
pub enum NatsCommand {
    /// Write a NATS server config in operator (JWT) mode, its accounts, and one credentials
    /// file per role (gateway.creds, client.creds, node-<id>.creds per node) into a new
    /// directory.
    Init(NatsInitArgs),
    /// Mint the credentials of one more node (DIR/node-<id>.creds) in a directory written by
    /// `fnmesh nats init`.
    AddNode(NatsAddNodeArgs),
}

/// `fnmesh nats add-node`.
#[derive(Debug, Args)]
pub struct NatsAddNodeArgs {
    /// The directory `fnmesh nats init` wrote.
    #[arg(long)]
    pub dir: PathBuf,
    /// The node's id (its FNMESH_NODE_ID; `fnmesh node` takes it from the credentials).
    #[arg(long)]
    pub id: String,
}

/// `fnmesh nats init`.
#[derive(Debug, Args)]
pub struct NatsInitArgs {
    /// The directory to write (created with mode 0700; must not hold a setup already).
    #[arg(long)]
    pub dir: PathBuf,
    /// The server's client port (the hub's, with --edge).
    #[arg(long, alias = "hub-port", default_value_t = 4222)]
    pub port: u16,
    /// The address the server listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// Regions (FNMESH_REGION) the gateways and nodes work in; repeat for several (default:
    /// local; with --edge the regions are `hub` and the edges).
    #[arg(long = "region")]
    pub regions: Vec<String>,
    /// An edge region served by a server of its own on PORT (`NAME=PORT`), linked to the hub
    /// as a leaf node with its own JetStream domain: writes hub.conf and edge-NAME.conf
    /// instead of nats-server.conf. Repeat for several.
    #[arg(long = "edge", value_name = "NAME=PORT")]
    pub edges: Vec<String>,
    /// The hub's leafnode port, which edge servers dial (with --edge).
    #[arg(long, default_value_t = 7422)]
    pub leafnode_port: u16,
    /// The URL edge servers dial the hub at (default: nats-leaf://HOST:LEAFNODE_PORT, with
    /// 127.0.0.1 for a wildcard host).
    #[arg(long)]
    pub hub_leaf_url: Option<String>,
    /// Nodes to write credentials for (node-<id>.creds each; a node may write only its own
    /// registry entry); repeat for several, or add them later with `fnmesh nats add-node`.
    #[arg(long = "node", default_value = "node-1")]
    pub nodes: Vec<String>,
    /// Where the server keeps its JetStream data (default: DIR).
    #[arg(long)]
    pub store_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Run over NATS JetStream instead of the in-process bus (`nats://host:port`).
    #[arg(long, env = "FNMESH_NATS_URL")]
    pub nats_url: Option<String>,
    /// Region: the bus prefix (streams, subjects, consumers) this process works in.
    #[arg(long, env = "FNMESH_REGION", default_value = "local")]
    pub region: String,
    #[command(flatten)]
    pub nats: NatsAuthArgs,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    #[command(flatten)]
    pub signing: SigningArgs,
}

/// `fnmesh gateway`: the HTTP API only; nodes run elsewhere, connected over NATS.
#[derive(Debug, Args)]
pub struct GatewayCommand {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// The hub region this gateway's region follows, when it is an edge: functions, secrets,
    /// keys and quotas deployed at the hub are replicated here over the leaf link (and
    /// refused here). Unset: the gateway publishes its region's catalog for edges to follow.
    #[arg(long, env = "FNMESH_HUB_REGION")]
    pub hub_region: Option<String>,
}

/// `fnmesh node`: a worker node only, pulling work from NATS.
#[derive(Debug, Args)]
pub struct NodeCommand {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// Where code is fetched from by checksum: `s3://<bucket>` or a directory shared with
    /// the gateways (default: the region's NATS code bucket).
    #[arg(long, env = "FNMESH_CODE_STORE")]
    pub code_store: Option<String>,
}

/// Settings every long-running command shares.
#[derive(Debug, Args, Clone)]
pub struct CommonArgs {
    /// Where data (database, code, sandboxes, admin key) is kept.
    #[arg(long, env = "FNMESH_DATA_DIR", default_value = "./.fnmesh")]
    pub data_dir: PathBuf,
    /// Seconds to wait for in-flight work on shutdown.
    #[arg(long, env = "FNMESH_DRAIN_SECS", default_value_t = 30)]
    pub drain_secs: u64,
    #[command(flatten)]
    pub secrets: SecretsArgs,
    /// Bearer token a Prometheus scrape presents: the gateway's `GET /metrics` takes it besides
    /// admin credentials; a node's FNMESH_METRICS_LISTEN listener takes only it (16 to 512
    /// visible ASCII characters).
    #[arg(long, env = "FNMESH_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// A file holding the metrics scrape token.
    #[arg(long, env = "FNMESH_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// Image registries (`host[:port]`, comma-separated) reached over plain HTTP, by gateways
    /// resolving tags and by nodes pulling; every other registry only over HTTPS.
    #[arg(long, env = "FNMESH_INSECURE_REGISTRIES", value_delimiter = ',')]
    pub insecure_registries: Vec<String>,
}

/// The NATS connection of `gateway` and `node`.
#[derive(Debug, Args, Clone)]
pub struct MeshArgs {
    /// NATS server with JetStream (`nats://host:port`).
    #[arg(long, env = "FNMESH_NATS_URL")]
    pub nats_url: String,
    /// Region: the bus prefix (streams, subjects, consumers) this process works in.
    #[arg(long, env = "FNMESH_REGION", default_value = "local")]
    pub region: String,
    #[command(flatten)]
    pub nats: NatsAuthArgs,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    #[command(flatten)]
    pub signing: SigningArgs,
}

/// How work on NATS is signed (gateways) and which signers are trusted (nodes).
#[derive(Debug, Args, Clone, Default)]
pub struct SigningArgs {
    /// A gateway's work signing key: an nkey seed (`SN…`; default: `<data dir>/signing.nk`,
    /// generated on first start).
    #[arg(long, env = "FNMESH_SIGNING_KEY", hide_env_values = true)]
    pub signing_key: Option<String>,
    /// A file holding the signing key (`fnmesh nats init` writes `DIR/signing.nk`).
    #[arg(long, env = "FNMESH_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// Public keys (`N…`, separated by commas) of the gateways whose signed work is run here.
    #[arg(long, env = "FNMESH_TRUSTED_KEYS")]
    pub trusted_keys: Option<String>,
    /// A file of trusted public keys, one per line (`fnmesh nats init` writes `DIR/trusted.keys`).
    #[arg(long, env = "FNMESH_TRUSTED_KEYS_FILE")]
    pub trusted_keys_file: Option<PathBuf>,
}

/// Delivery guarantees of the bus (set the same on every gateway and node of a region).
#[derive(Debug, Args, Clone)]
pub struct DeliveryArgs {
    /// Seconds a delivery may go without an ack or a progress heartbeat before it is given to
    /// another node (a crashed node's work is redelivered after this).
    #[arg(long, env = "FNMESH_ACK_WAIT_SECS", default_value_t = 30)]
    pub ack_wait_secs: u64,
    /// Attempts of an invocation before it is dead-lettered.
    #[arg(long, env = "FNMESH_MAX_DELIVER", default_value_t = 3)]
    pub max_deliver: u32,
    /// Node events the event stream keeps (not yet recorded) at most; when it is full, nodes
    /// hold their results and retry until the recorders catch up.
    #[arg(long, env = "FNMESH_EVENT_CAPACITY", default_value_t = 100_000)]
    pub event_capacity: usize,
    /// Invocations queued or running at most, in all; past it an invoke is 503 `queue_full`.
    #[arg(long, env = "FNMESH_QUEUE_CAPACITY", default_value_t = 100_000)]
    pub queue_capacity: usize,
    /// Invocations of one function queued or running at most; past it an invoke of that
    /// function is 429 `function_queue_full` (others go on).
    #[arg(long, env = "FNMESH_FUNCTION_QUEUE_CAPACITY", default_value_t = 5_000)]
    pub function_queue_capacity: usize,
    /// Invocations of one namespace queued or running at most; past it an invoke in that
    /// namespace is 429 `namespace_queue_full` (other namespaces go on).
    #[arg(
        long,
        env = "FNMESH_NAMESPACE_QUEUE_CAPACITY",
        default_value_t = 10_000
    )]
    pub namespace_queue_capacity: usize,
    /// Seconds a function's work consumer lives on the NATS server without pulls or acks
    /// (its function had no work) before the server deletes it; the next invocation makes it
    /// again. So the server holds consumers only for functions with recent traffic. 0 keeps
    /// them for ever. Read by gateways (they make the consumers).
    #[arg(
        long,
        env = "FNMESH_FUNCTION_CONSUMER_IDLE_SECS",
        default_value_t = 300
    )]
    pub function_consumer_idle_secs: u64,
    /// Whether a gateway sends sync invocations straight to a node with a free slot (one
    /// core-NATS request; the node answers at once whether it took it) before queueing them
    /// in JetStream. Such calls count against a function's `max_concurrency` per gateway and
    /// per node, not across the cluster as queued work does; `false` (the default) queues
    /// every invocation. Read by gateways.
    #[arg(
        long,
        env = "FNMESH_DIRECT_SYNC",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub direct_sync: bool,
    /// JetStream replicas of the streams and buckets a gateway creates (1 to 5; 3 on a
    /// 3-server cluster). Existing streams are updated to it; existing buckets keep theirs.
    #[arg(long, env = "FNMESH_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
}

impl DeliveryArgs {
    /// The bus settings.
    pub fn bus_config(&self) -> fnmesh_bus::BusConfig {
        fnmesh_bus::BusConfig {
            ack_wait: std::time::Duration::from_secs(self.ack_wait_secs.max(1)),
            max_deliver: self.max_deliver.clamp(1, 100),
            event_capacity: self.event_capacity.max(1),
            capacity: self.queue_capacity.max(1),
            function_capacity: self.function_queue_capacity.max(1),
            namespace_capacity: self.namespace_queue_capacity.max(1),
            replicas: usize::from(self.stream_replicas),
            function_consumer_idle: std::time::Duration::from_secs(
                self.function_consumer_idle_secs,
            ),
            direct_sync: self.direct_sync,
            ..fnmesh_bus::BusConfig::default()
        }
    }
}

/// Credentials and TLS of the NATS connection.
#[derive(Debug, Args, Clone, Default)]
pub struct NatsAuthArgs {
    /// A NATS `.creds` file (user JWT and nkey seed).
    #[arg(long, env = "FNMESH_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// PEM CA certificates to verify the NATS servers with (turns TLS on).
    #[arg(long, env = "FNMESH_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `--nats-tls-key`).
    #[arg(long, env = "FNMESH_NATS_TLS_CERT")]
    pub nats_tls_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long, env = "FNMESH_NATS_TLS_KEY")]
    pub nats_tls_key: Option<PathBuf>,
    /// Refuse NATS connections without TLS.
    #[arg(long, env = "FNMESH_NATS_REQUIRE_TLS", default_value_t = false)]
    pub nats_require_tls: bool,
}

impl NatsAuthArgs {
    /// The connection options for `url`, for a process whose inboxes are `owner`'s.
    pub fn options(
        &self,
        url: &str,
        owner: fnmesh_core::subjects::InboxOwner,
    ) -> fnmesh_core::nats::NatsOptions {
        fnmesh_core::nats::NatsOptions {
            url: url.to_owned(),
            creds_file: self.nats_creds.clone(),
            tls_ca_file: self.nats_tls_ca.clone(),
            tls_cert_file: self.nats_tls_cert.clone(),
            tls_key_file: self.nats_tls_key.clone(),
            require_tls: self.nats_require_tls,
            inbox_owner: owner,
            node_id: None,
        }
    }
}

/// Settings of the HTTP API.
#[derive(Debug, Args, Clone)]
pub struct GatewayArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "FNMESH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The bootstrap admin API key (default: read or generate `<data dir>/admin.key`).
    #[arg(long, env = "FNMESH_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Request bodies larger than this are refused with 413.
    #[arg(long, env = "FNMESH_MAX_BODY_BYTES", default_value_t = 6 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Code archives uploaded raw (`Content-Type: application/zip`, `application/gzip`,
    /// `application/x-tar`) or as a multipart form larger than this are refused with 413;
    /// they are spooled to disk, never held in memory.
    #[arg(long, env = "FNMESH_MAX_ARCHIVE_BYTES",
          default_value_t = fnmesh_gateway::DEFAULT_MAX_ARCHIVE_BYTES)]
    pub max_archive_bytes: usize,
    /// Code that unpacks to more than this is refused (at most 250 MiB, what nodes unpack).
    #[arg(long, env = "FNMESH_MAX_UNPACKED_BYTES",
          default_value_t = fnmesh_core::archive::DEFAULT_MAX_UNPACKED_BYTES,
          value_parser = clap::value_parser!(u64).range(1..=fnmesh_core::archive::DEFAULT_MAX_UNPACKED_BYTES))]
    pub max_unpacked_bytes: u64,
    /// Seconds over which authentication failures (401) of one source and action are summed
    /// into one audit entry (at least 1).
    #[arg(long, env = "FNMESH_AUDIT_FAILURE_WINDOW_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub audit_failure_window_secs: u64,
    /// Hours finished invocations (records and logs) are kept before they are removed; 0
    /// keeps them forever.
    #[arg(long, env = "FNMESH_RETENTION_HOURS", default_value_t = 7 * 24)]
    pub retention_hours: u64,
    /// Hosts a function's webhook destinations may name, comma-separated: `host`, `*.domain`,
    /// `http://host[:port]` (plain HTTP allowed), and address ranges (`10.0.0.0/8`) that may
    /// be reached although not public. Empty: no webhooks.
    #[arg(long, env = "FNMESH_WEBHOOK_ALLOWLIST", default_value = "")]
    pub webhook_allowlist: String,
    /// Tries of a destination delivery before it is given up.
    #[arg(long, env = "FNMESH_DESTINATION_MAX_ATTEMPTS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub destination_max_attempts: u32,
    /// Milliseconds before a failed destination delivery is tried again, doubled after each
    /// try (up to 10 minutes).
    #[arg(long, env = "FNMESH_DESTINATION_RETRY_BASE_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub destination_retry_base_ms: u64,
    #[command(flatten)]
    pub backends: BackendArgs,
    #[command(flatten)]
    pub tokens: TokenArgs,
}

/// Settings of a worker node.
#[derive(Debug, Args, Clone)]
pub struct NodeArgs {
    /// This node's id (default: generated).
    #[arg(long, env = "FNMESH_NODE_ID")]
    pub node_id: Option<String>,
    /// Invocations run at once.
    #[arg(long, env = "FNMESH_NODE_SLOTS", default_value_t = 16)]
    pub slots: usize,
    /// How each sandbox gets its own host uid: `userns` (its own user namespace mapping
    /// container ids onto a block of host ids), `host` (that host uid directly) or `auto`
    /// (userns where the kernel and the data dir's permissions allow it).
    #[arg(long, env = "FNMESH_SANDBOX_USERS", default_value = "auto")]
    pub sandbox_users: fnmesh_nodes::sandbox::users::IdMode,
    /// First host id of the blocks of 65536 ids claimed for sandboxes (blocks used by host
    /// accounts, /etc/sub[ug]id or other nodes on the host are skipped).
    #[arg(long, env = "FNMESH_SANDBOX_ID_BASE", default_value_t = fnmesh_nodes::sandbox::users::DEFAULT_BASE)]
    pub sandbox_id_base: u32,
    /// Live sandboxes kept at most.
    #[arg(long, env = "FNMESH_MAX_SANDBOXES", default_value_t = 64)]
    pub max_sandboxes: usize,
    /// Sandbox supervisor processes (1..=16): each creates and destroys one sandbox at a time,
    /// so a burst of cold starts spreads over them.
    #[arg(long, env = "FNMESH_SANDBOX_SUPERVISORS", default_value_t = 2)]
    pub sandbox_supervisors: usize,
    /// Idle sandboxes are reaped after this many seconds.
    #[arg(long, env = "FNMESH_KEEP_ALIVE_SECS", default_value_t = 300)]
    pub keep_alive_secs: u64,
    /// Seconds between the node's heartbeats to the node registry (it drops out after three
    /// missed ones).
    #[arg(long, env = "FNMESH_HEARTBEAT_SECS", default_value_t = 2)]
    pub heartbeat_secs: u64,
    /// Serve the node's Prometheus metrics on `GET /metrics` at this address, to scrapes that
    /// present FNMESH_METRICS_TOKEN (default: off; in `fnmesh up` the gateway's `/metrics`
    /// includes them anyway).
    #[arg(long, env = "FNMESH_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Longest result (its JSON, in bytes) a function may return; longer is `invalid_result`.
    /// Over NATS it is lowered to what the server's max_payload leaves beside 448 KiB for logs.
    #[arg(long, env = "FNMESH_MAX_RESULT_BYTES", default_value_t = 512 * 1024)]
    pub max_result_bytes: usize,
    /// Disk space the node's cache of unpacked code may take, in bytes; beyond it, the least
    /// recently used code no sandbox or invocation holds is deleted (fetched again if needed).
    #[arg(long, env = "FNMESH_CODE_CACHE_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    pub code_cache_bytes: u64,
    /// Disk space the node's image cache (pulled blobs and unpacked trees) may take, in
    /// bytes; beyond it, the least recently used images no sandbox uses are deleted.
    #[arg(long, env = "FNMESH_IMAGE_CACHE_BYTES", default_value_t = 10 * 1024 * 1024 * 1024)]
    pub image_cache_bytes: u64,
    /// Images of the functions placed in the node's region pulled at once before their first
    /// invocation (0: no pre-pulling).
    #[arg(long, env = "FNMESH_IMAGE_PREPULL_CONCURRENCY", default_value_t = 2)]
    pub image_prepull_concurrency: usize,
    /// Bytes per second all pre-pulls of the node take together at most (0: unbounded);
    /// an invocation waiting for an image being pre-pulled lifts the bound for it.
    #[arg(long, env = "FNMESH_IMAGE_PREPULL_BYTES_PER_SEC", default_value_t = 32 * 1024 * 1024)]
    pub image_prepull_bytes_per_sec: u64,
}

/// Which backends a gateway uses (defaults: the embedded ones inside the data dir).
#[derive(Debug, Args, Clone)]
pub struct BackendArgs {
    /// Metadata store: `postgres://user@host:port/db` or `sqlite://<path>`
    /// (default: `sqlite://<data dir>/fnmesh.db`).
    #[arg(long, env = "FNMESH_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Apply PostgreSQL migrations at start (SQLite's are always applied).
    #[arg(long, env = "FNMESH_MIGRATE", default_value_t = false)]
    pub migrate: bool,
    /// Code store: `s3://<bucket>` (with FNMESH_S3_ENDPOINT, FNMESH_S3_REGION,
    /// FNMESH_S3_PATH_STYLE, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or a directory
    /// (default: `<data dir>/code`).
    #[arg(long, env = "FNMESH_CODE_STORE")]
    pub code_store: Option<String>,
    /// Redis for rate limits shared by all gateways (default: in-memory limits).
    #[arg(long, env = "FNMESH_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// What rate limiting does when Redis is down: `fail_open` (local limits) or `fail_closed`.
    #[arg(long, env = "FNMESH_RATE_LIMIT_FAILURE", default_value = "fail_open")]
    pub rate_limit_failure: String,
    /// Per-API-key limit, requests per second (0 disables the per-key limit).
    #[arg(long, env = "FNMESH_KEY_RATE_LIMIT", default_value_t = 1000)]
    pub key_rate_per_second: u32,
    /// Per-API-key burst.
    #[arg(long, env = "FNMESH_KEY_RATE_BURST", default_value_t = 2000)]
    pub key_rate_burst: u32,
    /// Per-namespace limit on invocations (HTTP and NATS), per second, counted besides the
    /// per-key limit (0 disables it).
    #[arg(long, env = "FNMESH_NAMESPACE_RATE_LIMIT", default_value_t = fnmesh_gateway::DEFAULT_NAMESPACE_RATE)]
    pub namespace_rate_per_second: u32,
    /// Per-namespace burst (at least 1 unless the limit is 0).
    #[arg(long, env = "FNMESH_NAMESPACE_RATE_BURST", default_value_t = fnmesh_gateway::DEFAULT_NAMESPACE_BURST)]
    pub namespace_rate_burst: u32,
}

/// Where client commands connect.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// The gateway's URL.
    #[arg(long, env = "FNMESH_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key (default: `<data dir>/admin.key` when present).
    #[arg(long, env = "FNMESH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Data dir whose admin.key is the default API key.
    #[arg(long, env = "FNMESH_DATA_DIR", default_value = "./.fnmesh")]
    pub data_dir: PathBuf,
}

/// `fnmesh registry …`.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Store the namespace's credential for a registry (sealed; deploys resolve tags and nodes
    /// pull with it). The password or token is read from stdin, or from
    /// FNMESH_REGISTRY_PASSWORD.
    Login {
        #[command(flatten)]
        client: ClientArgs,
        /// The registry, `host[:port]`.
        host: String,
        /// The user name.
        #[arg(long, short = 'u')]
        username: String,
        /// The password or token (read from stdin when not set).
        #[arg(long, env = "FNMESH_REGISTRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// List the registries the namespace has credentials for.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove the namespace's credential for a registry.
    Logout {
        #[command(flatten)]
        client: ClientArgs,
        /// The registry, `host[:port]`.
        host: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum FnCommand {
    /// Create a function, or add a version if it exists.
    Deploy(DeployArgs),
    /// List functions.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show a function.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
        /// A specific version.
        #[arg(long)]
        version: Option<u32>,
    },
    /// Delete a function and all its versions.
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
    },
    /// List a function's versions.
    Versions {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
    },
    /// Manage a function's aliases (`prod` → a version, or a weighted split).
    #[command(subcommand)]
    Alias(AliasCommand),
}

#[derive(Debug, Subcommand)]
pub enum AliasCommand {
    /// Point an alias at a version (`--version 3`) or split it (`--split 3=90,4=10`).
    Set {
        #[command(flatten)]
        client: ClientArgs,
        /// Function name.
        function: String,
        /// Alias name.
        alias: String,
        /// Every invocation to this version.
        #[arg(long, conflicts_with = "split", required_unless_present = "split")]
        version: Option<u32>,
        /// `VERSION=WEIGHT,…`, weights adding up to 100.
        #[arg(long, value_name = "VERSION=WEIGHT,...")]
        split: Option<String>,
    },
    /// Show an alias.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        function: String,
        alias: String,
    },
    /// List a function's aliases.
    List {
        #[command(flatten)]
        client: ClientArgs,
        function: String,
    },
    /// Delete an alias.
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        function: String,
        alias: String,
    },
    /// Point an alias back at what it pointed at before its last change.
    Rollback {
        #[command(flatten)]
        client: ClientArgs,
        function: String,
        alias: String,
    },
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// A directory (packed as tar.gz) or a single file; for `--runtime image`, an OCI image
    /// layout (directory or archive) or a `docker save` archive, or nothing with `--image`.
    pub path: Option<PathBuf>,
    /// Function name.
    #[arg(long)]
    pub name: String,
    /// python3 | nodejs | exec | image.
    #[arg(long)]
    pub runtime: String,
    /// e.g. `main.handle`, `index.handler`, `run.sh` (none for `image`).
    #[arg(long, default_value = "")]
    pub handler: String,
    /// `--runtime image`: `host[:port]/repo:tag` or `…@sha256:…` (the tag is pinned to its
    /// digest at deploy), or the image's name inside the uploaded archive.
    #[arg(long)]
    pub image: Option<String>,
    /// `--runtime image`: `exec` (the image's command per invocation) or `http` (its server
    /// on `$PORT`).
    #[arg(long)]
    pub mode: Option<String>,
    /// `--runtime image --mode http`: the port its server listens on (default 8080).
    #[arg(long)]
    pub port: Option<u16>,
    /// Memory limit.
    #[arg(long)]
    pub memory_mb: Option<u32>,
    /// Timeout.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Concurrent invocations per node.
    #[arg(long)]
    pub max_concurrency: Option<u32>,
    /// Sandboxes kept warm.
    #[arg(long)]
    pub min_warm: Option<u32>,
    /// Priority of the function's invocations (and the highest a caller may ask for).
    #[arg(long, value_parser = ["high", "normal", "low"])]
    pub priority: Option<String>,
    /// Environment variable for the function, `KEY=VALUE` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Function name.
    pub name: String,
    /// JSON payload, `@file` to read it from a file, or `@-` from standard input.
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// Queue it and print its id (nothing else) at once.
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// Run a specific version.
    #[arg(long, conflicts_with = "alias")]
    pub version: Option<u32>,
    /// Run the version this alias picks.
    #[arg(long)]
    pub alias: Option<String>,
    /// An idempotency key: a retry with the same key (and payload) within 24 h is the same
    /// invocation and runs once.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Run it at this priority (capped at the function's: a caller may lower it, not raise it).
    #[arg(long, value_parser = ["high", "normal", "low"])]
    pub priority: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum InvocationCommand {
    /// Show one invocation.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Cancel a queued or running invocation (it never runs, or is killed).
    Cancel {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// List invocations.
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        function: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Invocation id; or a function name, for the output of its latest invocations (live with
    /// --follow).
    pub id: String,
    /// Follow the function's output as its invocations finish (until Ctrl-C).
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Cold and warm start through fnmesh's sandboxes vs crun, bare python3 and a direct call.
    Sandbox(BenchArgs),
    /// Batched invocation-record writes vs one INSERT per row (PostgreSQL).
    Persistence(PersistenceBenchArgs),
    /// A warm sync invoke over the mesh (gateway, JetStream, node) vs raw HTTP, NATS and
    /// sandbox round trips, and its throughput.
    Mesh(MeshBenchArgs),
    /// The sandbox and mesh benchmarks in one run: one table of figures and ratios, the same as
    /// JSON, and a latency histogram (SVG).
    All(AllBenchArgs),
    /// A steady load on the mesh for minutes: throughput, p99, errors, event backlog and
    /// storage size per interval, and whether the last interval keeps up with the first.
    Soak(SoakBenchArgs),
    /// Many functions deployed: cold invocations of distinct functions per second, idle CPU
    /// per process, and one function's sync latency, beside the same with one function.
    Scale(ScaleBenchArgs),
    /// Image functions: cold start with the image cached vs the python3 runtime's, and the
    /// first pull of a 20 MiB image from a local registry vs `skopeo copy`.
    Image(ImageBenchArgs),
    /// Internal: the relay gateway of `bench mesh`'s composed floor.
    #[command(name = "__relay-gateway", hide = true)]
    RelayGateway(RelayArgs),
    /// Internal: the relay node of `bench mesh`'s composed floor.
    #[command(name = "__relay-node", hide = true)]
    RelayNode(RelayArgs),
}

/// Arguments of the hidden `fnmesh bench __relay-gateway` and `__relay-node` commands.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The NATS server both relays use.
    #[arg(long)]
    pub nats_url: String,
    /// The subject calls travel on.
    #[arg(long)]
    pub subject: String,
    /// Where the gateway listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The node's scratch directory (code, sandboxes).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Calls the node runs at once.
    #[arg(long, default_value_t = 64)]
    pub slots: usize,
    /// Carry each call through a JetStream work queue (publish + PubAck, a pull consumer
    /// capped at `--slots` unacked, a confirmed ack) instead of one core-NATS request.
    #[arg(long)]
    pub jetstream: bool,
}

#[derive(Debug, Args)]
pub struct ImageBenchArgs {
    /// Cold starts of each runtime (image, python3), interleaved.
    #[arg(long, default_value_t = 20)]
    pub cold_rounds: usize,
    /// First pulls of the big image (and `skopeo copy` runs), interleaved.
    #[arg(long, default_value_t = 5)]
    pub pull_rounds: usize,
    /// Size of the big image's incompressible file, in MiB.
    #[arg(long, default_value_t = 20)]
    pub image_mb: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// Scratch directory (default: a temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ScaleBenchArgs {
    /// Functions deployed (each invoked once, cold).
    #[arg(long, default_value_t = 1000)]
    pub functions: usize,
    /// Sequential sync requests of each latency series.
    #[arg(long, default_value_t = 500)]
    pub requests: usize,
    /// Seconds each idle CPU sample lasts.
    #[arg(long, default_value_t = 20)]
    pub idle_secs: u64,
    /// Seconds of pause before each idle CPU sample: after the one function's sync series,
    /// and after the last cold invocation finished (the burst's housekeeping: the server's
    /// consumer state, evicted sandboxes).
    #[arg(long, default_value_t = 10)]
    pub settle_secs: u64,
    /// The node's slots.
    #[arg(long, default_value_t = 16)]
    pub slots: usize,
    /// Scratch directory (default: a temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SoakBenchArgs {
    /// Length of the load.
    #[arg(long, default_value_t = 300)]
    pub secs: u64,
    /// Sync invocations in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds per reported interval.
    #[arg(long, default_value_t = 30)]
    pub interval_secs: u64,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// Scratch directory (default: a temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MeshBenchArgs {
    /// NATS server with JetStream to use (default: start `nats-server -js` on a free port).
    #[arg(long, env = "FNMESH_NATS_URL")]
    pub nats_url: Option<String>,
    /// Sequential requests of each round-trip series (after 200 warm-up requests).
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Concurrent invocations of the throughput run.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Length of the throughput run.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Shortest warm-up at full concurrency before the throughput run; it goes on until 2 s pass
    /// without a cold start (the sandbox pool is full), at most 60 s.
    #[arg(long, default_value_t = 3)]
    pub warmup_secs: u64,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// Scratch directory (default: a temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PersistenceBenchArgs {
    /// The PostgreSQL server to write to (a fresh schema is created and dropped).
    #[arg(
        long,
        env = "FNMESH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub database_url: String,
    /// Rows written by each method.
    #[arg(long, default_value_t = 20_000)]
    pub rows: usize,
    /// Rows per batch.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Rounds of each cold-start measurement.
    #[arg(long, default_value_t = 20)]
    pub cold_rounds: usize,
    /// Sequential warm invocations.
    #[arg(long, default_value_t = 2000)]
    pub warm_iterations: usize,
    /// Also write the figures (with the raw samples) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// Scratch directory (default: a temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AllBenchArgs {
    /// Rounds of each cold-start measurement (fnmesh, crun, bare python3).
    #[arg(long, default_value_t = 20)]
    pub cold_rounds: usize,
    /// Sequential warm invocations of the sandbox benchmark.
    #[arg(long, default_value_t = 2000)]
    pub warm_iterations: usize,
    /// Sequential requests of each mesh round-trip series (after 200 warm-up requests).
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Concurrent invocations of the throughput run.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Length of the throughput run.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Shortest warm-up at full concurrency before the throughput run (see `bench mesh`).
    #[arg(long, default_value_t = 3)]
    pub warmup_secs: u64,
    /// NATS server with JetStream to use (default: start `nats-server -js` on a free port).
    #[arg(long, env = "FNMESH_NATS_URL")]
    pub nats_url: Option<String>,
    /// Directory of the output files.
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// The figures as JSON (default: `<out-dir>/bench-results.json`).
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// The latency histogram as SVG (default: `<out-dir>/bench-latency.svg`); also rendered
    /// next to it as PNG when `rsvg-convert` is installed.
    #[arg(long, value_name = "FILE")]
    pub svg_out: Option<PathBuf>,
    /// Scratch directory (default: a temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

/// Signing keys and lifetimes of access tokens (`POST /v1/auth/token`). Set at most one of the
/// four key settings; with none, an HS256 secret is generated in `<data dir>/jwt-hs256.secret`
/// (fine for one gateway; several gateways must share a configured key).
#[derive(Debug, Args, Clone, Default)]
pub struct TokenArgs {
    /// HS256 secret (at least 32 bytes).
    #[arg(long, env = "FNMESH_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// File holding the HS256 secret.
    #[arg(long, env = "FNMESH_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// PEM (PKCS#8) Ed25519 private key: tokens are signed EdDSA.
    #[arg(long, env = "FNMESH_JWT_ED25519_KEY_FILE")]
    pub jwt_ed25519_key_file: Option<PathBuf>,
    /// PEM RSA private key (PKCS#1 or PKCS#8, ≥ 2048 bits): tokens are signed RS256.
    #[arg(long, env = "FNMESH_JWT_RS256_KEY_FILE")]
    pub jwt_rs256_key_file: Option<PathBuf>,
    /// The signing key's id (`kid`).
    #[arg(long, env = "FNMESH_JWT_KID", default_value = "k1")]
    pub jwt_kid: String,
    /// `iss` of access tokens.
    #[arg(long, env = "FNMESH_JWT_ISSUER", default_value = "fnmesh")]
    pub jwt_issuer: String,
    /// `aud` of access tokens.
    #[arg(long, env = "FNMESH_JWT_AUDIENCE", default_value = "fnmesh-api")]
    pub jwt_audience: String,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, env = "FNMESH_JWT_ACCESS_TTL_SECS", default_value_t = 900)]
    pub jwt_access_ttl_secs: u64,
    /// Lifetime of refresh tokens, in seconds.
    #[arg(long, env = "FNMESH_JWT_REFRESH_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub jwt_refresh_ttl_secs: u64,
    /// Absolute lifetime of a refresh token family (from `POST /v1/auth/token`), in seconds:
    /// rotating never extends it.
    #[arg(long, env = "FNMESH_JWT_REFRESH_FAMILY_TTL_SECS", default_value_t = 30 * 24 * 3600)]
    pub jwt_refresh_family_ttl_secs: u64,
}

/// The keyring that seals function secrets (gateways) and opens them (nodes): every gateway
/// and node of a cluster must be given the same keys. With neither key setting, a key is read
/// from (or generated into) `<data dir>/secrets.key`, which suits `fnmesh up` only.
#[derive(Debug, Args, Clone, Default)]
pub struct SecretsArgs {
    /// Base64 of the 32-byte AES-256 key that seals secrets.
    #[arg(long, env = "FNMESH_SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<String>,
    /// A file holding that base64 key.
    #[arg(long, env = "FNMESH_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// The id stored with each value sealed by that key (change it when rotating).
    #[arg(long, env = "FNMESH_SECRETS_KEY_ID", default_value = "k1")]
    pub secrets_key_id: String,
    /// Earlier keys that still open values sealed with them: `id:base64,id:base64`.
    #[arg(long, env = "FNMESH_SECRETS_OLD_KEYS", hide_env_values = true)]
    pub secrets_old_keys: Option<String>,
    /// Seal function code at rest with this keyring: gateways encrypt what they store (and
    /// mirror to NATS), nodes decrypt what they read. Set it the same on every process.
    #[arg(long, env = "FNMESH_ENCRYPT_CODE", default_value_t = false)]
    pub encrypt_code: bool,
}
