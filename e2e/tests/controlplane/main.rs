//! Tests against the real local control plane (`make testplane-up`). Each test
//! has its own namespace and, where it needs one, its own operator watching
//! only that namespace, so tests run in parallel without seeing each other.

mod admission;
mod bad_input;
mod checklist;
mod crd_validation;
mod drift;
mod edge;
mod gateway;
mod heartbeats;
mod lifecycle;
mod node;
mod noop;
mod rbac;
mod reach;
mod reconcile;
mod record;
mod security;
mod shipping;
mod support;
mod tls;
