//! Shared by the benchmarks: latency and throughput figures of one scenario.
use std::time::Duration;

use serde_json::{Value, json};

/// Percentiles (µs), maximum and throughput of the sorted-on-entry latencies.
pub fn summary(mut latencies: Vec<Duration>, elapsed: Duration) -> Value {
    latencies.sort();
    let n = latencies.len().max(1);
    let pct = |p: f64| {
        latencies
            .get(((n as f64 * p) as usize).min(n - 1))
            .map(|d| d.as_secs_f64() * 1e6)
            .unwrap_or(0.0)
    };
    json!({
        "requests": latencies.len(),
        "p50_us": pct(0.50).round(),
        "p99_us": pct(0.99).round(),
        "max_us": latencies.last().map(|d| d.as_secs_f64() * 1e6).unwrap_or(0.0).round(),
        "throughput_rps": (latencies.len() as f64 / elapsed.as_secs_f64()).round(),
    })
}

/// Writes a report as pretty JSON, creating the folder.
pub fn write_report(out: &str, report: &Value) -> anyhow::Result<()> {
    if let Some(dir) = std::path::Path::new(out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(report)? + "\n")?;
    println!("wrote {out}");
    Ok(())
}
