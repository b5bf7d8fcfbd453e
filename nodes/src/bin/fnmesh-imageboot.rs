//! `fnmesh-imageboot`: the bootstrap of `image` functions inside their sandbox (the same code as
//! the hidden `fnmesh __imageboot` subcommand). Started by the node, never by hand: see
//! `fnmesh_nodes::runtimes::imageboot`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(fnmesh_nodes::runtimes::imageboot::main_with(&args));
}
