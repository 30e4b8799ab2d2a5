//! Log shipping: each IoTSystem's container logs go to the log store it names.
//!
//! The shipper is an OpenTelemetry Collector built with only the components
//! `e2e/logs/otelcol-builder.yaml` lists (file_log receiver, batch processor,
//! otlp_http exporter; env and file providers). It runs as a DaemonSet that
//! reads `/var/log/pods` from the node (a sidecar cannot read the other
//! containers' output). `collector` turns the systems' shipping plans into
//! its configuration, and reads its per-exporter counters back.

pub mod collector;
