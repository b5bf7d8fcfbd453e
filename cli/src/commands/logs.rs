//! `fnmesh logs <function> [--follow]`: the output of a function's latest invocations, or (with
//! `--follow`) of its invocations as they finish, read from the gateway's server-sent events
//! (`GET /v1/functions/{name}/logs?follow=true`).

use anyhow::{bail, Context, Result};
use eventsource_stream::Eventsource as _;
use futures::StreamExt as _;
use reqwest::Method;
use serde_json::Value;

use crate::args::LogsArgs;
use crate::client::ApiClient;
use crate::output;

/// Longest log event accepted (an invocation's output is capped well below it).
const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Runs the command.
pub async fn of_function(args: LogsArgs, as_json: bool) -> Result<()> {
    if fnmesh_core::FunctionName::parse(&args.id).is_err() {
        bail!(
            "{:?} is neither an invocation id nor a function name",
            args.id
        );
    }
    let api = ApiClient::new(&args.client)?;
    if !args.follow {
        let (_, v) = api
            .call(
                Method::GET,
                &format!("/v1/functions/{}/logs", args.id),
                None,
            )
            .await?;
        if as_json {
            output::json(&v);
        } else {
            let entries = v["entries"].as_array().cloned().unwrap_or_default();
            // Oldest first, like a log.
            for entry in entries.iter().rev() {
                print_entry(entry);
            }
        }
        return Ok(());
    }
    let resp = api
        .open_stream(&format!("/v1/functions/{}/logs?follow=true", args.id))
        .await?;
    eprintln!("following {} (Ctrl-C to stop)", args.id);
    let mut events = resp.bytes_stream().eventsource();
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let event = tokio::select! {
            _ = &mut stop => return Ok(()),
            event = events.next() => event,
        };
        let Some(event) = event else {
            bail!("the gateway closed the log stream");
        };
        let event = event.context("reading the log stream")?;
        // Other events (and keep-alive comments, which the parser drops) are not logs.
        if event.event != "log" {
            continue;
        }
        if event.data.len() > MAX_EVENT_BYTES {
            bail!("a log event is larger than {MAX_EVENT_BYTES} bytes");
        }
        match serde_json::from_str::<Value>(&event.data) {
            Ok(entry) if as_json => println!("{entry}"),
            Ok(entry) => print_entry(&entry),
            Err(e) => eprintln!("warning: undecodable log event: {e}"),
        }
    }
}

/// `[<invocation id>] <line>` for each line the invocation printed.
fn print_entry(entry: &Value) {
    let id = entry["invocation_id"].as_str().unwrap_or("?");
    let text = entry["text"].as_str().unwrap_or("");
    for line in text.lines() {
        println!("[{id}] {line}");
    }
    if entry["truncated"].as_bool() == Some(true) {
        println!("[{id}] [output truncated]");
    }
}
