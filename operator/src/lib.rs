//! iotposture: makes the IoT security checklist true for applications on
//! Kubernetes, and proves it.
pub mod api;
