//! Invocations: one module per operation.

use fnmesh_core::InvocationId;

use crate::error::ApiError;

pub mod get;
pub mod invoke;
pub mod list;
pub mod logs;

/// Validates an invocation id from a path.
pub fn parse_id(raw: &str) -> Result<InvocationId, ApiError> {
    Ok(InvocationId::parse(raw)?)
}
