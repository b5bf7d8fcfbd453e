//! Every NATS subject and storage key fnmesh uses, built here and only here, from validated
//! names and ids. Call sites never `format!` a subject.
//!
//! All subjects live under a versioned prefix so the wire format can evolve.

use crate::checksum::Checksum;
use crate::ids::InvocationId;
use crate::names::{FunctionName, Namespace};
use crate::priority::Priority;
use crate::registry::RegistryHost;

/// Version prefix of every subject.
pub const PREFIX: &str = "fnmesh.v1";

/// Work queue subject of one function: `fnmesh.v1.inv.<namespace>.<function>`.
pub fn invocation(namespace: &Namespace, function: &FunctionName) -> String {
    format!("{PREFIX}.inv.{namespace}.{function}")
}

/// Subject carrying node events for recorders: `fnmesh.v1.evt.<invocation id>`.
pub fn node_event(id: &InvocationId) -> String {
    format!("{PREFIX}.evt.{id}")
}

/// A validated bus prefix (`^[a-z0-9][a-z0-9-]{0,31}$`): isolates every JetStream stream,
/// consumer and subject of one bus (a test, and later a region or tenant) from every other.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BusPrefix(String);

/// Why a bus prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid bus prefix {0:?}: must match ^[a-z0-9][a-z0-9-]{{0,31}}$")]
pub struct BusPrefixError(String);

impl BusPrefix {
    /// Validates `value` and wraps it.
    pub fn parse(value: &str) -> Result<Self, BusPrefixError> {
        let bytes = value.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 32
            && bytes[0] != b'-'
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(BusPrefixError(value.chars().take(40).collect()))
        }
    }

    /// The validated prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BusPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Work subject of one function on a prefixed bus:
/// `fnmesh.v1.<prefix>.inv.<namespace>.<function>`.
pub fn bus_invocation(
    prefix: &BusPrefix,
    namespace: &Namespace,
    function: &FunctionName,
) -> String {
    format!("{PREFIX}.{prefix}.inv.{namespace}.{function}")
}

/// Work subject of one priority lane of a function: [`bus_invocation`] for `normal`, with a
/// last token `high` or `low` for the others (`fnmesh.v1.<prefix>.inv.<namespace>.<function>.high`).
pub fn bus_invocation_lane(
    prefix: &BusPrefix,
    namespace: &Namespace,
    function: &FunctionName,
    priority: Priority,
) -> String {
    match priority {
        Priority::Normal => bus_invocation(prefix, namespace, function),
        other => format!("{PREFIX}.{prefix}.inv.{namespace}.{function}.{other}"),
    }
}

/// The namespace, function and priority of a work subject built by [`bus_invocation_lane`]
/// on `prefix` (`None` for anything else).
pub fn parse_bus_invocation(
    prefix: &BusPrefix,
    subject: &str,
) -> Option<(Namespace, FunctionName, Priority)> {
    let rest = subject.strip_prefix(&format!("{PREFIX}.{prefix}.inv."))?;
    let (namespace, rest) = rest.split_once('.')?;
    let (function, priority) = match rest.split_once('.') {
        None => (rest, Priority::Normal),
        Some((function, "high")) => (function, Priority::High),
        Some((function, "low")) => (function, Priority::Low),
        Some(_) => return None,
    };
    Some((
        Namespace::parse(namespace).ok()?,
        FunctionName::parse(function).ok()?,
        priority,
    ))
}

/// Every work subject of a prefixed bus (the work stream's filter): `fnmesh.v1.<prefix>.inv.>`.
pub fn bus_invocations_all(prefix: &BusPrefix) -> String {
    format!("{PREFIX}.{prefix}.inv.>")
}

/// Core-NATS subject of a sync invocation sent straight to a node with a free slot (the
/// direct path; no stream holds it): `fnmesh.v1.<prefix>.direct.<namespace>.<function>`.
pub fn bus_direct(prefix: &BusPrefix, namespace: &Namespace, function: &FunctionName) -> String {
    format!("{PREFIX}.{prefix}.direct.{namespace}.{function}")
}

/// Every direct subject of a prefixed bus (what nodes subscribe to, in [`DIRECT_QUEUE_GROUP`]):
/// `fnmesh.v1.<prefix>.direct.>`.
pub fn bus_direct_all(prefix: &BusPrefix) -> String {
    format!("{PREFIX}.{prefix}.direct.>")
}

/// Core-NATS subject on which gateways tell a region's nodes that an invocation was
/// cancelled (every node hears it): `fnmesh.v1.<prefix>.cancel`.
pub fn bus_cancel(prefix: &BusPrefix) -> String {
    format!("{PREFIX}.{prefix}.cancel")
}

/// Subject a function's destination is published on: `fnmesh.v1.dest.<namespace>.<subject>`,
/// where `subject` is the function's `config.destinations.*.nats`, checked by
/// [`crate::destination::check_subject`] (`None` if it does not pass).
pub fn destination(namespace: &Namespace, subject: &str) -> Option<String> {
    crate::destination::check_subject(subject).ok()?;
    Some(format!("{PREFIX}.dest.{namespace}.{subject}"))
}

/// Every destination subject: `fnmesh.v1.dest.>` (gateways publish, clients subscribe).
pub fn destinations_all() -> String {
    format!("{PREFIX}.dest.>")
}

/// Every destination subject of one namespace: `fnmesh.v1.dest.<namespace>.>`.
pub fn destinations_of_namespace(namespace: &Namespace) -> String {
    format!("{PREFIX}.dest.{namespace}.>")
}

/// The queue group nodes take direct sync invocations in: each goes to one node.
pub const DIRECT_QUEUE_GROUP: &str = "fnmesh-direct";

/// Every invocation subject of one namespace on a prefixed bus, every priority lane:
/// `fnmesh.v1.<prefix>.inv.<namespace>.>`.
pub fn bus_invocations_of_namespace(prefix: &BusPrefix, namespace: &Namespace) -> String {
    format!("{PREFIX}.{prefix}.inv.{namespace}.>")
}

