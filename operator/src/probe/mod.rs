//! Active probes of running endpoints. Each is bounded in time and
//! concurrency and turns any peer behaviour into a finding, never a hang or
//! a crash.
pub mod http;
pub mod tls;
