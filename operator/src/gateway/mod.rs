//! The WAF gateway in front of HTTP ports (checklist items II-1, II-5, II-6,
//! III-2, III-3, III-8): nginx with ModSecurity v3 and the OWASP Core Rule
//! Set. `config` turns a component's `http` settings into the exact nginx and
//! ModSecurity configuration; tests run it on the real engine.
pub mod config;
