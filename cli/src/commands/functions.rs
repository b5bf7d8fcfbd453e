//! `fnmesh fn deploy|list|get|delete|versions|alias`.

use anyhow::{bail, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::args::{AliasCommand, DeployArgs, FnCommand};
use crate::client::{ApiClient, ApiFailure};
use crate::output;

pub async fn run(cmd: FnCommand, as_json: bool) -> Result<()> {
    match cmd {
        FnCommand::Deploy(args) => deploy(args, as_json).await,
        FnCommand::List { client, limit } => {
            let api = ApiClient::new(&client)?;
            let mut items = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut path = format!("/v1/functions?limit={limit}");
                if let Some(c) = &cursor {
                    path.push_str(&format!("&cursor={c}"));
                }
                let (_, page) = api.call(Method::GET, &path, None).await?;
                items.extend(page["items"].as_array().cloned().unwrap_or_default());
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
            if as_json {
                output::json(&Value::Array(items));
            } else {
                functions_table(&items);
            }
            Ok(())
        }
        FnCommand::Get {
            client,
            name,
            version,
        } => {
            let api = ApiClient::new(&client)?;
            let path = match version {
                Some(v) => format!("/v1/functions/{name}?version={v}"),
                None => format!("/v1/functions/{name}"),
            };
            let (_, f) = api.call(Method::GET, &path, None).await?;
            if as_json {
                output::json(&f);
            } else {
                output::record(
                    &f,
                    &[
                        "name",
                        "version",
                        "runtime",
                        "handler",
                        "id",
                        "code",
                        "config",
                        "metadata",
                        "created_at",
                        "updated_at",
                    ],
                );
            }
            Ok(())
        }
        FnCommand::Delete { client, name } => {
            let api = ApiClient::new(&client)?;
            api.call(Method::DELETE, &format!("/v1/functions/{name}"), None)
                .await?;
            if as_json {
                output::json(&json!({"deleted": name}));
            } else {
                println!("deleted {name}");
            }
            Ok(())
        }
        FnCommand::Alias(cmd) => alias(cmd, as_json).await,
        FnCommand::Versions { client, name } => {
            let api = ApiClient::new(&client)?;
            let (_, page) = api
                .call(Method::GET, &format!("/v1/functions/{name}/versions"), None)
                .await?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            if as_json {
                output::json(&Value::Array(items));
            } else {
                functions_table(&items);
            }
            Ok(())
        }
    }
}

fn functions_table(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|f| {
            vec![
                output::cell(&f["name"]),
                output::cell(&f["version"]),
                output::cell(&f["runtime"]),
                output::cell(&f["handler"]),
                output::cell(&f["config"]["memory_mb"]),
                output::cell(&f["config"]["timeout_ms"]),
                output::cell(&f["updated_at"]),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "VERSION",
            "RUNTIME",
            "HANDLER",
            "MEMORY_MB",
            "TIMEOUT_MS",
            "UPDATED",
        ],
        &rows,
    );
}

async fn deploy(args: DeployArgs, as_json: bool) -> Result<()> {
    let api = ApiClient::new(&args.client)?;
    let source = match &args.path {
        Some(path) => Some(crate::pack::pack(path)?),
        None if args.runtime == "image" => None,
        None => bail!(
            "a code directory or file is needed for runtime {:?}",
            args.runtime
        ),
    };
    let mut config = Map::new();
    if let Some(v) = args.memory_mb {
        config.insert("memory_mb".into(), json!(v));
    }
    if let Some(v) = args.timeout_ms {
        config.insert("timeout_ms".into(), json!(v));
    }
    if let Some(v) = args.max_concurrency {
        config.insert("max_concurrency".into(), json!(v));
    }
    if let Some(v) = args.min_warm {
        config.insert("min_warm".into(), json!(v));
    }
    if let Some(v) = &args.priority {
        config.insert("priority".into(), json!(v));
    }
    if !args.env.is_empty() {
        let mut env = Map::new();
        for kv in &args.env {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--env {kv:?}: expected KEY=VALUE"))?;
            env.insert(k.to_owned(), json!(v));
        }
        config.insert("environment".into(), Value::Object(env));
    }
    // The code goes as the body (a raw upload, up to the gateway's archive cap rather than
    // its JSON body cap), the other fields as headers; an image by reference has no code and
    // goes as JSON.
    let mut fields: Vec<(&str, String)> = vec![
        ("fnmesh-runtime", args.runtime.clone()),
        ("fnmesh-handler", args.handler.clone()),
        ("fnmesh-config", ascii_json(&Value::Object(config.clone()))),
    ];
    for (header, value) in [
        ("fnmesh-image", args.image.clone()),
        ("fnmesh-mode", args.mode.clone()),
        ("fnmesh-port", args.port.map(|p| p.to_string())),
    ] {
        if let Some(value) = value {
            fields.push((header, value));
        }
    }
    let send = |method: Method, path: String, create: bool| {
        let api = &api;
        let source = source.clone();
        let mut fields = fields.clone();
        let name = args.name.clone();
        let config = config.clone();
        async move {
            if create {
                fields.push(("fnmesh-name", name));
            }
            match source {
                Some((bytes, content_type)) => {
                    let headers: Vec<(&str, &str)> =
                        fields.iter().map(|(h, v)| (*h, v.as_str())).collect();
                    api.send(method, &path, Some(bytes), content_type, &headers)
                        .await
                }
                None => {
                    let mut body = Map::new();
                    for (header, value) in &fields {
                        let field = header.trim_start_matches("fnmesh-");
                        let value = match *header {
                            "fnmesh-config" => Value::Object(config.clone()),
                            "fnmesh-port" => json!(value.parse::<u16>().unwrap_or_default()),
                            _ => json!(value),
                        };
                        body.insert(field.to_owned(), value);
                    }
                    api.call(method, &path, Some(serde_json::to_vec(&body)?))
                        .await
                }
            }
        }
    };
    let created = send(Method::POST, "/v1/functions".to_owned(), true).await;
    let function = match created {
        Ok((_, f)) => f,
        Err(e) => match e.downcast_ref::<ApiFailure>() {
            Some(f) if f.status == StatusCode::CONFLICT => {
                let (_, f) =
                    send(Method::PUT, format!("/v1/functions/{}", args.name), false).await?;
                f
            }
            _ => return Err(e),
        },
    };
    if as_json {
        output::json(&function);
    } else {
        let Some(version) = function["version"].as_u64() else {
            bail!("unexpected answer: {function}");
        };
        println!(
            "deployed {} version {} ({} bytes of code, sha256 {})",
            output::cell(&function["name"]),
            version,
            output::cell(&function["code"]["size"]),
            output::cell(&function["code"]["checksum"]),
        );
    }
    Ok(())
}

/// JSON with every non-ASCII character escaped (`\uXXXX`), so it fits in a header.
fn ascii_json(value: &Value) -> String {
    let mut out = String::new();
    for c in value.to_string().chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// `fnmesh fn alias …`.
async fn alias(cmd: AliasCommand, as_json: bool) -> Result<()> {
    let (client, method, path, body) = match cmd {
        AliasCommand::Set {
            client,
            function,
            alias,
            version,
            split,
        } => {
            let body = match (version, split) {
                (Some(version), _) => json!({ "version": version }),
                (None, Some(split)) => json!({ "versions": parse_split(&split)? }),
                (None, None) => bail!("give --version or --split"),
            };
            let path = format!("/v1/functions/{function}/aliases/{alias}");
            (
                client,
                Method::PUT,
                path,
                Some(body.to_string().into_bytes()),
            )
        }
        AliasCommand::Get {
            client,
            function,
            alias,
        } => {
            let path = format!("/v1/functions/{function}/aliases/{alias}");
            (client, Method::GET, path, None)
        }
        AliasCommand::List { client, function } => {
            let api = ApiClient::new(&client)?;
            let path = format!("/v1/functions/{function}/aliases");
            let (_, page) = api.call(Method::GET, &path, None).await?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            if as_json {
                output::json(&Value::Array(items));
            } else {
                let rows: Vec<Vec<String>> = items
                    .iter()
                    .map(|a| {
                        vec![
                            output::cell(&a["name"]),
                            output::cell(&a["versions"]),
                            output::cell(&a["previous"]),
                            output::cell(&a["revision"]),
                            output::cell(&a["updated_at"]),
                        ]
                    })
                    .collect();
                output::table(
                    &["ALIAS", "VERSIONS", "PREVIOUS", "REVISION", "UPDATED"],
                    &rows,
                );
            }
            return Ok(());
        }
        AliasCommand::Delete {
            client,
            function,
            alias,
        } => {
            let api = ApiClient::new(&client)?;
            let path = format!("/v1/functions/{function}/aliases/{alias}");
            api.call(Method::DELETE, &path, None).await?;
            if as_json {
                output::json(&json!({ "deleted": alias }));
            } else {
                println!("deleted alias {alias} of {function}");
            }
            return Ok(());
        }
        AliasCommand::Rollback {
            client,
            function,
            alias,
        } => {
            let path = format!("/v1/functions/{function}/aliases/{alias}/rollback");
            (client, Method::POST, path, None)
        }
    };
    let api = ApiClient::new(&client)?;
    let (_, v) = api.call(method, &path, body).await?;
    if as_json {
        output::json(&v);
    } else {
        output::record(
            &v,
            &[
                "name",
                "function",
                "versions",
                "previous",
                "revision",
                "updated_at",
            ],
        );
    }
    Ok(())
}

/// `3=90,4=10` as `{"3": 90, "4": 10}`.
fn parse_split(split: &str) -> Result<Map<String, Value>> {
    let mut weights = Map::new();
    for part in split.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (version, weight) = part
            .split_once('=')
            .with_context(|| format!("--split {part:?}: expected VERSION=WEIGHT"))?;
        let version: u32 = version
            .trim()
            .parse()
            .with_context(|| format!("--split {part:?}: the version is not a number"))?;
        let weight: u8 = weight
            .trim()
            .parse()
            .with_context(|| format!("--split {part:?}: the weight is not 0..=255"))?;
        weights.insert(version.to_string(), json!(weight));
    }
    if weights.is_empty() {
        bail!("--split names no version");
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_parsed_into_a_map_of_weights() {
        let map = parse_split("3=90, 4=10").unwrap();
        assert_eq!(Value::Object(map), json!({"3": 90, "4": 10}));
        assert!(parse_split("3:90").is_err());
        assert!(parse_split("x=90").is_err());
        assert!(parse_split("").is_err());
    }
}
