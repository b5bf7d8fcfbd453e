//! The filter tree: every route of API v1, its auth, and the single `recover`.
//!
//! Each route matches its path, then its method, then authenticates (and rate-limits) the key,
//! then extracts query and body. So an unknown path answers 404, a known path with another
//! method 405, and auth runs once per request. Function names in paths are taken raw and
//! validated by the handler, so an invalid name answers 400 `invalid_name`, not 404.

use std::time::Instant;

use bytes::Bytes;
use warp::filters::BoxedFilter;
use warp::http::HeaderMap;
use warp::path::Tail;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::auth::Principal;
use crate::error::{into_reply, recover, ApiError};
use crate::state::State;
use crate::{
    admin, body, functions, health, invocations, keys, ratelimit, registries, secrets, tokens,
};

/// The whole API, with errors rendered.
pub(crate) fn api(state: State) -> BoxedFilter<(Response,)> {
    let metrics = state.metrics.clone();
    let health = warp::path!("healthz")
        .and(warp::get())
        .then(health::healthz)
        .map(into_reply)
        .and_then(std::future::ready)
        .or(warp::path!("readyz")
            .and(warp::get())
            .and(with_state(state.clone()))
            .then(health::readyz)
            .map(into_reply)
            .and_then(std::future::ready))
        .unify()
        .or(warp::path!("v1" / "openapi.json").and(warp::get()).map(|| {
            let mut response = Response::new(crate::openapi::document().into());
            response.headers_mut().insert(
                warp::http::header::CONTENT_TYPE,
                warp::http::HeaderValue::from_static("application/json"),
            );
            response
        }))
        .unify()
        .or(warp::path!("metrics")
            .and(warp::get())
            .and(with_state(state.clone()))
            .and(warp::header::optional::<String>("authorization"))
            .then(health::metrics)
            .map(into_reply)
            .and_then(std::future::ready))
        .unify();

    let routes = health
        .or(functions_routes(state.clone()))
        .unify()
        .or(invocations_routes(state.clone()))
        .unify()
        .or(secrets_routes(state.clone()))
        .unify()
        .or(registries_routes(state.clone()))
        .unify()
        .or(auth_routes(state.clone()))
        .unify()
        .or(admin_routes(state))
        .unify();
    let started = warp::any().map(Instant::now);
    started
        .and(warp::method())
        .and(warp::path::full())
        .and(routes.recover(recover).unify())
        .map(
            move |started: Instant, method, path: warp::path::FullPath, response: Response| {
                metrics.observe_http(
                    &method,
                    path.as_str(),
                    response.status().as_u16(),
                    started.elapsed(),
                );
                tracing::info!(
                    http.method = %method,
                    http.path = path.as_str(),
                    http.status = response.status().as_u16(),
                    http.duration_ms = started.elapsed().as_millis() as u64,
                    "request"
                );
                response
            },
        )
        .with(warp::trace(crate::telemetry::request_span))
        .map(warp::Reply::into_response)
        .boxed()
}

fn with_state(
    state: State,
) -> impl Filter<Extract = (State,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// Authenticates the `Authorization` header (an API key or an access token), applies
/// `X-Fnmesh-Namespace` (admins only: see [`Principal::acting_in`]) and counts the request
/// against the key's limit.
fn authed(state: State) -> impl Filter<Extract = (Principal,), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and(with_state(state))
        .and_then(|headers: HeaderMap, state: State| async move {
            let header = headers
                .get(warp::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let principal = state
                .authenticator
                .authenticate_header(header)
                .await
                .map_err(ApiError::reject)?;
            crate::audit::note_principal(&principal);
            let requested = headers
                .get(crate::auth::NAMESPACE_HEADER)
                .map(|v| v.to_str().unwrap_or("\u{0}"));
            let principal = principal.acting_in(requested).map_err(ApiError::reject)?;
            crate::audit::note_principal(&principal);
            ratelimit::check_key(&state, &principal)
                .await
                .map_err(ApiError::reject)?;
            Ok::<_, Rejection>(principal)
        })
}

/// Which route under `/v1/functions/{name}` a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FunctionSub {
    Item,
    Versions,
    Invoke,
    Logs,
}

