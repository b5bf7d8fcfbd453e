//! The operator API under `/v1/admin`: admin keys only ([`crate::auth::Action::Administer`]),
//! across namespaces. One module per resource.

pub mod audit;
pub mod dlq;
pub mod namespaces;
pub mod nodes;
pub mod queues;
