//! `fnmesh bench persistence` (being written).

use anyhow::{bail, Result};

use crate::args::PersistenceBenchArgs;

pub async fn run(_args: PersistenceBenchArgs) -> Result<()> {
    bail!("the persistence benchmark is not built yet")
}
