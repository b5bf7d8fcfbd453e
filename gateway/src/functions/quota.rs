//! Namespace quotas at deploy and update: the number of functions, the memory of one
//! function, and the sum of the functions' `max_concurrency` — which bounds what the
//! namespace runs at once across the cluster, since each function's cap is enforced by the
//! bus. Checks read the current usage and are not serialised with concurrent deploys of the
//! same namespace, so two racing deploys can overshoot by one.

use fnmesh_core::{FunctionConfig, FunctionName, Namespace};

use crate::error::ApiError;
use crate::state::State;

/// Whether a function `name` with `config` fits the namespace's quota. `creating`: a new
/// function (counts against `max_functions`); otherwise an update of `name`.
pub(crate) async fn check(
    state: &State,
    namespace: &Namespace,
    name: &FunctionName,
    config: &FunctionConfig,
    creating: bool,
) -> Result<(), ApiError> {
    let store = &state.backends.store;
    let Some(quota) = store.get_namespace_quota(namespace).await? else {
        return Ok(());
    };
    if let Some(max) = quota.max_memory_mb {
        if config.memory_mb > max {
            return Err(ApiError::QuotaExceeded(format!(
                "memory_mb {} is over namespace {:?}'s quota of {max} MB per function",
                config.memory_mb,
                namespace.as_str()
            )));
        }
    }
    if quota.max_functions.is_none() && quota.max_concurrency.is_none() {
        return Ok(());
    }
    let others = store.namespace_usage(namespace, Some(name)).await?;
    if let Some(max) = quota.max_functions {
        if creating && others.functions >= u64::from(max) {
            return Err(ApiError::QuotaExceeded(format!(
                "namespace {:?} already has its quota of {max} functions",
                namespace.as_str()
            )));
        }
    }
    if let Some(max) = quota.max_concurrency {
        let total = others.max_concurrency + u64::from(config.max_concurrency);
        if total > u64::from(max) {
            return Err(ApiError::QuotaExceeded(format!(
                "max_concurrency {} would take namespace {:?} to {total} concurrent invocations, \
                 over its quota of {max}",
                config.max_concurrency,
                namespace.as_str()
            )));
        }
    }
    Ok(())
}
