//! The one PolicyReport (wgpolicyk8s.io/v1alpha2) per IoTSystem, so Policy
//! Reporter and similar tools show the checklist. Updated in place, bounded in
//! size (39 results, evidence capped), and without timestamps, so an unchanged
//! verdict set gives an identical object and no write.

use kube::{
    ResourceExt,
    core::{ApiResource, DynamicObject, GroupVersionKind},
};
use serde_json::{Value, json};

use super::meta::{child_meta, child_name, hex};
use crate::{
    api::{ItemStatus, Verdict},
    checklist::catalog,
    controller::validate::ValidatedSystem,
};

pub const POLICY: &str = "iotposture-checklist";

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", "PolicyReport"),
        "policyreports",
    )
}

pub fn report_name(system: &ValidatedSystem) -> String {
    child_name("iotposture", &[&system.name])
}

/// PolicyReport results: Attested counts as pass (its evidence says who
/// vouches), Unknown as warn (looked at, not decided), NotApplicable as skip.
pub fn result_of(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass | Verdict::Attested => "pass",
        Verdict::Fail => "fail",
        Verdict::Unknown => "warn",
        Verdict::NotApplicable => "skip",
    }
}

/// The annotation carrying the latest checkpoint of the system's decision record.
pub const CHECKPOINT_ANNOTATION: &str = "iotposture.dev/decision-checkpoint";

/// The annotation carrying a digest of the report's body (scope, summary,
/// results) as the operator wrote it. The operator's cache keeps only the
/// metadata of its reports (39 results each weigh tens of kilobytes, a
/// fleet's worth hundreds of megabytes) and compares this digest instead.
pub const CONTENT_ANNOTATION: &str = "iotposture.dev/content-digest";

/// SHA-256 of the body's JSON (object keys sorted), in hex.
pub fn content_digest(body: &Value) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        &serde_json::to_vec(body).unwrap_or_default(),
    );
    hex(digest.as_ref())
}

/// What the cache keeps of a report: a report carrying its digest loses its
/// body (the digest stands for it); one without (not written by this
/// operator's version) keeps it and is compared whole.
pub fn drop_body(report: &mut DynamicObject) {
    if report.annotations().contains_key(CONTENT_ANNOTATION) {
        report.data = Value::Object(Default::default());
    }
}

/// `cached` with the body of `desired` where both carry the same digest, so
/// comparing them compares the metadata; otherwise as it is (a body-less
/// copy then differs from `desired` and the report is written again).
pub fn with_body_if_unchanged(cached: &DynamicObject, desired: &DynamicObject) -> DynamicObject {
    let mut out = cached.clone();
    let digest = |o: &DynamicObject| o.annotations().get(CONTENT_ANNOTATION).cloned();
    if digest(cached).is_some() && digest(cached) == digest(desired) {
        out.data = desired.data.clone();
    }
    out
}

pub fn build_policy_report(
    system: &ValidatedSystem,
    items: &[ItemStatus],
    checkpoint: Option<&str>,
) -> DynamicObject {
    let results: Vec<Value> = items
        .iter()
        .filter_map(|i| {
            let entry = catalog::item(&i.id)?;
            let mut properties = json!({ "verdict": i.verdict.as_str(), "item": entry.name_en });
            if let Some(fix) = &i.remediation {
                properties["remediation"] = json!(fix);
            }
            Some(json!({
                "policy": POLICY,
                "rule": i.id,
                "category": format!("{} {}", chapter_number(&i.id), entry.chapter.title()),
                "severity": entry.severity.as_str(),
                "result": result_of(i.verdict),
                "message": i.evidence,
                "source": "iotposture",
                "scored": true,
                "properties": properties,
            }))
        })
        .collect();
    let count = |r: &str| items.iter().filter(|i| result_of(i.verdict) == r).count();
    let mut report = DynamicObject::new(&report_name(system), &api_resource());
    report.metadata = child_meta(system, report_name(system), None);
    if let Some(note) = checkpoint {
        report
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(CHECKPOINT_ANNOTATION.into(), note.into());
    }
    report.data = json!({
        "scope": {
            "apiVersion": system.owner.api_version,
            "kind": system.owner.kind,
            "name": system.name,
            "namespace": system.namespace,
            "uid": system.owner.uid,
        },
        "summary": {
            "pass": count("pass"), "fail": count("fail"), "warn": count("warn"),
            "error": 0, "skip": count("skip"),
        },
        "results": results,
    });
    let digest = content_digest(&report.data);
    report
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(CONTENT_ANNOTATION.into(), digest);
    report
}

fn chapter_number(id: &str) -> &str {
    id.split('-').next().unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::{FACTORY, validated};

    fn item(id: &str, verdict: Verdict) -> ItemStatus {
        ItemStatus {
            id: id.into(),
            verdict,
            evidence: format!("seen for {id}"),
            remediation: (verdict == Verdict::Fail).then(|| "fix it".into()),
        }
    }

    #[test]
    fn one_result_per_item_and_a_summary() {
        let system = validated(FACTORY);
        let items = [
            item("I-5", Verdict::Fail),
            item("I-6", Verdict::Pass),
            item("IV-3", Verdict::Attested),
            item("VII-1", Verdict::NotApplicable),
            item("I-1", Verdict::Unknown),
        ];
        let report = build_policy_report(&system, &items, None);
        assert_eq!(report.metadata.name.as_deref(), Some("iotposture-factory"));
        assert_eq!(
            report.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-factory"
        );
        let data = &report.data;
        assert_eq!(
            data["summary"],
            json!({"pass": 2, "fail": 1, "warn": 1, "error": 0, "skip": 1})
        );
        let first = &data["results"][0];
        assert_eq!(first["rule"], "I-5");
        assert_eq!(first["result"], "fail");
        assert_eq!(first["severity"], "critical");
        assert_eq!(first["category"], "I User management");
        assert_eq!(first["properties"]["remediation"], "fix it");
        assert_eq!(data["results"][2]["properties"]["verdict"], "Attested");
        assert_eq!(data["scope"]["kind"], "IoTSystem");
        // Deterministic: the same verdicts give the same object.
        assert_eq!(report, build_policy_report(&system, &items, None));
    }

    #[test]
    fn the_cache_keeps_a_digest_of_the_body_and_compares_by_it() {
        let system = validated(FACTORY);
        let items = [item("I-5", Verdict::Fail), item("I-6", Verdict::Pass)];
        let written = build_policy_report(&system, &items, None);
        let digest = written.annotations()[CONTENT_ANNOTATION].clone();
        assert_eq!(digest, content_digest(&written.data));
        assert_eq!(digest.len(), 64);

        let mut cached = written.clone();
        drop_body(&mut cached);
        assert_eq!(cached.data, json!({}));
        assert_eq!(cached.metadata, written.metadata, "metadata is kept");
        // Same verdicts: the cached copy reads as the desired one.
        assert_eq!(with_body_if_unchanged(&cached, &written), written);

        // A changed verdict changes the digest: the body-less copy differs.
        let changed = build_policy_report(&system, &[item("I-5", Verdict::Pass)], None);
        assert_ne!(changed.annotations()[CONTENT_ANNOTATION], digest);
        assert_eq!(with_body_if_unchanged(&cached, &changed).data, json!({}));

        // A report without a digest (an older operator's) is kept whole.
        let mut older = written.clone();
        older.annotations_mut().remove(CONTENT_ANNOTATION);
        let mut kept = older.clone();
        drop_body(&mut kept);
        assert_eq!(kept, older);
        assert_eq!(with_body_if_unchanged(&kept, &written), older);
    }
}