/// Node-event subject of one invocation on a prefixed bus: `fnmesh.v1.<prefix>.evt.<id>`.
pub fn bus_node_event(prefix: &BusPrefix, id: &InvocationId) -> String {
    format!("{PREFIX}.{prefix}.evt.{id}")
}

/// Every node-event subject of a prefixed bus: `fnmesh.v1.<prefix>.evt.>`.
pub fn bus_node_events_all(prefix: &BusPrefix) -> String {
    format!("{PREFIX}.{prefix}.evt.>")
}

/// JetStream stream of a prefixed bus: `fnmesh-<prefix>-<role>` (`role` is a fixed token such
/// as `inv`, `evt`, `dlq`).
pub fn bus_stream(prefix: &BusPrefix, role: BusRole) -> String {
    format!("fnmesh-{prefix}-{}", role.token())
}

/// Durable consumer of a prefixed bus's stream: `fnmesh-<prefix>-<role>-c`.
pub fn bus_consumer(prefix: &BusPrefix, role: BusRole) -> String {
    format!("fnmesh-{prefix}-{}-c", role.token())
}

/// The streams of a JetStream bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusRole {
    /// The invocation work queue.
    Invocations,
    /// Node events for recorders.
    Events,
    /// Captured max-deliveries advisories of the work queue.
    DeadLetters,
}

impl BusRole {
    fn token(self) -> &'static str {
        match self {
            Self::Invocations => "inv",
            Self::Events => "evt",
            Self::DeadLetters => "dlq",
        }
    }
}

/// Durable consumer of one function's work on a prefixed bus:
/// `fnmesh-<prefix>-fn_<namespace>_<function>` (names hold no `_`, so the split is unambiguous).
pub fn bus_function_consumer(
    prefix: &BusPrefix,
    namespace: &Namespace,
    function: &FunctionName,
) -> String {
    format!(
        "{}{namespace}_{function}",
        bus_function_consumer_prefix(prefix)
    )
}

/// What every function consumer name of a prefixed bus starts with: `fnmesh-<prefix>-fn_`.
pub fn bus_function_consumer_prefix(prefix: &BusPrefix) -> String {
    format!("fnmesh-{prefix}-fn_")
}

/// Parses a function consumer name of `prefix` back into (namespace, function); `None` for any
/// other name.
pub fn parse_function_consumer(
    prefix: &BusPrefix,
    name: &str,
) -> Option<(Namespace, FunctionName, Priority)> {
    let rest = name.strip_prefix(&bus_function_consumer_prefix(prefix))?;
    let (namespace, rest) = rest.split_once('_')?;
    let (function, priority) = match rest.split_once('_') {
        None => (rest, Priority::Normal),
        Some((function, "high")) => (function, Priority::High),
        Some((function, "low")) => (function, Priority::Low),
        Some(_) => return None,
    };
    Some((
        Namespace::parse(namespace).ok()?,
        FunctionName::parse(function).ok()?,
        priority,
    ))
}

/// The durable consumer of one priority lane of a function: [`bus_function_consumer`] for
/// `normal`, with `_high` or `_low` after it for the others. Its filter is that lane's
/// [`bus_invocation_lane`].
pub fn bus_function_consumer_lane(
    prefix: &BusPrefix,
    namespace: &Namespace,
    function: &FunctionName,
    priority: Priority,
) -> String {
    match priority {
        Priority::Normal => bus_function_consumer(prefix, namespace, function),
        other => format!(
            "{}_{other}",
            bus_function_consumer(prefix, namespace, function)
        ),
    }
}

/// The priority of a function consumer name of any prefix (`normal` for anything without a
/// lane suffix): what a pulling node orders its hot consumers by.
pub fn function_consumer_priority(name: &str) -> Priority {
    // `fnmesh-<prefix>-fn_<namespace>_<function>[_<priority>]`: names and prefixes have no `_`,
    // so only a lane's name has a third (a function may be called `high`).
    if name.matches('_').count() != 3 {
        return Priority::Normal;
    }
    match name.rsplit_once('_') {
        Some((_, "high")) => Priority::High,
        Some((_, "low")) => Priority::Low,
        _ => Priority::Normal,
    }
}

/// Core-NATS subject on which "work may be ready on consumer X" hints travel (payload: the
/// consumer name): `fnmesh.v1.<prefix>.ready`.
pub fn bus_work_ready(prefix: &BusPrefix) -> String {
    format!("{PREFIX}.{prefix}.ready")
}

/// Core-NATS subject on which nodes tell gateways "work waits for consumer X, which does not
/// exist" (payload: the consumer name; the server deleted it after its inactive threshold):
/// `fnmesh.v1.<prefix>.missing`.
pub fn bus_consumer_missing(prefix: &BusPrefix) -> String {
    format!("{PREFIX}.{prefix}.missing")
}

/// The core-NATS advisory JetStream publishes when a message ran out of deliveries on one
/// consumer of the work stream: `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`.
/// `consumer` must be a name built by [`bus_function_consumer`].
pub fn max_deliveries_advisory(prefix: &BusPrefix, consumer: &str) -> String {
    format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{consumer}",
        bus_stream(prefix, BusRole::Invocations),
    )
}

/// Where a node's bus records the failed last attempt of a delivery it held (signed; the
/// dead-letter stream captures it next to the server's advisories):
/// `fnmesh.v1.<prefix>.dlq`. Nodes may not publish the server's advisory subjects.
pub fn bus_dead_letter_records(prefix: &BusPrefix) -> String {
    format!("{PREFIX}.{prefix}.dlq")
}

/// Every max-deliveries advisory of the work stream of `prefix` (the dead-letter stream's
/// filter).
pub fn max_deliveries_advisories_all(prefix: &BusPrefix) -> String {
    format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*",
        bus_stream(prefix, BusRole::Invocations),
    )
}

