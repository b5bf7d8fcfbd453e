//! `fnmesh logs <function> [--follow]`: the output of a function's latest invocations, or (with
//! `--follow`) of its invocations as they finish, read from the gateway's server-sent events
//! (`GET /v1/functions/{name}/logs?follow=true`).

use anyhow::{bail, Context, Result};
use futures::StreamExt as _;
use reqwest::Method;
use serde_json::Value;

use crate::args::LogsArgs;
use crate::client::ApiClient;
use crate::output;

/// Longest server-sent event accepted (an invocation's output is capped well below it).
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
    let mut body = resp.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let chunk = tokio::select! {
            _ = &mut stop => return Ok(()),
            chunk = body.next() => chunk,
        };
        let Some(chunk) = chunk else {
            bail!("the gateway closed the log stream");
        };
        buffer.extend_from_slice(&chunk.context("reading the log stream")?);
        while let Some(end) = event_end(&buffer) {
            let raw: Vec<u8> = buffer.drain(..end).collect();
            if let Some(data) = log_data(&String::from_utf8_lossy(&raw)) {
                match serde_json::from_str::<Value>(&data) {
                    Ok(entry) if as_json => println!("{entry}"),
                    Ok(entry) => print_entry(&entry),
                    Err(e) => eprintln!("warning: undecodable log event: {e}"),
                }
            }
        }
        if buffer.len() > MAX_EVENT_BYTES {
            bail!("a log event is larger than {MAX_EVENT_BYTES} bytes");
        }
    }
}

/// Where the first complete event (ended by a blank line) ends, separator included.
fn event_end(buffer: &[u8]) -> Option<usize> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The data of a `log` event (its `data:` lines joined), `None` for other events and comments.
fn log_data(event: &str) -> Option<String> {
    let mut name = "message";
    let mut data: Vec<&str> = Vec::new();
    for line in event.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = v.trim();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    (name == "log" && !data.is_empty()).then(|| data.join("\n"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_events_are_parsed_and_others_skipped() {
        let stream = b"event:log\nid:1\ndata:{\"text\":\"hi\"}\n\n:keep-alive\n\n";
        let end = event_end(stream).unwrap();
        assert_eq!(
            log_data(&String::from_utf8_lossy(&stream[..end])).as_deref(),
            Some("{\"text\":\"hi\"}")
        );
        let rest = &stream[end..];
        let end2 = event_end(rest).unwrap();
        assert_eq!(log_data(&String::from_utf8_lossy(&rest[..end2])), None);
        assert_eq!(event_end(b"event:log\ndata:{"), None);
    }
}
