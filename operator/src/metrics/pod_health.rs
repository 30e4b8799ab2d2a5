//! The pod health series of each component (`component_container_restarts`,
//! `component_crash_looping_containers`, read by the VIII-1 alert rules), kept
//! as one entry per system and written out on scrape. As two `Family`s and a
//! set of their label sets they held three copies of every component's
//! labels: 3 MB at 1,000 systems of 5 components.

use std::{collections::BTreeMap, sync::Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
};

use super::PodHealth;

/// Each component of a system, with its health as last judged.
type Components = Box<[(Box<str>, PodHealth)]>;

/// One gauge family: name, help, and the value it shows of a component.
type Gauges = (&'static str, &'static str, fn(&PodHealth) -> i64);

/// Per (namespace, system), its components.
#[derive(Debug, Default)]
pub struct PodHealthSeries(Mutex<BTreeMap<(String, String), Components>>);

impl PodHealthSeries {
    /// Replaces the series of one system: a component left out has none.
    pub fn record(&self, namespace: &str, system: &str, health: &[(String, PodHealth)]) {
        let mut systems = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let components = health
            .iter()
            .map(|(c, h)| (c.as_str().into(), h.clone()))
            .collect();
        systems.insert((namespace.to_string(), system.to_string()), components);
    }

    /// Drops the series of every system `live` says is gone.
    pub fn retain(&self, live: impl Fn(&(String, String)) -> bool) {
        let mut systems = self.0.lock().unwrap_or_else(|e| e.into_inner());
        systems.retain(|key, _| live(key));
    }
}

impl Collector for PodHealthSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let systems = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let families: [Gauges; 2] = [
            (
                "component_container_restarts",
                "Container restarts summed over a component's current pods",
                |h| h.restarts,
            ),
            (
                "component_crash_looping_containers",
                "Containers of a component waiting in CrashLoopBackOff",
                |h| h.crash_looping,
            ),
        ];
        for (name, help, value) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for ((namespace, system), components) in systems.iter() {
                for (component, health) in components.iter() {
                    let labels = [
                        ("namespace", namespace.as_str()),
                        ("system", system.as_str()),
                        ("component", &**component),
                    ];
                    ConstGauge::new(value(health)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{encoding::text::encode, registry::Registry};

    use super::*;

    fn scrape(series: &std::sync::Arc<PodHealthSeries>) -> String {
        let mut registry = Registry::with_prefix("iotposture");
        registry.register_collector(Box::new(series.clone()));
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    fn health(restarts: i64, crash_looping: i64) -> PodHealth {
        PodHealth {
            restarts,
            crash_looping,
        }
    }

    #[test]
    fn each_component_has_both_gauges_until_its_system_goes() {
        let series = std::sync::Arc::new(PodHealthSeries::default());
        series.record(
            "plant",
            "line",
            &[
                ("broker".into(), health(3, 1)),
                ("sensor".into(), health(0, 0)),
            ],
        );
        series.record("yard", "gate", &[("camera".into(), health(7, 0))]);
        let text = scrape(&series);
        for line in [
            r#"iotposture_component_container_restarts{namespace="plant",system="line",component="broker"} 3"#,
            r#"iotposture_component_container_restarts{namespace="plant",system="line",component="sensor"} 0"#,
            r#"iotposture_component_container_restarts{namespace="yard",system="gate",component="camera"} 7"#,
            r#"iotposture_component_crash_looping_containers{namespace="plant",system="line",component="broker"} 1"#,
            r#"iotposture_component_crash_looping_containers{namespace="yard",system="gate",component="camera"} 0"#,
            "# TYPE iotposture_component_crash_looping_containers gauge",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }

        // A component left out of the next record has no series.
        series.record("plant", "line", &[("sensor".into(), health(2, 0))]);
        let text = scrape(&series);
        assert!(!text.contains(r#"component="broker""#), "{text}");
        assert!(
            text.contains(r#"system="line",component="sensor"} 2"#),
            "{text}"
        );

        series.retain(|(namespace, _)| namespace != "plant");
        let text = scrape(&series);
        assert!(!text.contains(r#"system="line""#), "{text}");
        assert!(text.contains(r#"system="gate""#), "{text}");
    }
}
