//! iotposture: makes the IoT security checklist true for applications on
//! Kubernetes, and proves it.
pub mod alerts;
pub mod api;
pub mod build;
pub mod check;
pub mod checklist;
pub mod controller;
pub mod edge;
pub mod gateway;
pub mod health;
pub mod heartbeat;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod probe;
pub mod record;
pub mod telemetry;
pub mod webhook;
