//! Tracing of HTTP requests: one `http.request` span per request, which continues the caller's
//! trace when the request carries a valid W3C `traceparent` (validated strictly by
//! [`TraceParent::parse`]; anything else is ignored and the span starts a new trace).
//!
//! Only the method and path are recorded: never headers, query strings or bodies (they carry
//! keys and payloads). The invocation path adds its own spans under this one
//! (`invocation.publish`, `invocation.wait`, `invocation.record`), and the `traceparent` it
//! publishes is built from its own span, never copied from the client.

use fnmesh_core::trace::{self, TraceParent, TRACEPARENT_HEADER};

/// The span of one HTTP request (see the module docs).
pub(crate) fn request_span(info: warp::trace::Info<'_>) -> tracing::Span {
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{} {}", info.method(), route_of(info.path())),
        otel.kind = "server",
        http.request.method = %info.method(),
        url.path = info.path(),
    );
    if let Some(parent) = incoming_traceparent(info.request_headers()) {
        trace::set_remote_parent(&span, &parent);
    }
    span
}

/// The caller's `traceparent`, when it has exactly one valid one.
pub(crate) fn incoming_traceparent(headers: &warp::http::HeaderMap) -> Option<TraceParent> {
    let mut values = headers.get_all(TRACEPARENT_HEADER).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    TraceParent::parse(value.to_str().ok()?).ok()
}

/// Paths without names or ids in them.
const STATIC_ROUTES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/functions",
    "/v1/invocations",
    "/v1/admin/dlq",
    "/v1/admin/queues",
    "/v1/admin/nodes",
];

/// The path with ids and names replaced by placeholders (a span name of bounded cardinality).
fn route_of(path: &str) -> String {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "functions", _, rest @ ..] => match rest {
            [] => "/v1/functions/{name}".to_owned(),
            [sub] if matches!(*sub, "versions" | "invoke" | "logs") => {
                format!("/v1/functions/{{name}}/{sub}")
            }
            _ => "/v1/functions/{name}/…".to_owned(),
        },
        ["v1", "invocations", _] => "/v1/invocations/{id}".to_owned(),
        ["v1", "invocations", _, "logs"] => "/v1/invocations/{id}/logs".to_owned(),
        ["v1", "admin", "dlq", _, rest @ ..] => {
            if rest.is_empty() {
                "/v1/admin/dlq/{id}".to_owned()
            } else {
                "/v1/admin/dlq/{id}/…".to_owned()
            }
        }
        _ if STATIC_ROUTES.contains(&path) => path.to_owned(),
        _ => "other".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_hide_names_and_ids() {
        assert_eq!(
            route_of("/v1/functions/resize/invoke"),
            "/v1/functions/{name}/invoke"
        );
        assert_eq!(route_of("/v1/functions/resize"), "/v1/functions/{name}");
        assert_eq!(route_of("/v1/invocations/0190-abc"), "/v1/invocations/{id}");
        assert_eq!(route_of("/v1/functions"), "/v1/functions");
        assert_eq!(route_of("/healthz"), "/healthz");
        assert_eq!(route_of("/nope/x"), "other");
    }

    #[test]
    fn only_one_valid_traceparent_is_honoured() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = warp::http::HeaderMap::new();
        assert_eq!(incoming_traceparent(&headers), None);
        headers.insert(TRACEPARENT_HEADER, valid.parse().unwrap());
        assert_eq!(
            incoming_traceparent(&headers)
                .map(|t| t.to_string())
                .as_deref(),
            Some(valid)
        );
        headers.append(TRACEPARENT_HEADER, valid.parse().unwrap());
        assert_eq!(incoming_traceparent(&headers), None, "two headers: ignored");
        let mut bad = warp::http::HeaderMap::new();
        bad.insert(TRACEPARENT_HEADER, "00-0-0-01".parse().unwrap());
        assert_eq!(incoming_traceparent(&bad), None);
    }
}
