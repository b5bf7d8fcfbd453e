//! An edge's finished invocations flow up to its hub (issue #14, item 4).
//!
//! Invocations run and are recorded in the region that accepted them. An edge gateway
//! (`FNMESH_HUB_REGION`) **exports** its region's finished invocations ([`exporter`]): it reads
//! its store in `(updated_at, id)` order and publishes each finished record with its logs and
//! dead letter on `fnmesh.v1.<edge>.rec`, captured by the limits stream `fnmesh-<edge>-rec` in
//! the edge's own JetStream domain, which also remembers how far the export got (the position
//! of its last message). In the hub's domain it makes (once the link is up) the stream
//! `fnmesh-<hub>-rec_<edge>`, which **sources** the edge's stream: the servers copy the
//! records over the leaf link and resume after a cut ("delayed, not lost"). A hub gateway
//! **imports** them ([`importer`]): it finds the streams of its edges by name, pulls each
//! through one durable consumer shared by the hub's gateways, and stores the records
//! (`InvocationStore::import_finished`: inserted if absent, otherwise fenced on the attempt
//! like a node's update, so a replay changes nothing). `GET /v1/invocations/{id}` at the hub
//! then finds an edge's invocation, `GET /v1/admin/dlq` its dead letters.
//!
//! Bounds: the exporter publishes what finished at least [`exporter::SETTLE`] ago (a write's
//! timestamp is taken before its transaction commits; one committed later than that behind a
//! newer one would be skipped), polling every [`exporter::POLL`]; a source catches up within
//! its retry interval after the link returns (measured: ~40 s after the hub's server
//! restarted); the importer asks again [`importer::IDLE`] after finding nothing, and finds a
//! new edge within [`importer::DISCOVER_EVERY`]. The edge's stream keeps records [`RETENTION`] (and at most
//! [`MAX_BYTES`]; when it is full the export waits): a link cut for longer loses the oldest
//! records to the hub, not to the edge, whose store keeps them.

pub(crate) mod exporter;
pub(crate) mod importer;
pub(crate) mod status;

use std::time::Duration;

/// How long an edge's records stream, and the hub's stream sourcing it, keep a record.
pub(crate) const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The most an edge's records stream holds.
pub(crate) const MAX_BYTES: i64 = 1 << 30;

/// The header of an exported record naming its export position (`<updated_at> <id>`).
pub(crate) const POSITION_HEADER: &str = "Fnmesh-Position";
