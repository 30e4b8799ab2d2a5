//! Test support: the local control plane and helpers for tests that need one.
pub mod controlplane;
