//! The `fnmesh` binary: parses arguments, sets up logging and hands over to a command.
//!
//! The hidden `__supervisor` subcommand must run before any thread exists: libcontainer forks
//! with a raw `clone3` that is only safe in a single-threaded process, so it is dispatched
//! before the tokio runtime (and its threads) is built.

mod args;
mod backends;
mod client;
mod commands;
mod jwt_keys;
mod output;
mod pack;
mod private_file;
mod secrets_key;
mod signing;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

/// jemalloc instead of glibc's malloc for every Rust allocation of the binary: under load the
/// gateway, node and `fnmesh up` spent 11–12% of their CPU in glibc's `malloc`/`free`
/// (`perf record` at c=64; ARCHITECTURE.md, "Where a sync invocation's CPU goes"). jemalloc
/// takes its locks around `fork` (`pthread_atfork`), as glibc's malloc does; the same binary is
/// the image bootstrap inside seccomp-filtered sandboxes, whose allowlist has every call it
/// makes (`mmap`, `munmap`, `madvise`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The hidden first argument that makes this binary the bootstrap of image functions inside
/// their sandbox (see `fnmesh_nodes::runtimes::imageboot`); its arguments are passed as they
/// are, `--` included, so it is dispatched before argument parsing.
const IMAGEBOOT: &str = "__imageboot";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(IMAGEBOOT) {
        let status = fnmesh_nodes::runtimes::imageboot::main_with(&args[1..]);
        return ExitCode::from(u8::try_from(status).unwrap_or(1));
    }
    let cli = Cli::parse();
    if let Command::Supervisor = cli.command {
        return ExitCode::from(fnmesh_nodes::sandbox::supervisor::main_from_env());
    }
    if let Command::Bench(args::BenchCommand::Sandbox(_)) = cli.command {
        if let Err(e) = commands::bench::enter_bench_namespace() {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    if matches!(
        cli.command,
        Command::Function(_)
            | Command::Invoke(_)
            | Command::Invocation(_)
            | Command::Logs(_)
            | Command::Registry(_)
            | Command::EnvVars
    ) {
        quiet_on_closed_stdout();
    }
    // reqwest (our client, the OTLP exporter) leaves rustls's crypto to us: ring, as the rest.
    // An error only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let service = match cli.command {
        Command::Up(_) => "fnmesh",
        Command::Gateway(_) => "fnmesh-gateway",
        Command::Node(_) => "fnmesh-node",
        _ => "fnmesh-cli",
    };
    let telemetry = match telemetry::init(service) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            telemetry.shutdown(telemetry::FLUSH_DEADLINE);
            return ExitCode::FAILURE;
        }
    };
    let as_json = cli.json;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => commands::up::run(args).await,
            Command::Gateway(args) => commands::gateway::run(args).await,
            Command::Node(args) => commands::node::run(args).await,
            Command::EnvVars => {
                for name in env_vars() {
                    println!("{name}");
                }
                Ok(())
            }
            Command::Function(cmd) => commands::functions::run(cmd, as_json).await,
            Command::Invoke(args) => commands::invocations::invoke(args, as_json).await,
            Command::Invocation(cmd) => commands::invocations::invocation(cmd, as_json).await,
            Command::Logs(args) => commands::invocations::logs(args, as_json).await,
            Command::Registry(cmd) => commands::registries::run(cmd, as_json).await,
            Command::Bench(args::BenchCommand::Sandbox(args)) => {
                commands::bench::sandbox::run(args).await
            }
            Command::Bench(args::BenchCommand::Persistence(args)) => {
                commands::bench::persistence::run(args).await
            }
            Command::Bench(args::BenchCommand::Mesh(args)) => {
                commands::bench::mesh::run(args, as_json).await
            }
            Command::Bench(args::BenchCommand::All(args)) => commands::bench::all::run(args).await,
            Command::Bench(args::BenchCommand::Soak(args)) => {
                commands::bench::mesh::soak::run(args).await
            }
            Command::Bench(args::BenchCommand::Scale(args)) => {
                commands::bench::mesh::scale::run(args).await
            }
            Command::Bench(args::BenchCommand::Image(args)) => {
                commands::bench::image::run(args).await
            }
            Command::Bench(args::BenchCommand::RelayGateway(args)) => {
                commands::bench::mesh::relay::run_gateway(args).await
            }
            Command::Bench(args::BenchCommand::RelayNode(args)) => {
                commands::bench::mesh::relay::run_node(args).await
            }
            Command::Nats(args::NatsCommand::Init(args)) => commands::nats::init(&args),
            Command::Nats(args::NatsCommand::AddNode(args)) => commands::nats::add_node(&args),
            Command::Migrate { database_url } => commands::migrate::run(&database_url).await,
            Command::Supervisor => Ok(()),
        }
    });
    telemetry.shutdown(telemetry::FLUSH_DEADLINE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Environment variables read outside clap's arguments.
const DIRECT_ENV_VARS: &[&str] = &[
    telemetry::ENV_LOG,
    telemetry::ENV_LOG_FORMAT,
    "FNMESH_FAILPOINT",
    fnmesh_code::s3::ENV_ENDPOINT,
    fnmesh_code::s3::ENV_REGION,
    fnmesh_code::s3::ENV_PATH_STYLE,
    fnmesh_code::s3::ENV_ACCESS_KEY_ID,
    fnmesh_code::s3::ENV_SECRET_ACCESS_KEY,
    fnmesh_core::nats::server::ENV_SERVER_BINARY,
];

/// Every environment variable the binary reads: the `env` twins of all flags of all commands,
/// plus [`DIRECT_ENV_VARS`]. Deployment files are checked against this list.
fn env_vars() -> std::collections::BTreeSet<String> {
    fn walk(cmd: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                out.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out: std::collections::BTreeSet<String> = DIRECT_ENV_VARS
        .iter()
        .chain(telemetry::OTEL_ENV_VARS)
        .map(|s| s.to_string())
        .collect();
    walk(&<Cli as clap::CommandFactory>::command(), &mut out);
    out
}

/// Makes a client command end quietly, as other command-line tools do, when what reads its
/// output goes away (`fnmesh fn list | head -3`): SIGPIPE back to its default action, which
/// Rust's runtime sets to "ignore" (then `println!` panics on the broken pipe). Only for
/// client commands: servers keep ignoring it, so a peer that hangs up is an error to handle.
fn quiet_on_closed_stdout() {
    // SAFETY: called before any thread is started; sets a signal's disposition to one of the
    // predefined actions (no handler runs our code).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