/// Storage key of a code blob: `code/sha256/<hex>`.
pub fn code_key(checksum: &Checksum) -> String {
    format!("code/sha256/{checksum}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_have_fixed_token_counts() {
        let ns = Namespace::default_ns();
        let f = FunctionName::parse("hello-1").unwrap();
        assert_eq!(invocation(&ns, &f), "fnmesh.v1.inv.default.hello-1");
        assert_eq!(invocation(&ns, &f).split('.').count(), 5);
        let id = InvocationId::new();
        assert_eq!(node_event(&id).split('.').count(), 4);
    }

    #[test]
    fn bus_subjects_carry_the_prefix() {
        let p = BusPrefix::parse("t-1").unwrap();
        let ns = Namespace::default_ns();
        let f = FunctionName::parse("hello").unwrap();
        assert_eq!(
            bus_invocation(&p, &ns, &f),
            "fnmesh.v1.t-1.inv.default.hello"
        );
        assert_eq!(bus_invocations_all(&p), "fnmesh.v1.t-1.inv.>");
        assert_eq!(
            bus_node_event(&p, &InvocationId::new()).split('.').count(),
            5
        );
        assert_eq!(bus_stream(&p, BusRole::Invocations), "fnmesh-t-1-inv");
        let c = bus_function_consumer(&p, &ns, &f);
        assert_eq!(c, "fnmesh-t-1-fn_default_hello");
        assert_eq!(
            parse_function_consumer(&p, &c),
            Some((ns.clone(), f.clone(), Priority::Normal))
        );
        assert_eq!(parse_function_consumer(&p, "fnmesh-t-1-inv-c"), None);
        assert_eq!(
            parse_bus_invocation(&p, &bus_invocation(&p, &ns, &f)),
            Some((ns.clone(), f.clone(), Priority::Normal))
        );
        for other in [
            "fnmesh.v1.t-2.inv.default.hello",
            "fnmesh.v1.t-1.inv.default.hello.x",
            "fnmesh.v1.t-1.inv.default",
            "fnmesh.v1.t-1.evt.default.hello",
            "fnmesh.v1.t-1.inv.Default.hello",
        ] {
            assert_eq!(parse_bus_invocation(&p, other), None, "{other}");
        }
        assert_eq!(
            max_deliveries_advisory(&p, &c),
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.fnmesh-t-1-inv.fnmesh-t-1-fn_default_hello"
        );
        for bad in ["", "A", "a.b", "a b", "a*", ">", "-a", &"a".repeat(33)] {
            assert!(BusPrefix::parse(bad).is_err(), "{bad:?}");
        }
    }
}

// --- NATS request/reply clients -------------------------------------------------------------

/// Queue group in which every gateway serves [`request`] subjects, so each request is answered
/// by exactly one gateway.
pub const REQUEST_QUEUE_GROUP: &str = "fnmesh-gateways";

/// Subject a NATS client sends a plain request to, to invoke a function:
/// `fnmesh.v1.req.<function>`. The namespace is not on the subject: it comes from the API key
/// the request carries.
pub fn request(function: &FunctionName) -> String {
    format!("{PREFIX}.req.{function}")
}

/// Every request subject, what gateways subscribe to: `fnmesh.v1.req.*`. With one NATS server
/// per region linked by leaf nodes, a request is answered by a gateway of the region whose
/// server the client is connected to (NATS hands a queue group's message to a member on the
/// same server first).
pub fn requests_all() -> String {
    format!("{PREFIX}.req.*")
}

/// Subject a NATS client sends a request to, to invoke a function in region `region`
/// explicitly, wherever it is connected: `fnmesh.v1.req.<region>.<function>`.
pub fn request_in(region: &BusPrefix, function: &FunctionName) -> String {
    format!("{PREFIX}.req.{region}.{function}")
}

/// The request subjects of one region, what its gateways subscribe to besides
/// [`requests_all`]: `fnmesh.v1.req.<region>.*`.
pub fn requests_in(region: &BusPrefix) -> String {
    format!("{PREFIX}.req.{region}.*")
}

/// What a request subject names: a function, and the region it was sent to explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTarget {
    /// The region of a [`request_in`] subject; `None` for a [`request`] subject.
    pub region: Option<BusPrefix>,
    /// The function.
    pub function: FunctionName,
}

impl RequestTarget {
    /// The subject naming this target.
    pub fn subject(&self) -> String {
        match &self.region {
            Some(region) => request_in(region, &self.function),
            None => request(&self.function),
        }
    }
}

/// Why a subject is not a usable request subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestSubjectError {
    /// Not `fnmesh.v1.req.<function>` or `fnmesh.v1.req.<region>.<function>`.
    #[error("subject {0:?} is not fnmesh.v1.req.<function> or fnmesh.v1.req.<region>.<function>")]
    Shape(String),
    /// The function token is not a valid function name.
    #[error(transparent)]
    Name(#[from] crate::names::NameError),
}

/// The target a [`request`] or [`request_in`] subject names, validated (a [`BusPrefix`] and
/// a [`FunctionName`]).
pub fn parse_request(subject: &str) -> Result<RequestTarget, RequestSubjectError> {
    let shape = || RequestSubjectError::Shape(subject.chars().take(80).collect());
    let rest = subject
        .strip_prefix(PREFIX)
        .and_then(|s| s.strip_prefix(".req."))
        .ok_or_else(shape)?;
    let (region, function) = match rest.split_once('.') {
        None => (None, rest),
        Some((region, function)) => (
            Some(BusPrefix::parse(region).map_err(|_| shape())?),
            function,
        ),
    };
    if function.is_empty() || function.contains('.') {
        return Err(shape());
    }
    Ok(RequestTarget {
        region,
        function: FunctionName::parse(function)?,
    })
}

/// Reply subjects a gateway answers NATS requests on, by prefix: `_INBOX.`, the request inbox
/// of every NATS client library (`client.creds` may subscribe to `_INBOX.>` only), and `_R_.`,
/// the reply subject a server substitutes when a request crosses accounts through a service
/// import (the `CLIENTS` account's requests reach the gateways that way).
pub const CLIENT_REPLY_PREFIXES: [&str; 2] = ["_INBOX.", "_R_."];

