//! `fnmesh nats init`: maps its arguments to `fnmesh_core::nats::setup::init` and says what
//! was written (paths only: seeds are never printed).

use anyhow::{Context, Result};
use fnmesh_core::nats::setup::{self, InitOptions};
use fnmesh_core::subjects::BusPrefix;

use crate::args::NatsInitArgs;

pub fn init(args: &NatsInitArgs) -> Result<()> {
    let regions = args
        .regions
        .iter()
        .map(|r| BusPrefix::parse(r).with_context(|| format!("--region {r:?}")))
        .collect::<Result<Vec<_>>>()?;
    let options = InitOptions {
        dir: args.dir.clone(),
        port: args.port,
        host: args.host.clone(),
        regions,
    };
    let written = setup::init(&options, chrono::Utc::now().timestamp())
        .with_context(|| format!("writing a NATS setup into {}", args.dir.display()))?;
    println!("wrote {}", written.config.display());
    for (role, path) in &written.creds {
        println!("  {:<8} {}", role.name(), path.display());
    }
    println!("  signing  {}", written.signing_key.display());
    println!("  trusted  {}", written.trusted_keys.display());
    println!(
        "start the server with: nats-server -c {}\n\
         gateways and nodes connect with FNMESH_NATS_CREDS=<dir>/gateway.creds or node.creds;\n\
         gateways sign work with FNMESH_SIGNING_KEY_FILE={}, nodes run it with\n\
         FNMESH_TRUSTED_KEYS_FILE={}",
        written.config.display(),
        written.signing_key.display(),
        written.trusted_keys.display()
    );
    Ok(())
}
