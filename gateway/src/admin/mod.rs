//! The operator API under `/v1/admin`: admin keys only ([`crate::auth::Action::Administer`]),
//! across namespaces. One module per resource.

pub(crate) mod audit;
pub(crate) mod dlq;
pub(crate) mod namespaces;
pub(crate) mod nodes;
pub(crate) mod queues;
pub(crate) mod regions;