/// Whether a gateway may publish a request's reply to `reply`, a subject the client chose: only
/// a reply inbox ([`CLIENT_REPLY_PREFIXES`]) that is one plain publish subject. Anything else
/// (fnmesh's own subjects, `$` system or JetStream API subjects, a gateway's sync inboxes, any
/// application subject) would make the gateway publish there with its own permissions.
pub fn reply_allowed(reply: &str) -> bool {
    reply.len() <= 1024
        && CLIENT_REPLY_PREFIXES
            .iter()
            .any(|prefix| reply.starts_with(prefix))
        && is_plain_subject(reply)
}

#[cfg(test)]
mod request_subject_tests {
    use super::*;

    #[test]
    fn request_subjects_round_trip_through_the_parser() {
        let f = FunctionName::parse("hello-1").unwrap();
        assert_eq!(request(&f), "fnmesh.v1.req.hello-1");
        assert_eq!(requests_all(), "fnmesh.v1.req.*");
        let plain = parse_request(&request(&f)).unwrap();
        assert_eq!((plain.region.as_ref(), &plain.function), (None, &f));
        let eu = BusPrefix::parse("eu").unwrap();
        assert_eq!(request_in(&eu, &f), "fnmesh.v1.req.eu.hello-1");
        assert_eq!(requests_in(&eu), "fnmesh.v1.req.eu.*");
        let targeted = parse_request(&request_in(&eu, &f)).unwrap();
        assert_eq!(targeted.region.as_ref(), Some(&eu));
        assert_eq!(targeted.function, f);
        assert_eq!(targeted.subject(), request_in(&eu, &f));
        assert_eq!(plain.subject(), request(&f));
    }

