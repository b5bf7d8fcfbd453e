//! `fnmesh fn deploy|list|get|delete|versions`.

use anyhow::{bail, Context, Result};
use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::args::{DeployArgs, FnCommand};
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
    let code = source.map(|source| {
        json!({
            "source": base64::engine::general_purpose::STANDARD.encode(&source),
            "source_type": "inline",
        })
    });
    let mut update = Map::new();
    update.insert("runtime".into(), json!(args.runtime));
    update.insert("handler".into(), json!(args.handler));
    update.insert("config".into(), Value::Object(config));
    if let Some(code) = code {
        update.insert("code".into(), code);
    }
    for (field, value) in [
        ("image", args.image.as_ref().map(|v| json!(v))),
        ("mode", args.mode.as_ref().map(|v| json!(v))),
        ("port", args.port.map(|v| json!(v))),
    ] {
        if let Some(value) = value {
            update.insert(field.into(), value);
        }
    }
    let mut create = update.clone();
    create.insert("name".into(), json!(args.name));
    let (create, update) = (Value::Object(create), Value::Object(update));
    let created = api
        .call(
            Method::POST,
            "/v1/functions",
            Some(serde_json::to_vec(&create)?),
        )
        .await;
    let function = match created {
        Ok((_, f)) => f,
        Err(e) => match e.downcast_ref::<ApiFailure>() {
            Some(f) if f.status == StatusCode::CONFLICT => {
                let (_, f) = api
                    .call(
                        Method::PUT,
                        &format!("/v1/functions/{}", args.name),
                        Some(serde_json::to_vec(&update)?),
                    )
                    .await?;
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
