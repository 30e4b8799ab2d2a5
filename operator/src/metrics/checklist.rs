//! The checklist series (`checklist_item_verdict`, `checklist_compliance_ratio`),
//! kept as one verdict per item of each system and written out on scrape. As a
//! `Family` they took a label set, a gauge and a map entry per item: 39 series
//! per system, 13 MB at 1,000 systems, a tenth of the operator's heap.

use std::{collections::BTreeMap, sync::Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
};

use crate::api::{ItemStatus, Verdict};
use crate::checklist::catalog;

#[derive(Debug)]
struct SystemVerdicts {
    /// The catalog's item ids, in the order status lists them.
    items: Box<[(&'static str, Verdict)]>,
    ratio: f64,
}

/// Per (namespace, system), what the last reconcile judged.
#[derive(Debug, Default)]
pub struct ChecklistSeries(Mutex<BTreeMap<(String, String), SystemVerdicts>>);

impl ChecklistSeries {
    /// Replaces the series of one system; false when it has none and `limit`
    /// systems already have theirs.
    pub fn record(
        &self,
        namespace: &str,
        system: &str,
        items: &[ItemStatus],
        limit: usize,
    ) -> bool {
        let mut systems = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_string(), system.to_string());
        if !systems.contains_key(&key) && systems.len() >= limit {
            return false;
        }
        let judged = SystemVerdicts {
            // Ids outside the catalog (from a newer version's status) have no series.
            items: items
                .iter()
                .filter_map(|i| Some((catalog::item(&i.id)?.id, i.verdict)))
                .collect(),
            ratio: compliance_ratio(items),
        };
        systems.insert(key, judged);
        true
    }

    /// Drops the series of every system `live` says is gone.
    pub fn retain(&self, live: impl Fn(&(String, String)) -> bool) {
        let mut systems = self.0.lock().unwrap_or_else(|e| e.into_inner());
        systems.retain(|key, _| live(key));
    }
}

/// Items that pass or are attested over the items that apply (1 when none apply).
fn compliance_ratio(items: &[ItemStatus]) -> f64 {
    let applicable = items
        .iter()
        .filter(|i| i.verdict != Verdict::NotApplicable)
        .count();
    let good = items
        .iter()
        .filter(|i| matches!(i.verdict, Verdict::Pass | Verdict::Attested))
        .count();
    if applicable == 0 {
        1.0
    } else {
        good as f64 / applicable as f64
    }
}

impl Collector for ChecklistSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let systems = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let one = ConstGauge::new(1i64);
        let mut verdicts = encoder.encode_descriptor(
            "checklist_item_verdict",
            "1 for the current verdict of a checklist item of an IoTSystem",
            None,
            MetricType::Gauge,
        )?;
        for ((namespace, system), judged) in systems.iter() {
            for (item, verdict) in judged.items.iter() {
                // Label sets are built on scrape from the stored names, never kept.
                let labels = [
                    ("namespace", namespace.as_str()),
                    ("system", system.as_str()),
                    ("item", item),
                    ("verdict", verdict.as_str()),
                ];
                one.encode(verdicts.encode_family(&labels)?)?;
            }
        }
        let mut ratios = encoder.encode_descriptor(
            "checklist_compliance_ratio",
            "Checklist items that pass or are attested, over the items that apply",
            None,
            MetricType::Gauge,
        )?;
        for ((namespace, system), judged) in systems.iter() {
            let labels = [
                ("namespace", namespace.as_str()),
                ("system", system.as_str()),
            ];
            ConstGauge::new(judged.ratio).encode(ratios.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{encoding::text::encode, registry::Registry};

    use super::*;

    fn item(id: &str, verdict: Verdict) -> ItemStatus {
        ItemStatus {
            id: id.into(),
            verdict,
            evidence: String::new(),
            remediation: None,
        }
    }

    fn scrape(series: ChecklistSeries) -> (String, std::sync::Arc<ChecklistSeries>) {
        let series = std::sync::Arc::new(series);
        let mut registry = Registry::with_prefix("iotposture");
        registry.register_collector(Box::new(series.clone()));
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        (out, series)
    }

    #[test]
    fn each_item_has_one_series_with_its_verdict_and_each_system_a_ratio() {
        let series = ChecklistSeries::default();
        let items = [
            item("I-1", Verdict::Pass),
            item("I-2", Verdict::Fail),
            item("I-3", Verdict::NotApplicable),
            item("II-1", Verdict::Attested),
            item("XX-9", Verdict::Fail),
        ];
        assert!(series.record("plant", "line", &items, 10));
        let (text, _) = scrape(series);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                r#"iotposture_checklist_item_verdict{namespace="plant",system="line",item="I-1",verdict="Pass"} 1"#,
                r#"iotposture_checklist_item_verdict{namespace="plant",system="line",item="I-2",verdict="Fail"} 1"#,
                r#"iotposture_checklist_item_verdict{namespace="plant",system="line",item="I-3",verdict="NotApplicable"} 1"#,
                r#"iotposture_checklist_item_verdict{namespace="plant",system="line",item="II-1",verdict="Attested"} 1"#,
                // 2 good of the 4 that apply; XX-9 is no item of the catalog.
                r#"iotposture_checklist_compliance_ratio{namespace="plant",system="line"} 0.5"#,
            ]
        );
        assert!(
            text.contains("# TYPE iotposture_checklist_item_verdict gauge"),
            "{text}"
        );
    }

    #[test]
    fn a_new_verdict_replaces_the_old_and_a_gone_system_takes_its_series() {
        let series = ChecklistSeries::default();
        series.record("plant", "line", &[item("I-1", Verdict::Fail)], 10);
        series.record("plant", "line", &[item("I-1", Verdict::Pass)], 10);
        series.record("plant", "other", &[item("I-1", Verdict::Unknown)], 10);
        let (text, series) = scrape(series);
        assert!(!text.contains(r#"verdict="Fail""#), "{text}");
        assert!(
            text.contains(r#"system="line",item="I-1",verdict="Pass"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"compliance_ratio{namespace="plant",system="other"} 0.0"#),
            "{text}"
        );

        series.retain(|(_, system)| system != "other");
        let mut registry = Registry::default();
        registry.register_collector(Box::new(series.clone()));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(!text.contains("other"), "{text}");
        assert!(text.contains(r#"system="line""#), "{text}");
    }

    #[test]
    fn beyond_the_limit_a_new_system_gets_no_series_but_a_known_one_is_updated() {
        let series = ChecklistSeries::default();
        assert!(series.record("a", "one", &[item("I-1", Verdict::Fail)], 1));
        assert!(!series.record("a", "two", &[item("I-1", Verdict::Fail)], 1));
        assert!(series.record("a", "one", &[item("I-1", Verdict::Pass)], 1));
        let (text, _) = scrape(series);
        assert!(!text.contains(r#"system="two""#), "{text}");
        assert!(text.contains(r#"verdict="Pass""#), "{text}");
    }

    #[test]
    fn with_no_item_applying_the_ratio_is_one() {
        assert_eq!(
            compliance_ratio(&[item("I-1", Verdict::NotApplicable)]),
            1.0
        );
        assert_eq!(compliance_ratio(&[]), 1.0);
        assert_eq!(
            compliance_ratio(&[item("I-1", Verdict::Unknown), item("I-2", Verdict::Pass)]),
            0.5
        );
    }
}