    #[test]
    fn malformed_request_subjects_are_refused() {
        for bad in [
            "",
            "fnmesh.v1.req",
            "fnmesh.v1.req.",
            "fnmesh.v1.req.a.b.c",
            "fnmesh.v1.req.a.",
            "fnmesh.v1.req.A.b",
            "fnmesh.v1.req..b",
            "fnmesh.v1.inv.default.a",
            "fnmesh.v2.req.a",
            "x.fnmesh.v1.req.a",
        ] {
            assert!(
                matches!(parse_request(bad), Err(RequestSubjectError::Shape(_))),
                "{bad:?}"
            );
        }
        for bad in [
            "fnmesh.v1.req.A",
            "fnmesh.v1.req.a_b",
            "fnmesh.v1.req.$x",
            "fnmesh.v1.req.1a",
        ] {
            assert!(
                matches!(parse_request(bad), Err(RequestSubjectError::Name(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn replies_go_to_reply_inboxes_only() {
        for good in ["_INBOX.abc.123", "_INBOX.x", "_R_.AbC123.xyz", "_R_.a.b.c"] {
            assert!(reply_allowed(good), "{good:?}");
        }
        for bad in [
            "",
            "$JS.API.STREAM.PURGE.fnmesh-x-inv",
            "$SYS.REQ.SERVER.PING",
            "fnmesh.v1.x.inv.default.f",
            "fnmesh.v1.req.f",
            "_FNMESH.gw.abc.1",
            "_FNMESH.node.abc.1",
            "my.app.replies.1",
            "orders.created",
            "_INBOX",
            "_INBOX.",
            "_INBOXES.1",
            "_R_",
            "_R_.",
            "x._INBOX.1",
            "_INBOX.*",
            "_INBOX.>",
            "_INBOX.a..b",
            "_INBOX.a b",
            "_INBOX.a\tb",
        ] {
            assert!(!reply_allowed(bad), "{bad:?}");
        }
        let long = format!("_INBOX.{}", "a".repeat(1024));
        assert!(!reply_allowed(&long));
    }
}

/// JetStream KV bucket of the node registry of a prefixed bus (region):
/// `fnmesh-<prefix>-nodes`.
pub fn node_registry_bucket(prefix: &BusPrefix) -> String {
    format!("fnmesh-{prefix}-nodes")
}

/// Key of one node in its registry bucket: the node id itself (validated, so a valid KV key).
pub fn node_registry_key(id: &crate::ids::NodeId) -> String {
    id.as_str().to_owned()
}

/// The subject a node's registry entry is written to (the KV bucket's `$KV.<bucket>.<key>`),
/// for writes that carry headers the KV API does not offer (a per-entry `Nats-TTL`).
pub fn node_registry_entry(prefix: &BusPrefix, id: &crate::ids::NodeId) -> String {
    format!(
        "$KV.{}.{}",
        node_registry_bucket(prefix),
        node_registry_key(id)
    )
}

// --- The function catalog a hub replicates to its edges -----------------------------------

/// JetStream KV bucket holding the catalog of hub region `hub` (functions with their versions,
/// sealed secrets, API keys, quotas), which edges mirror: `fnmesh-<hub>-catalog`.
pub fn catalog_bucket(hub: &BusPrefix) -> String {
    format!("fnmesh-{hub}-catalog")
}

/// The stream of edge region `edge`, in the edge's own JetStream domain, that mirrors its
/// hub's catalog bucket: `fnmesh-<edge>-catalog`.
pub fn catalog_mirror_stream(edge: &BusPrefix) -> String {
    format!("fnmesh-{edge}-catalog")
}

/// The kinds of catalog entries a node reads (pre-pulling the images of its region's
/// functions): functions (`fn`) and registry credentials (`reg`).
pub const NODE_CATALOG_KINDS: [&str; 2] = ["fn", "reg"];

/// The entries of kind `kind` (`fn`, `reg`, …) of whichever catalog bucket a stream holds
/// (a region's own, or the hub's in an edge's mirror): `$KV.*.<kind>.>`.
pub fn catalog_entries_of_kind(kind: &str) -> String {
    format!("$KV.*.{kind}.>")
}

/// The consumer through which node `node` reads the catalog entries of kind `kind`
/// ([`NODE_CATALOG_KINDS`]): `fnmesh-placements-<kind>-<node>`, on whichever stream holds
/// its region's catalog. Named per node so that its credentials can allow exactly these
/// consumers, on any stream, with a constant number of permissions whatever the regions.
pub fn placements_consumer(kind: &str, node: &crate::ids::NodeId) -> String {
    format!("fnmesh-placements-{kind}-{node}")
}

/// The catalog key a catalog entry subject names, whatever its bucket (`$KV.<bucket>.<key>`).
pub fn catalog_key_of_subject(subject: &str) -> Option<CatalogKey> {
    let (_bucket, key) = subject.strip_prefix("$KV.")?.split_once('.')?;
    CatalogKey::parse(key)
}

/// Where an edge gateway exports its finished invocations (records, logs, dead letters) for
/// its hub: `fnmesh.v1.<edge>.rec`.
pub fn bus_records(edge: &BusPrefix) -> String {
    format!("{PREFIX}.{edge}.rec")
}

/// The stream of them, in the edge's own JetStream domain: `fnmesh-<edge>-rec`.
pub fn records_stream(edge: &BusPrefix) -> String {
    format!("fnmesh-{edge}-rec")
}

/// The stream of hub region `hub`, in the hub's domain, that sources edge `edge`'s records
/// stream: `fnmesh-<hub>-rec_<edge>` (`_` never appears in a region name, so no region's own
/// stream can take this name).
pub fn records_import_stream(hub: &BusPrefix, edge: &BusPrefix) -> String {
    format!("fnmesh-{hub}-rec_{edge}")
}

/// The edge whose records stream `name` sources, if `name` is one of hub `hub`'s
/// [`records_import_stream`]s.
pub fn parse_records_import_stream(hub: &BusPrefix, name: &str) -> Option<BusPrefix> {
    let edge = name.strip_prefix(&format!("fnmesh-{hub}-rec_"))?;
    BusPrefix::parse(edge).ok()
}

/// Where an edge gateway sends its hub the invocations it overflows (core NATS requests to the
/// hub's gateways): `fnmesh.v1.<hub>.fwd`.
pub fn forwards(hub: &BusPrefix) -> String {
    format!("{PREFIX}.{hub}.fwd")
}

/// The durable consumer through which a hub's gateways store an edge's records.
pub const RECORDS_IMPORT_CONSUMER: &str = "fnmesh-import";

/// The JetStream API prefix of another JetStream domain (a region's own): `$JS.<domain>.API`.
pub fn jetstream_domain_api(domain: &BusPrefix) -> String {
    format!("$JS.{domain}.API")
}

/// Every JetStream API subject of every other domain: `$JS.*.API.>`.
pub fn jetstream_domain_api_all() -> String {
    "$JS.*.API.>".to_owned()
}

/// One entry of a catalog: what it is about, which names its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CatalogKey {
    /// A function with all its versions: `fn.<namespace>.<name>`.
    Function(Namespace, FunctionName),
    /// The sealed secrets of a function: `sec.<namespace>.<name>`.
    Secrets(Namespace, FunctionName),
    /// One API key (hashed) by its public id: `key.<id>`.
    ApiKey(String),
    /// The quotas of a namespace: `quota.<namespace>`.
    Quota(Namespace),
    /// A namespace's sealed credential for a registry: `reg.<namespace>.<host as hex>`
    /// ([`RegistryHost::token`]).
    Registry(Namespace, RegistryHost),
}

/// Longest API key id a catalog key names.
const CATALOG_KEY_ID_MAX: usize = 64;

impl CatalogKey {
    /// The entry for API key `id`; `None` unless `id` is 1..=64 of `[A-Za-z0-9_-]` (every
    /// id the gateway makes is).
    pub fn api_key(id: &str) -> Option<Self> {
        let ok = !id.is_empty()
            && id.len() <= CATALOG_KEY_ID_MAX
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| Self::ApiKey(id.to_owned()))
    }

    /// The KV key.
    pub fn key(&self) -> String {
        match self {
            Self::Function(ns, name) => format!("fn.{ns}.{name}"),
            Self::Secrets(ns, name) => format!("sec.{ns}.{name}"),
            Self::ApiKey(id) => format!("key.{id}"),
            Self::Quota(ns) => format!("quota.{ns}"),
            Self::Registry(ns, host) => format!("reg.{ns}.{}", host.token()),
        }
    }

    /// The subject of this entry in catalog bucket `bucket` (`$KV.<bucket>.<key>`).
    pub fn subject(&self, bucket: &str) -> String {
        format!("$KV.{bucket}.{}", self.key())
    }

    /// The entry a KV key names; `None` for anything [`Self::key`] does not make.
    pub fn parse(key: &str) -> Option<Self> {
        let mut parts = key.split('.');
        let kind = parts.next()?;
        let a = parts.next()?;
        let b = parts.next();
        if parts.next().is_some() {
            return None;
        }
        let ns = || Namespace::parse(a).ok();
        match (kind, b) {
            ("fn", Some(b)) => Some(Self::Function(ns()?, FunctionName::parse(b).ok()?)),
            ("sec", Some(b)) => Some(Self::Secrets(ns()?, FunctionName::parse(b).ok()?)),
            ("key", None) => Self::api_key(a),
            ("quota", None) => Some(Self::Quota(ns()?)),
            ("reg", Some(b)) => Some(Self::Registry(ns()?, RegistryHost::from_token(b)?)),
            _ => None,
        }
    }

    /// The entry a subject of catalog bucket `bucket` names (see [`Self::subject`]).
    pub fn parse_subject(bucket: &str, subject: &str) -> Option<Self> {
        let key = subject
            .strip_prefix("$KV.")?
            .strip_prefix(bucket)?
            .strip_prefix('.')?;
        Self::parse(key)
    }
}

#[cfg(test)]
mod catalog_tests {
    use super::*;

    #[test]
    fn catalog_keys_round_trip_and_refuse_anything_else() {
        let ns = Namespace::parse("team-a").unwrap();
        let f = FunctionName::parse("hello").unwrap();
        let keys = [
            CatalogKey::Function(ns.clone(), f.clone()),
            CatalogKey::Secrets(ns.clone(), f.clone()),
            CatalogKey::api_key("key_AbC09-x").unwrap(),
            CatalogKey::Quota(ns.clone()),
            CatalogKey::Registry(ns.clone(), RegistryHost::parse("127.0.0.1:5000").unwrap()),
        ];
        for key in keys {
            assert_eq!(CatalogKey::parse(&key.key()), Some(key.clone()));
            let bucket = catalog_bucket(&BusPrefix::parse("hub").unwrap());
            assert_eq!(
                CatalogKey::parse_subject(&bucket, &key.subject(&bucket)),
                Some(key)
            );
        }
        assert_eq!(
            CatalogKey::Function(ns, f).subject("fnmesh-hub-catalog"),
            "$KV.fnmesh-hub-catalog.fn.team-a.hello"
        );
        for bad in [
            "",
            "fn",
            "fn.team-a",
            "fn.team-a.hello.x",
            "fn.Team.hello",
            "key.a.b",
            "key.",
            "key.a*",
            "quota.x.y",
            "reg.team-a",
            "reg.team-a.zz",
            "reg.team-a.3132372e302e302e313a35303030.x",
            "other.a.b",
        ] {
            assert_eq!(CatalogKey::parse(bad), None, "{bad}");
        }
        assert_eq!(CatalogKey::api_key(&"a".repeat(65)), None);
        assert_eq!(
            CatalogKey::parse_subject("fnmesh-hub-catalog", "$KV.fnmesh-eu-catalog.quota.a"),
            None
        );
        assert_eq!(
            catalog_key_of_subject("$KV.fnmesh-hub-catalog.quota.a"),
            CatalogKey::parse("quota.a")
        );
        assert_eq!(catalog_key_of_subject("$KV.fnmesh-hub-catalog"), None);
        assert_eq!(catalog_entries_of_kind("fn"), "$KV.*.fn.>");
        let edge = BusPrefix::parse("eu").unwrap();
        assert_eq!(catalog_mirror_stream(&edge), "fnmesh-eu-catalog");
        assert_eq!(jetstream_domain_api(&edge), "$JS.eu.API");
    }
}

#[cfg(test)]
mod registry_tests {
    use super::*;

    #[test]
    fn registry_names_carry_the_prefix() {
        let p = BusPrefix::parse("eu-1").unwrap();
        assert_eq!(node_registry_bucket(&p), "fnmesh-eu-1-nodes");
        let id = crate::ids::NodeId::parse("node-a_1").unwrap();
        assert_eq!(node_registry_key(&id), "node-a_1");
        assert_eq!(
            node_registry_entry(&p, &id),
            "$KV.fnmesh-eu-1-nodes.node-a_1"
        );
    }
}

/// JetStream object store bucket holding the code of a prefixed bus (a region):
/// `fnmesh-<prefix>-code`. Objects in it are named by [`code_key`].
pub fn code_bucket(prefix: &BusPrefix) -> String {
    format!("fnmesh-{prefix}-code")
}

#[cfg(test)]
mod code_bucket_tests {
    use super::*;

    #[test]
    fn code_bucket_carries_the_prefix() {
        let p = BusPrefix::parse("eu-1").unwrap();
        assert_eq!(code_bucket(&p), "fnmesh-eu-1-code");
    }
}

/// Core-NATS subject on which nodes of a prefixed bus publish the captured output of one
/// function's invocations for live followers: `fnmesh.v1.<prefix>.logs.<namespace>.<function>`.
pub fn bus_function_logs(
    prefix: &BusPrefix,
    namespace: &Namespace,
    function: &FunctionName,
) -> String {
    format!("{PREFIX}.{prefix}.logs.{namespace}.{function}")
}

#[cfg(test)]
mod lane_tests {
    use super::*;

    #[test]
    fn priority_lanes_have_their_own_subjects_and_consumers() {
        let p = BusPrefix::parse("eu-1").unwrap();
        let ns = Namespace::parse("team-a").unwrap();
        // A function may be called like a priority: its normal lane is still normal.
        for name in ["resize", "high", "low"] {
            let f = FunctionName::parse(name).unwrap();
            assert_eq!(
                bus_invocation_lane(&p, &ns, &f, Priority::Normal),
                bus_invocation(&p, &ns, &f)
            );
            assert_eq!(
                bus_invocation_lane(&p, &ns, &f, Priority::High),
                format!("fnmesh.v1.eu-1.inv.team-a.{name}.high")
            );
            let normal = bus_function_consumer_lane(&p, &ns, &f, Priority::Normal);
            assert_eq!(normal, bus_function_consumer(&p, &ns, &f));
            assert_eq!(function_consumer_priority(&normal), Priority::Normal);
            let low = bus_function_consumer_lane(&p, &ns, &f, Priority::Low);
            assert_eq!(low, format!("fnmesh-eu-1-fn_team-a_{name}_low"));
            assert_eq!(function_consumer_priority(&low), Priority::Low);
            assert_eq!(
                parse_function_consumer(&p, &normal),
                Some((ns.clone(), f.clone(), Priority::Normal))
            );
        }
        assert_eq!(
            parse_bus_invocation(&p, "fnmesh.v1.eu-1.inv.team-a.resize.urgent"),
            None
        );
        assert_eq!(
            parse_function_consumer(&p, "fnmesh-eu-1-fn_team-a_resize_x"),
            None
        );
        assert!(bus_invocations_of_namespace(&p, &ns).ends_with(".inv.team-a.>"));
    }
}

#[cfg(test)]
mod logs_tests {
    use super::*;

    #[test]
    fn log_subjects_carry_the_prefix_namespace_and_function() {
        let p = BusPrefix::parse("eu-1").unwrap();
        let ns = Namespace::parse("team-a").unwrap();
        let f = FunctionName::parse("resize").unwrap();
        assert_eq!(
            bus_function_logs(&p, &ns, &f),
            "fnmesh.v1.eu-1.logs.team-a.resize"
        );
    }
}

// --- Message ids and reply inboxes of the buses ----------------------------------------------

/// `Nats-Msg-Id` of an invocation on the work stream: the invocation id, so JetStream drops a
/// duplicate publish of one invocation within the dedupe window.
pub fn invocation_msg_id(id: &InvocationId) -> String {
    id.to_string()
}

/// `Nats-Msg-Id` of the dead-letter record a bus writes itself for the message at `stream_seq`
/// of the work stream (`fnmesh-dead-<seq>`), so two records of one message are one.
pub fn dead_letter_msg_id(stream_seq: u64) -> String {
    format!("fnmesh-dead-{stream_seq}")
}

/// First token of every inbox subject of an fnmesh connection (replies to JetStream API calls,
/// PubAcks, sync-invocation replies): fnmesh never uses NATS's default `_INBOX`, so the NATS
/// permissions of each role can allow subscribing to its own inboxes only.
pub const INBOX_ROOT: &str = "_FNMESH";

/// Whose inboxes a connection makes, for [`inbox_prefix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InboxOwner {
    /// Gateways (and `fnmesh up`): sync callers' reply inboxes live here, so nodes may
    /// publish to them but never subscribe.
    #[default]
    Gateway,
    /// Worker nodes.
    Node,
}

/// The inbox prefix of a connection of `owner` (async-nats' `custom_inbox_prefix`):
/// `_FNMESH.gw` or `_FNMESH.node`. Its inboxes are `<prefix>.<nuid>`.
pub fn inbox_prefix(owner: InboxOwner) -> &'static str {
    match owner {
        InboxOwner::Gateway => "_FNMESH.gw",
        InboxOwner::Node => "_FNMESH.node",
    }
}

/// Every inbox subject of connections of `owner`: `<prefix>.>` (what a role may subscribe to).
pub fn inboxes_of(owner: InboxOwner) -> String {
    format!("{}.>", inbox_prefix(owner))
}

/// The inbox prefix of node `id`'s connections: `_FNMESH.node.<id>` (its credentials let it
/// read only these inboxes, so no node sees another's pull deliveries).
pub fn node_inbox_prefix(id: &crate::ids::NodeId) -> String {
    format!("{}.{id}", inbox_prefix(InboxOwner::Node))
}

/// Every inbox of node `id`: `_FNMESH.node.<id>.>`.
pub fn node_inboxes(id: &crate::ids::NodeId) -> String {
    format!("{}.>", node_inbox_prefix(id))
}

/// Whether `subject` is a sync-invocation reply inbox a node may answer on: under the
/// gateways' inbox prefix, or under NATS's default `_INBOX` (connections not made through
/// `fnmesh_core::nats::NatsOptions`, such as tests' plain clients). Where NATS permissions
/// are on, the server still refuses a node's reply to anything but the gateways' inboxes.
pub fn is_reply_inbox(subject: &str) -> bool {
    [inbox_prefix(InboxOwner::Gateway), "_INBOX"]
        .iter()
        .any(|prefix| {
            subject
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('.'))
        })
}

/// Whether a gateway may send node `node_id` a receipt for its sync reply on `inbox` (the
/// reply subject of that reply): one of that node's inboxes ([`node_inbox_prefix`]), or
/// under NATS's default `_INBOX` (connections not made through `fnmesh_core::nats::NatsOptions`),
/// one plain publish subject. Anything else would make the gateway publish where a node chose.
pub fn is_receipt_inbox(inbox: &str, node_id: &str) -> bool {
    let under = |prefix: &str| {
        inbox
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.'))
    };
    // `<node inbox prefix>.<node id>.…`, without building the prefix (one check per reply).
    let under_node = inbox
        .strip_prefix(inbox_prefix(InboxOwner::Node))
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_prefix(node_id))
        .is_some_and(|rest| rest.starts_with('.'));
    inbox.len() <= 256
        && !node_id.is_empty()
        && (under_node || under("_INBOX"))
        && is_plain_subject(inbox)
}