/// Matches `/v1/functions/{name}[/versions|/invoke|/logs]`, extracting the raw name (validated by
/// the handler, so that an empty or invalid name is a 400 rather than a 404).
fn function_path(sub: FunctionSub) -> impl Filter<Extract = (String,), Error = Rejection> + Clone {
    warp::path("v1")
        .and(warp::path("functions"))
        .and(warp::path::tail())
        .and_then(move |tail: Tail| async move {
            let tail = tail.as_str();
            if tail.is_empty() {
                return Err(warp::reject::not_found());
            }
            let mut segments = tail.split('/');
            let name = segments.next().unwrap_or_default().to_owned();
            let found = match (segments.next(), segments.next()) {
                (None, _) => FunctionSub::Item,
                (Some("versions"), None) => FunctionSub::Versions,
                (Some("invoke"), None) => FunctionSub::Invoke,
                (Some("logs"), None) => FunctionSub::Logs,
                _ => return Err(warp::reject::not_found()),
            };
            if found == sub {
                Ok(name)
            } else {
                Err(warp::reject::not_found())
            }
        })
}

fn functions_routes(state: State) -> BoxedFilter<(Response,)> {
    let s = state;
    let upload = body::upload(s.clone());

    let create = warp::path!("v1" / "functions")
        .and(warp::post())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .and(upload.clone())
        .then(functions::create::handle)
        .map(into_reply);
    let list = warp::path!("v1" / "functions")
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .and(warp::query::<functions::PageQuery>())
        .then(functions::list::handle)
        .map(into_reply);
    let get = function_path(FunctionSub::Item)
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .and(warp::query::<functions::get::VersionQuery>())
        .then(|name: String, state, principal, query| {
            functions::get::handle(state, principal, name, query)
        })
        .map(into_reply);
    let update = function_path(FunctionSub::Item)
        .and(warp::put())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .and(upload.clone())
        .then(|name: String, state, principal, upload: body::Upload| {
            functions::update::handle(state, principal, name, upload)
        })
        .map(into_reply);
    let delete = function_path(FunctionSub::Item)
        .and(warp::delete())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(|name: String, state, principal| functions::delete::handle(state, principal, name))
        .map(into_reply);
    let versions = function_path(FunctionSub::Versions)
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(|name: String, state, principal| functions::versions::handle(state, principal, name))
        .map(into_reply);
    let invoke = function_path(FunctionSub::Invoke)
        .and(warp::post())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .and(warp::query::<invocations::invoke::InvokeQuery>())
        .and(warp::header::headers_cloned())
        .and(body::capped(s.clone()))
        .then(
            |name: String, state, principal, query, headers, body: Bytes| {
                invocations::invoke::handle(state, principal, name, query, headers, body)
            },
        )
        .map(into_reply);
    let aliases = aliases_routes(s.clone());
    let logs = function_path(FunctionSub::Logs)
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .and(warp::query::<functions::logs::LogsQuery>())
        .then(|name: String, state, principal, query| {
            functions::logs::handle(state, principal, name, query)
        })
        .map(into_reply);

    create
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(update)
        .unify()
        .or(delete)
        .unify()
        .or(versions)
        .unify()
        .or(invoke)
        .unify()
        .or(logs)
        .unify()
        .and_then(std::future::ready)
        .or(aliases)
        .unify()
        .boxed()
}

