//! `fnmesh registry login|list|logout`: the namespace's credentials for image registries
//! (`PUT|GET|DELETE /v1/registries`).

use std::io::Read as _;

use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::{json, Value};

use crate::args::RegistryCommand;
use crate::client::ApiClient;
use crate::output;

pub async fn run(cmd: RegistryCommand, as_json: bool) -> Result<()> {
    match cmd {
        RegistryCommand::Login {
            client,
            host,
            username,
            password,
        } => {
            let password = match password {
                Some(p) => p,
                None => {
                    let mut read = String::new();
                    std::io::stdin()
                        .read_to_string(&mut read)
                        .context("reading the password from stdin")?;
                    read.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            if password.is_empty() {
                bail!("no password: pipe it on stdin or set FNMESH_REGISTRY_PASSWORD");
            }
            let api = ApiClient::new(&client)?;
            let body = json!({"username": username, "password": password});
            api.call(
                Method::PUT,
                &format!("/v1/registries/{host}"),
                Some(body.to_string().into_bytes()),
            )
            .await?;
            if as_json {
                output::json(&json!({"registry": host, "stored": true}));
            } else {
                println!("stored the credential for {host}");
            }
            Ok(())
        }
        RegistryCommand::List { client } => {
            let api = ApiClient::new(&client)?;
            let (_, page) = api.call(Method::GET, "/v1/registries", None).await?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            if as_json {
                output::json(&Value::Array(items));
            } else {
                let rows: Vec<Vec<String>> = items
                    .iter()
                    .map(|i| vec![output::cell(&i["host"]), output::cell(&i["updated_at"])])
                    .collect();
                output::table(&["REGISTRY", "UPDATED"], &rows);
            }
            Ok(())
        }
        RegistryCommand::Logout { client, host } => {
            let api = ApiClient::new(&client)?;
            api.call(Method::DELETE, &format!("/v1/registries/{host}"), None)
                .await?;
            if as_json {
                output::json(&json!({"registry": host, "removed": true}));
            } else {
                println!("removed the credential for {host}");
            }
            Ok(())
        }
    }
}