/// Whether `subject` is one plain publish subject: no empty token, no wildcard, no blank or
/// control character.
fn is_plain_subject(subject: &str) -> bool {
    subject
        .split('.')
        .all(|t| !t.is_empty() && t != "*" && t != ">")
        && !subject
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
}

/// One reply inbox of a multiplexed inbox subscription: `<inbox prefix>.<token>`, where the
/// prefix is an inbox (`<connection's inbox prefix>.<nuid>`) the NATS client made.
pub fn reply_inbox(inbox_prefix: &str, token: u64) -> String {
    format!("{inbox_prefix}.{token}")
}

/// Every reply inbox under `inbox_prefix` (what the multiplexed subscription listens on):
/// `<inbox prefix>.*`.
pub fn reply_inboxes_all(inbox_prefix: &str) -> String {
    format!("{inbox_prefix}.*")
}

/// First token of every reply address of the in-process bus.
pub const MEMORY_REPLY_PREFIX: &str = "mem-inbox";

/// Reply address of inbox `id` of in-process bus `instance`:
/// `mem-inbox.<instance, 16 hex digits>.<id>`.
pub fn memory_reply_inbox(instance: u64, id: u64) -> String {
    format!("{MEMORY_REPLY_PREFIX}.{instance:016x}.{id}")
}

