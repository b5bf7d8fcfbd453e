//! Invocations: one module per operation.

use fnmesh_core::InvocationId;

use crate::error::ApiError;

pub(crate) mod cancel;
pub(crate) mod get;
pub(crate) mod invoke;
pub(crate) mod list;
pub(crate) mod logs;

/// Validates an invocation id from a path.
pub(crate) fn parse_id(raw: &str) -> Result<InvocationId, ApiError> {
    Ok(InvocationId::parse(raw)?)
}
