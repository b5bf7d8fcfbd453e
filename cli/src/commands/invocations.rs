//! `fnmesh invoke`, `fnmesh invocation get|list`, `fnmesh logs`.

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::Value;

use crate::args::{InvocationCommand, InvokeArgs, LogsArgs};
use crate::client::ApiClient;
use crate::output;

const RECORD_FIELDS: &[&str] = &[
    "id",
    "function",
    "version",
    "alias",
    "status",
    "result",
    "error",
    "metrics",
    "node_id",
    "created_at",
    "started_at",
    "completed_at",
];

pub async fn invoke(args: InvokeArgs, as_json: bool) -> Result<()> {
    let api = ApiClient::new(&args.client)?;
    let body = match args.data.as_deref() {
        None => Vec::new(),
        // `@-`: standard input, as curl reads it.
        Some("@-") => {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut body)
                .context("cannot read the payload from standard input")?;
            body
        }
        Some(d) if d.starts_with('@') => {
            let path = &d[1..];
            std::fs::read(path).with_context(|| format!("cannot read payload file {path}"))?
        }
        Some(d) => d.as_bytes().to_vec(),
    };
    if !body.is_empty() {
        serde_json::from_slice::<Value>(&body).context("--data is not valid JSON")?;
    }
    let mut query = Vec::new();
    if args.asynchronous {
        query.push("async=true".to_owned());
    }
    if let Some(v) = args.version {
        query.push(format!("version={v}"));
    }
    if let Some(alias) = &args.alias {
        query.push(format!("alias={alias}"));
    }
    if let Some(priority) = &args.priority {
        query.push(format!("priority={priority}"));
    }
    let mut path = format!("/v1/functions/{}/invoke", args.name);
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let headers: Vec<(&str, &str)> = args
        .idempotency_key
        .as_deref()
        .map(|key| ("idempotency-key", key))
        .into_iter()
        .collect();
    let (_, v) = api
        .call_with(Method::POST, &path, Some(body), &headers)
        .await?;
    if as_json {
        output::json(&v);
    } else if args.asynchronous {
        // The bare id, so that `fnmesh invocation get $(fnmesh invoke f --async)` works.
        println!("{}", output::cell(&v["id"]));
    } else {
        output::record(&v, RECORD_FIELDS);
    }
    Ok(())
}

pub async fn invocation(cmd: InvocationCommand, as_json: bool) -> Result<()> {
    match cmd {
        InvocationCommand::Get { client, id } => {
            let api = ApiClient::new(&client)?;
            let (_, v) = api
                .call(Method::GET, &format!("/v1/invocations/{id}"), None)
                .await?;
            if as_json {
                output::json(&v);
            } else {
                output::record(&v, RECORD_FIELDS);
            }
        }
        InvocationCommand::Cancel { client, id } => {
            let api = ApiClient::new(&client)?;
            let (_, v) = api
                .call(Method::POST, &format!("/v1/invocations/{id}/cancel"), None)
                .await?;
            if as_json {
                output::json(&v);
            } else {
                output::record(&v, RECORD_FIELDS);
            }
        }
        InvocationCommand::List {
            client,
            function,
            status,
            limit,
        } => {
            let api = ApiClient::new(&client)?;
            let mut path = format!("/v1/invocations?limit={limit}");
            if let Some(f) = function {
                path.push_str(&format!("&function={f}"));
            }
            if let Some(s) = status {
                path.push_str(&format!("&status={s}"));
            }
            let (_, page) = api.call(Method::GET, &path, None).await?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            if as_json {
                output::json(&Value::Array(items));
            } else {
                let rows: Vec<Vec<String>> = items
                    .iter()
                    .map(|i| {
                        vec![
                            output::cell(&i["id"]),
                            output::cell(&i["function"]),
                            output::cell(&i["version"]),
                            output::cell(&i["status"]),
                            output::cell(&i["metrics"]["duration_ms"]),
                            output::cell(&i["created_at"]),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "ID",
                        "FUNCTION",
                        "VERSION",
                        "STATUS",
                        "DURATION_MS",
                        "CREATED",
                    ],
                    &rows,
                );
            }
        }
    }
    Ok(())
}

pub async fn logs(args: LogsArgs, as_json: bool) -> Result<()> {
    if args.follow || fnmesh_core::InvocationId::parse(&args.id).is_err() {
        return super::logs::of_function(args, as_json).await;
    }
    let api = ApiClient::new(&args.client)?;
    let (_, v) = api
        .call(
            Method::GET,
            &format!("/v1/invocations/{}/logs", args.id),
            None,
        )
        .await?;
    if as_json {
        output::json(&v);
    } else {
        print!("{}", v["logs"].as_str().unwrap_or(""));
        if v["truncated"].as_bool() == Some(true) {
            println!("\n[output truncated]");
        }
    }
    Ok(())
}
