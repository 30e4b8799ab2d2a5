//! Log shipping: each IoTSystem's container logs go to the log store it names.
//!
//! The shipper is an OpenTelemetry Collector built with only the components
//! `e2e/logs/otelcol-builder.yaml` lists (file_log receiver, batch processor,
//! otlp_http exporter; env and file providers). It runs as a DaemonSet that
//! reads `/var/log/pods` from the node (a sidecar cannot read the other
//! containers' output). `collector` turns the systems' shipping plans into
//! its configuration, and reads its per-exporter counters back.

pub mod collector;

/// A retention as log stores write it (`12h`, `30d`, `4w`, `1y`; a year is
/// 365 days), or None.
pub fn retention(text: &str) -> Option<std::time::Duration> {
    let unit = text.chars().last()?;
    let count: u64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let hours = match unit {
        'h' => 1,
        'd' => 24,
        'w' => 24 * 7,
        'y' => 24 * 365,
        _ => return None,
    };
    count
        .checked_mul(hours * 3600)
        .map(std::time::Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retentions_read_as_stores_write_them() {
        let h = |n: u64| Some(Duration::from_secs(n * 3600));
        assert_eq!(retention("12h"), h(12));
        assert_eq!(retention("30d"), h(30 * 24));
        assert_eq!(retention("4w"), h(4 * 7 * 24));
        assert_eq!(retention("1y"), h(365 * 24));
        for bad in ["", "d", "30", "30m", "-1d", "1.5d", "99999999999999999999y"] {
            assert_eq!(retention(bad), None, "{bad}");
        }
    }
}
