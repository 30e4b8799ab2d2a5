//! Report formats of `iotposture check` and `iotposture checklist`.

use serde_json::{Value, json};

use super::SystemReport;
use crate::{
    api::Verdict,
    checklist::catalog::{CATALOG, Item, item},
};

const WIDTH: usize = 110;

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn compliant(r: &SystemReport) -> String {
    crate::checklist::summarize(&r.items).1
}

pub fn table(reports: &[SystemReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let (summary, compliant) = crate::checklist::summarize(&r.items);
        out.push_str(&format!(
            "{}/{} ({}): compliant {compliant}; pass {}, fail {}, attested {}, not applicable {}, unknown {}\n",
            r.namespace, r.name, r.file, summary.pass, summary.fail, summary.attested, summary.not_applicable, summary.unknown
        ));
        out.push_str(&format!(
            "  {:<7} {:<13} {}\n",
            "ITEM", "VERDICT", "EVIDENCE"
        ));
        for i in &r.items {
            out.push_str(&format!(
                "  {:<7} {:<13} {}\n",
                i.id,
                i.verdict.as_str(),
                cut(&i.evidence, WIDTH)
            ));
            if let Some(fix) = &i.remediation {
                out.push_str(&format!(
                    "  {:<7} {:<13} fix: {}\n",
                    "",
                    "",
                    cut(fix, WIDTH)
                ));
            }
        }
        out.push('\n');
    }
    out
}

pub fn json(reports: &[SystemReport]) -> String {
    let systems: Vec<Value> = reports
        .iter()
        .map(|r| {
            let (summary, compliant) = crate::checklist::summarize(&r.items);
            json!({
                "namespace": r.namespace, "name": r.name, "file": r.file,
                "compliant": compliant, "summary": summary, "items": r.items,
            })
        })
        .collect();
    serde_json::to_string_pretty(&json!({ "systems": systems })).expect("JSON of plain data")
}

/// SARIF 2.1.0, one result per item and system, so code-scanning tools show failures.
pub fn sarif(reports: &[SystemReport]) -> String {
    let rules: Vec<Value> = CATALOG
        .iter()
        .map(|i| {
            json!({
                "id": i.id,
                "name": i.name_en,
                "shortDescription": {"text": i.name_en},
                "fullDescription": {"text": format!("{} ({})", i.name_en, i.name_ja)},
                "help": {"text": i.remediation},
                "properties": {"tags": ["security", "iot", i.chapter.title()], "severity": i.severity.as_str()},
            })
        })
        .collect();
    let results: Vec<Value> = reports
        .iter()
        .flat_map(|r| {
            r.items.iter().map(move |i| {
                let (kind, level) = match i.verdict {
                    Verdict::Pass | Verdict::Attested => ("pass", "none"),
                    Verdict::Fail => ("fail", "error"),
                    Verdict::NotApplicable => ("notApplicable", "none"),
                    Verdict::Unknown => ("review", "note"),
                };
                json!({
                    "ruleId": i.id,
                    "kind": kind,
                    "level": level,
                    "message": {"text": format!("{}/{}: {}: {}", r.namespace, r.name, i.verdict.as_str(), i.evidence)},
                    "locations": [{"physicalLocation": {"artifactLocation": {"uri": r.file}}}],
                    "properties": {"system": format!("{}/{}", r.namespace, r.name), "verdict": i.verdict.as_str()},
                })
            })
        })
        .collect();
    let doc = json!({
        "version": "2.1.0",
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "runs": [{
            "tool": {"driver": {
                "name": "iotposture",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://github.com/iotposture/iotposture",
                "rules": rules,
            }},
            "results": results,
        }],
    });
    serde_json::to_string_pretty(&doc).expect("JSON of plain data")
}

fn xml(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&apos;".to_string(),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => " ".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// JUnit XML: one suite per system, one case per item; Fail is a failure,
/// NotApplicable and Unknown are skipped.
pub fn junit(reports: &[SystemReport]) -> String {
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"iotposture\">\n",
    );
    for r in reports {
        let failures = r
            .items
            .iter()
            .filter(|i| i.verdict == Verdict::Fail)
            .count();
        let skipped = r
            .items
            .iter()
            .filter(|i| matches!(i.verdict, Verdict::NotApplicable | Verdict::Unknown))
            .count();
        out.push_str(&format!(
            "  <testsuite name=\"{}/{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" file=\"{}\">\n",
            xml(&r.namespace), xml(&r.name), r.items.len(), xml(&r.file)
        ));
        for i in &r.items {
            let name = item(&i.id).map_or(i.id.clone(), |c| format!("{} {}", i.id, c.name_en));
            out.push_str(&format!(
                "    <testcase classname=\"iotposture.{}.{}\" name=\"{}\">",
                xml(&r.namespace),
                xml(&r.name),
                xml(&name)
            ));
            match i.verdict {
                Verdict::Fail => out.push_str(&format!(
                    "<failure message=\"{}\">{}</failure>",
                    xml(&i.evidence),
                    xml(i.remediation.as_deref().unwrap_or_default())
                )),
                Verdict::NotApplicable | Verdict::Unknown => out.push_str(&format!(
                    "<skipped message=\"{}: {}\"/>",
                    i.verdict.as_str(),
                    xml(&i.evidence)
                )),
                Verdict::Pass | Verdict::Attested => out.push_str(&format!(
                    "<system-out>{}: {}</system-out>",
                    i.verdict.as_str(),
                    xml(&i.evidence)
                )),
            }
            out.push_str("</testcase>\n");
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// One line per system, for the end of a table report.
pub fn totals(reports: &[SystemReport]) -> String {
    reports
        .iter()
        .map(|r| format!("{}/{}: {}", r.namespace, r.name, compliant(r)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn targets(i: &Item) -> String {
    i.targets
        .iter()
        .map(|t| t.short())
        .collect::<Vec<_>>()
        .join(",")
}

fn mechanisms(i: &Item) -> String {
    i.mechanisms
        .iter()
        .map(|m| m.short())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn catalog_table() -> String {
    let mut out = format!(
        "{:<7} {:<9} {:<13} {:<6} {}\n",
        "ID", "SEVERITY", "TARGETS", "MECH", "NAME"
    );
    for i in &CATALOG {
        out.push_str(&format!(
            "{:<7} {:<9} {:<13} {:<6} {} ({})\n",
            i.id,
            i.severity.as_str(),
            targets(i),
            mechanisms(i),
            i.name_en,
            i.name_ja
        ));
    }
    out
}

pub fn catalog_json() -> String {
    serde_json::to_string_pretty(&CATALOG.iter().collect::<Vec<_>>()).expect("JSON of plain data")
}

pub fn catalog_markdown() -> String {
    let mut out = String::from(
        "| ID | chapter | name | 名称 | targets | mechanisms | severity | remediation |\n|---|---|---|---|---|---|---|---|\n",
    );
    for i in &CATALOG {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            i.id,
            i.chapter.title(),
            i.name_en,
            i.name_ja,
            targets(i),
            mechanisms(i),
            i.severity.as_str(),
            i.remediation.replace('|', "\\|")
        ));
    }
    out
}
