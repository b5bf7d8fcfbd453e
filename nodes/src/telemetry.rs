//! Tracing of invocations on a node: one `invocation.run` span per delivery, a child of the
//! gateway span whose `traceparent` came with the request (so gateway and node spans share one
//! trace), with `code.fetch`, `sandbox.launch` (create + start + handler load),
//! `handler` and `invocation.reply` under it. Only ids, names and counters are recorded:
//! never payloads, results or logs.

use fnmesh_bus::Delivery;

/// The span of one delivery on this node.
pub fn invocation_span(delivery: &Delivery, node_id: &str) -> tracing::Span {
    let request = &delivery.request;
    let span = tracing::info_span!(
        "invocation.run",
        otel.kind = "consumer",
        invocation.id = %request.id,
        invocation.attempt = delivery.attempt,
        function.name = %request.function.name,
        function.version = request.function.version,
        node.id = node_id,
    );
    if let Some(parent) = &request.traceparent {
        fnmesh_core::trace::set_remote_parent(&span, parent);
    }
    span
}