/// `/v1/functions/{name}/aliases[/{alias}[/rollback]]`: names taken raw, validated by the
/// handlers.
fn aliases_routes(state: State) -> BoxedFilter<(Response,)> {
    let s = state;
    let list = warp::path!("v1" / "functions" / String / "aliases")
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(|name: String, state, principal| functions::aliases::list(state, principal, name))
        .map(into_reply);
    let get = warp::path!("v1" / "functions" / String / "aliases" / String)
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(|name: String, alias: String, state, principal| {
            functions::aliases::get(state, principal, name, alias)
        })
        .map(into_reply);
    let put = warp::path!("v1" / "functions" / String / "aliases" / String)
        .and(warp::put())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .and(body::capped(s.clone()))
        .then(
            |name: String, alias: String, state, principal, body: Bytes| {
                functions::aliases::put(state, principal, name, alias, body)
            },
        )
        .map(into_reply);
    let delete = warp::path!("v1" / "functions" / String / "aliases" / String)
        .and(warp::delete())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(|name: String, alias: String, state, principal| {
            functions::aliases::delete(state, principal, name, alias)
        })
        .map(into_reply);
    let rollback = warp::path!("v1" / "functions" / String / "aliases" / String / "rollback")
        .and(warp::post())
        .and(with_state(s.clone()))
        .and(authed(s))
        .then(|name: String, alias: String, state, principal| {
            functions::aliases::rollback(state, principal, name, alias)
        })
        .map(into_reply);
    list.or(get)
        .unify()
        .or(put)
        .unify()
        .or(delete)
        .unify()
        .or(rollback)
        .unify()
        .and_then(std::future::ready)
        .boxed()
}

/// `/v1/registries[/{host}]`: hosts taken raw, validated by the handlers.
fn registries_routes(state: State) -> BoxedFilter<(Response,)> {
    let s = state;
    let list = warp::path!("v1" / "registries")
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(registries::list::handle)
        .map(into_reply);
    let put = warp::path!("v1" / "registries" / String)
        .and(warp::put())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .and(body::capped(s.clone()))
        .then(|host: String, state, principal, body: Bytes| {
            registries::put::handle(state, principal, host, body)
        })
        .map(into_reply);
    let delete = warp::path!("v1" / "registries" / String)
        .and(warp::delete())
        .and(with_state(s.clone()))
        .and(authed(s))
        .then(|host: String, state, principal| registries::delete::handle(state, principal, host))
        .map(into_reply);
    list.or(put)
        .unify()
        .or(delete)
        .unify()
        .and_then(std::future::ready)
        .boxed()
}

/// `/v1/functions/{name}/secrets[/{key}]`: names and keys taken raw, validated by the handlers.
fn secrets_routes(state: State) -> BoxedFilter<(Response,)> {
    let s = state;
    let list = warp::path!("v1" / "functions" / String / "secrets")
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(|name: String, state, principal| secrets::list::handle(state, principal, name))
        .map(into_reply);
    let put = warp::path!("v1" / "functions" / String / "secrets" / String)
        .and(warp::put())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .and(body::capped(s.clone()))
        .then(|name: String, key: String, state, principal, body: Bytes| {
            secrets::put::handle(state, principal, name, key, body)
        })
        .map(into_reply);
    let delete = warp::path!("v1" / "functions" / String / "secrets" / String)
        .and(warp::delete())
        .and(with_state(s.clone()))
        .and(authed(s))
        .then(|name: String, key: String, state, principal| {
            secrets::delete::handle(state, principal, name, key)
        })
        .map(into_reply);
    list.or(put)
        .unify()
        .or(delete)
        .unify()
        .and_then(std::future::ready)
        .boxed()
}

fn invocations_routes(state: State) -> BoxedFilter<(Response,)> {
    let s = state;
    let list = warp::path!("v1" / "invocations")
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .and(warp::query::<invocations::list::ListInvocationsQuery>())
        .then(invocations::list::handle)
        .map(into_reply);
    let get = warp::path!("v1" / "invocations" / String)
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(|id: String, state, principal| invocations::get::handle(state, principal, id))
        .map(into_reply);
    let logs = warp::path!("v1" / "invocations" / String / "logs")
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(|id: String, state, principal| invocations::logs::handle(state, principal, id))
        .map(into_reply);
    let cancel = warp::path!("v1" / "invocations" / String / "cancel")
        .and(warp::post())
        .and(with_state(s.clone()))
        .and(authed(s))
        .then(|id: String, state, principal| invocations::cancel::handle(state, principal, id))
        .map(into_reply);
    list.or(get)
        .unify()
        .or(logs)
        .unify()
        .or(cancel)
        .unify()
        .and_then(std::future::ready)
        .boxed()
}

