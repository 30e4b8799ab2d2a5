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

/// Sends `count` requests in a row on one kept-alive connection, whatever
/// carries it (TCP or TLS), and returns each one's latency. Any answer but
/// 2xx stops the benchmark: a figure for errors would be meaningless.
pub async fn timed_requests<IO>(
    io: IO,
    name: &str,
    count: usize,
    request: impl Fn() -> hyper::Request<http_body_util::Full<bytes::Bytes>>,
) -> Vec<Duration>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let request = request();
        let start = std::time::Instant::now();
        sender.ready().await.expect("the connection stays open");
        let response = sender.send_request(request).await.unwrap();
        assert!(
            response.status().is_success(),
            "{name} answered {}",
            response.status()
        );
        let _ = response.into_body().collect().await.unwrap();
        latencies.push(start.elapsed());
    }
    latencies
}

/// (VmHWM, VmRSS) of a process in MiB; zeros once it is gone.
pub fn memory_of(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU time (user + system, seconds) the process has used so far; 0 when it
/// is gone.
pub fn cpu_seconds_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is the
    // first, utime the 12th and stime the 13th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / USER_HZ
}

/// Clock ticks per second in /proc: 100 on every Linux architecture the
/// project builds for.
const USER_HZ: f64 = 100.0;

/// CPU seconds the hypervisor gave to other guests while this one wanted
/// them (`steal`, the eighth figure of /proc/stat's `cpu` line, summed
/// over the CPUs): runs of the same code on shared machines differ, and
/// this shows whether a neighbour took the difference.
pub fn steal_seconds() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| parse_steal(&stat))
        .unwrap_or(0.0)
}

fn parse_steal(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: f64 = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(ticks / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_figure_of_the_cpu_line_in_seconds() {
        let stat = "cpu  9262000 188010 832672 3879306 51018 0 65758 461824 0 0\n\
                    cpu0 4631000 94005 416336 1939653 25509 0 32879 230912 0 0\n";
        assert_eq!(parse_steal(stat), Some(4618.24));
        assert_eq!(parse_steal("cpu  1 2 3\n"), None);
        assert_eq!(parse_steal("intr 1 2 3 4 5 6 7 8 9\n"), None);
    }
}