/// The (instance, id) of a [`memory_reply_inbox`] address; `None` for anything else.
pub fn parse_memory_reply_inbox(address: &str) -> Option<(u64, u64)> {
    let mut parts = address.split('.');
    let (Some(MEMORY_REPLY_PREFIX), Some(instance), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let instance = u64::from_str_radix(instance, 16).ok()?;
    let id: u64 = id.parse().ok()?;
    Some((instance, id))
}

#[cfg(test)]
mod inbox_and_msg_id_tests {
    use super::*;

    #[test]
    fn invocation_msg_id_is_the_invocation_id() {
        let id = InvocationId::new();
        assert_eq!(invocation_msg_id(&id), id.to_string());
    }

    #[test]
    fn dead_letter_msg_id_carries_the_stream_sequence() {
        assert_eq!(dead_letter_msg_id(42), "fnmesh-dead-42");
    }

    #[test]
    fn inbox_prefixes_are_ours_and_distinct_per_owner() {
        assert_eq!(inbox_prefix(InboxOwner::Gateway), "_FNMESH.gw");
        assert_eq!(inbox_prefix(InboxOwner::Node), "_FNMESH.node");
        assert_eq!(inboxes_of(InboxOwner::Node), "_FNMESH.node.>");
        let id = crate::ids::NodeId::parse("edge-1").unwrap();
        assert_eq!(node_inboxes(&id), "_FNMESH.node.edge-1.>");
        assert!(!is_reply_inbox(&format!(
            "{}.abc.1",
            node_inbox_prefix(&id)
        )));
        assert!(is_reply_inbox("_FNMESH.gw.abc.1"));
        assert!(is_reply_inbox("_INBOX.abc.1"));
        for bad in [
            "_FNMESH.node.abc.1",
            "_FNMESH.gwx.1",
            "_INBOXES.1",
            "fnmesh.v1.x",
            "",
        ] {
            assert!(!is_reply_inbox(bad), "{bad}");
        }
    }

    #[test]
    fn receipts_go_only_to_the_replying_nodes_inboxes() {
        let id = crate::ids::NodeId::parse("edge-1").unwrap();
        let ours = format!("{}.abc.1", node_inbox_prefix(&id));
        assert!(is_receipt_inbox(&ours, "edge-1"));
        assert!(is_receipt_inbox("_INBOX.abc.1", "edge-1"));
        for bad in [
            "_FNMESH.node.edge-2.abc.1",
            "_FNMESH.node.edge-10.abc.1",
            "_FNMESH.node.edge-1",
            "_FNMESH.gw.abc.1",
            "_INBOX",
            "_INBOX.a..b",
            "_INBOX.*",
            "_INBOX.>",
            "_INBOX.a b",
            "fnmesh.v1.eu.invocations.x",
            "",
        ] {
            assert!(!is_receipt_inbox(bad, "edge-1"), "{bad}");
        }
        assert!(!is_receipt_inbox("_INBOX.abc.1", ""));
        assert!(!is_receipt_inbox(
            &format!("_INBOX.{}", "a".repeat(300)),
            "edge-1"
        ));
    }

    #[test]
    fn reply_inbox_appends_the_token() {
        assert_eq!(reply_inbox("_INBOX.abc", 7), "_INBOX.abc.7");
    }

    #[test]
    fn reply_inboxes_all_is_one_wildcard_token() {
        assert_eq!(reply_inboxes_all("_INBOX.abc"), "_INBOX.abc.*");
    }

    #[test]
    fn memory_reply_inbox_roundtrips() {
        let address = memory_reply_inbox(0xab, 3);
        assert_eq!(address, "mem-inbox.00000000000000ab.3");
        assert_eq!(parse_memory_reply_inbox(&address), Some((0xab, 3)));
    }

    #[test]
    fn parse_memory_reply_inbox_refuses_other_shapes() {
        for bad in [
            "",
            "mem-inbox",
            "mem-inbox.ab",
            "mem-inbox.ab.1.2",
            "other.ab.1",
            "mem-inbox.xyz.1",
            "mem-inbox.ab.-1",
            "_INBOX.abc.1",
        ] {
            assert_eq!(parse_memory_reply_inbox(bad), None, "{bad}");
        }
    }
}

// --- NATS permissions (`fnmesh_core::nats::setup`) -------------------------------------------

/// Every request subject, as exported by the internal account and allowed to clients:
/// `fnmesh.v1.req.>`.
pub fn requests_every() -> String {
    format!("{PREFIX}.req.>")
}

/// Every log subject of a prefixed bus: `fnmesh.v1.<prefix>.logs.>`.
pub fn bus_function_logs_all(prefix: &BusPrefix) -> String {
    format!("{PREFIX}.{prefix}.logs.>")
}

/// Every JetStream API subject: `$JS.API.>`.
pub fn jetstream_api_all() -> String {
    "$JS.API.>".to_owned()
}

/// A JetStream API subject: `$JS.API.<tokens joined by dots>` (tokens are fixed API words,
/// stream and consumer names built here, or wildcards).
pub fn jetstream_api(tokens: &[&str]) -> String {
    let mut subject = "$JS.API".to_owned();
    for token in tokens {
        subject.push('.');
        subject.push_str(token);
    }
    subject
}

/// Every ack subject of the deliveries of `stream`: `$JS.ACK.<stream>.>`.
pub fn jetstream_acks(stream: &str) -> String {
    format!("$JS.ACK.{stream}.>")
}

/// Every ack subject of every stream's deliveries: `$JS.ACK.>` (a hub's gateways ack the
/// streams that source their edges' records, named per edge; whoever may use the whole
/// JetStream API gains nothing by it).
pub fn jetstream_acks_all() -> String {
    "$JS.ACK.>".to_owned()
}

/// Every flow-control reply subject of push consumers of `stream`: `$JS.FC.<stream>.>`.
pub fn jetstream_flow_control(stream: &str) -> String {
    format!("$JS.FC.{stream}.>")
}

/// The stream behind object store bucket `bucket`: `OBJ_<bucket>`.
pub fn object_stream(bucket: &str) -> String {
    format!("OBJ_{bucket}")
}

/// Every subject of object store bucket `bucket` (chunks and metadata): `$O.<bucket>.>`.
pub fn object_store_all(bucket: &str) -> String {
    format!("$O.{bucket}.>")
}

/// The stream behind KV bucket `bucket`: `KV_<bucket>`.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// Every entry subject of KV bucket `bucket`: `$KV.<bucket>.>`.
pub fn kv_entries_all(bucket: &str) -> String {
    format!("$KV.{bucket}.>")
}

#[cfg(test)]
mod permission_subject_tests {
    use super::*;

    #[test]
    fn permission_subjects_name_the_region_streams() {
        let p = BusPrefix::parse("eu-1").unwrap();
        assert_eq!(requests_every(), "fnmesh.v1.req.>");
        assert_eq!(bus_function_logs_all(&p), "fnmesh.v1.eu-1.logs.>");
        let work = bus_stream(&p, BusRole::Invocations);
        assert_eq!(
            jetstream_api(&["CONSUMER", "MSG", "NEXT", &work, "*"]),
            "$JS.API.CONSUMER.MSG.NEXT.fnmesh-eu-1-inv.*"
        );
        assert_eq!(jetstream_acks(&work), "$JS.ACK.fnmesh-eu-1-inv.>");
        assert_eq!(object_stream(&code_bucket(&p)), "OBJ_fnmesh-eu-1-code");
        assert_eq!(
            kv_entries_all(&node_registry_bucket(&p)),
            "$KV.fnmesh-eu-1-nodes.>"
        );
    }
}
