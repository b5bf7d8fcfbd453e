//! Cancellations a node has heard of ([`fnmesh_bus::Bus::follow_cancellations`]): the running
//! invocations it can stop and the ids it must not start.
//!
//! The worker registers each invocation it handles ([`Cancellations::begin`]); a cancellation
//! of a running one fires its token (the instance kills the sandbox and reports `cancelled`),
//! and one of an invocation not running here is remembered, so that if this node is handed it
//! later it settles it as `cancelled` without running it. The memory of ids is bounded
//! ([`REMEMBERED`], oldest forgotten first): past it a very old cancellation is forgotten, and
//! the store still keeps that record `cancelled` whatever the node reports.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use fnmesh_core::InvocationId;
use tokio_util::sync::CancellationToken;

/// Cancelled ids a node remembers at most.
pub const REMEMBERED: usize = 100_000;

/// The registry (one per worker).
#[derive(Debug, Default)]
pub struct Cancellations {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    running: HashMap<InvocationId, CancellationToken>,
    cancelled: HashSet<InvocationId>,
    order: VecDeque<InvocationId>,
}

impl Cancellations {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Invocation `id` was cancelled: stops it if it runs here, and remembers it.
    pub fn cancel(&self, id: InvocationId) {
        let mut state = self.lock();
        if let Some(token) = state.running.get(&id) {
            token.cancel();
        }
        if state.cancelled.insert(id) {
            state.order.push_back(id);
            while state.order.len() > REMEMBERED {
                if let Some(old) = state.order.pop_front() {
                    state.cancelled.remove(&old);
                }
            }
        }
    }

    /// Registers invocation `id` as running here: the token fires if it is cancelled, until
    /// the guard is dropped. `None` if it was cancelled already (then it must not run).
    pub fn begin(self: &Arc<Self>, id: InvocationId) -> Option<Running> {
        let mut state = self.lock();
        if state.cancelled.contains(&id) {
            return None;
        }
        let token = CancellationToken::new();
        state.running.insert(id, token.clone());
        Some(Running {
            registry: self.clone(),
            id,
            token,
        })
    }

    /// Whether `id` was cancelled (as far as this node heard).
    pub fn is_cancelled(&self, id: &InvocationId) -> bool {
        self.lock().cancelled.contains(id)
    }
}

/// An invocation running here, registered until dropped.
#[derive(Debug)]
pub struct Running {
    registry: Arc<Cancellations>,
    id: InvocationId,
    token: CancellationToken,
}

impl Running {
    /// Fires when the invocation is cancelled.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.registry.lock().running.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_invocation_is_stopped_and_a_later_one_never_starts() {
        let registry = Arc::new(Cancellations::default());
        let (a, b) = (InvocationId::new(), InvocationId::new());
        let running = registry.begin(a).expect("not cancelled");
        assert!(!running.token().is_cancelled());
        registry.cancel(a);
        assert!(running.token().is_cancelled(), "the running one is stopped");
        drop(running);
        assert!(registry.lock().running.is_empty(), "unregistered on drop");
        registry.cancel(b);
        assert!(registry.begin(b).is_none(), "a cancelled id never starts");
        assert!(registry.is_cancelled(&b));
        assert!(registry.begin(InvocationId::new()).is_some());
    }

    #[test]
    fn the_memory_is_bounded() {
        let registry = Cancellations::default();
        let first = InvocationId::new();
        registry.cancel(first);
        for _ in 0..REMEMBERED {
            registry.cancel(InvocationId::new());
        }
        assert!(!registry.is_cancelled(&first), "the oldest is forgotten");
        assert_eq!(registry.lock().cancelled.len(), REMEMBERED);
    }
}