/// `/v1/auth/...` (tokens) and `/v1/keys` (API keys).
fn auth_routes(state: State) -> BoxedFilter<(Response,)> {
    let s = state;
    let body = body::capped(s.clone());
    let token = warp::path!("v1" / "auth" / "token")
        .and(warp::post())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(tokens::issue::handle)
        .map(into_reply);
    let refresh = warp::path!("v1" / "auth" / "refresh")
        .and(warp::post())
        .and(with_state(s.clone()))
        .and(body.clone())
        .then(tokens::refresh::handle)
        .map(into_reply);
    let revoke = warp::path!("v1" / "auth" / "revoke")
        .and(warp::post())
        .and(with_state(s.clone()))
        .and(body.clone())
        .then(tokens::revoke::handle)
        .map(into_reply);
    let create_key = warp::path!("v1" / "keys")
        .and(warp::post())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .and(body)
        .then(keys::create::handle)
        .map(into_reply);
    let list_keys = warp::path!("v1" / "keys")
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .and(warp::query::<keys::list::KeysQuery>())
        .then(keys::list::handle)
        .map(into_reply);
    let delete_key = warp::path!("v1" / "keys" / String)
        .and(warp::delete())
        .and(with_state(s.clone()))
        .and(authed(s))
        .then(|id: String, state, principal| keys::delete::handle(state, principal, id))
        .map(into_reply);
    token
        .or(refresh)
        .unify()
        .or(revoke)
        .unify()
        .or(create_key)
        .unify()
        .or(list_keys)
        .unify()
        .or(delete_key)
        .unify()
        .and_then(std::future::ready)
        .boxed()
}

/// `/v1/admin/...`: the operator API (each handler checks the admin role).
fn admin_routes(state: State) -> BoxedFilter<(Response,)> {
    let s = state;
    let dlq_list = warp::path!("v1" / "admin" / "dlq")
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .and(warp::query::<admin::dlq::DlqQuery>())
        .then(admin::dlq::list)
        .map(into_reply);
    let dlq_get = warp::path!("v1" / "admin" / "dlq" / String)
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(|id: String, state, principal| admin::dlq::get(state, principal, id))
        .map(into_reply);
    let dlq_delete = warp::path!("v1" / "admin" / "dlq" / String)
        .and(warp::delete())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(|id: String, state, principal| admin::dlq::delete(state, principal, id))
        .map(into_reply);
    let dlq_replay = warp::path!("v1" / "admin" / "dlq" / String / "replay")
        .and(warp::post())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(|id: String, state, principal| admin::dlq::replay(state, principal, id))
        .map(into_reply);
    let audit = warp::path!("v1" / "admin" / "audit")
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .and(warp::query::<admin::audit::AuditQuery>())
        .then(admin::audit::list)
        .map(into_reply);
    let queues = warp::path!("v1" / "admin" / "queues")
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(admin::queues::handle)
        .map(into_reply);
    let nodes = warp::path!("v1" / "admin" / "nodes")
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(admin::nodes::list)
        .map(into_reply);
    let regions = warp::path!("v1" / "admin" / "regions")
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(admin::regions::list)
        .map(into_reply);
    let namespaces = warp::path!("v1" / "admin" / "namespaces")
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(admin::namespaces::list)
        .map(into_reply);
    let namespace_get = warp::path!("v1" / "admin" / "namespaces" / String)
        .and(warp::get())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .then(|ns: String, state, principal| admin::namespaces::get(state, principal, ns))
        .map(into_reply);
    let namespace_put = warp::path!("v1" / "admin" / "namespaces" / String)
        .and(warp::put())
        .and(with_state(s.clone()))
        .and(authed(s.clone()))
        .and(body::capped(s))
        .then(|ns: String, state, principal, body: Bytes| {
            admin::namespaces::put(state, principal, ns, body)
        })
        .map(into_reply);
    dlq_list
        .or(dlq_get)
        .unify()
        .or(dlq_delete)
        .unify()
        .or(dlq_replay)
        .unify()
        .or(audit)
        .unify()
        .or(queues)
        .unify()
        .or(nodes)
        .unify()
        .or(regions)
        .unify()
        .or(namespaces)
        .unify()
        .or(namespace_get)
        .unify()
        .or(namespace_put)
        .unify()
        .and_then(std::future::ready)
        .boxed()
}
