//! The WAF gateway in front of HTTP ports (checklist items II-1, II-5, II-6,
//! III-2, III-3, III-8): nginx with ModSecurity v3 and the OWASP Core Rule
//! Set. `config` turns a component's `http` settings into the exact nginx and
//! ModSecurity configuration; tests run it on the real engine.
pub mod config;
pub mod exporter;
pub mod settings;

/// The gateway image: OWASP CRS 3.3.4 on nginx (the CRS release the tests
/// run on Debian's engine), pinned by tag.
pub const DEFAULT_GATEWAY_IMAGE: &str = "owasp/modsecurity-crs:3.3.4-nginx-alpine-202211240811";
/// The exporter runs from the operator's own image.
pub const DEFAULT_EXPORTER_IMAGE: &str =
    concat!("ghcr.io/iotposture/iotposture:", env!("CARGO_PKG_VERSION"));
