//! `fnmesh-sandboxd`: the sandbox supervisor as a standalone binary (the same code as the
//! hidden `fnmesh __supervisor` subcommand). It is started by `SupervisorClient::spawn`, never by
//! hand: it expects its socket on the descriptor named by `FNMESH_SUPERVISOR_FD` and its state
//! directory in `FNMESH_SUPERVISOR_STATE_DIR`.

fn main() {
    std::process::exit(fnmesh_nodes::sandbox::supervisor::run_supervisor_from_env());
}
