//! `iotposture verify`: reads what an auditor has (the shipped lines, the
//! checkpoints, the key) and runs `verify` over one system's entries.

use std::{io::Read, path::Path};

use serde_json::Value;

use crate::api::IoTSystem;

/// Exit codes: 0 holds, 1 tampered, 2 unreadable input.
pub fn run(
    entries: &Path,
    checkpoints: &[std::path::PathBuf],
    status: Option<&Path>,
    key: Option<&str>,
    system: Option<&str>,
) -> i32 {
    match verify_files(entries, checkpoints, status, key, system) {
        Ok(Ok(text)) => {
            println!("{text}");
            0
        }
        Ok(Err(tampered)) => {
            eprintln!("verify: {tampered}");
            1
        }
        Err(unreadable) => {
            eprintln!("verify: {unreadable}");
            2
        }
    }
}

fn read(path: &Path) -> Result<String, String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("stdin: {e}"))?;
        return Ok(text);
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The entry lines of `system` among `text`'s lines, in order: raw lines as
/// the operator wrote them, or log store records carrying them in `_msg`.
/// Shipping is at least once (a restarted collector reads a file again), so
/// a line identical to one before it is the same entry, kept once; an entry
/// that differs in anything is kept, and verification judges it.
pub fn entry_lines(text: &str, system: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    text.lines()
        .filter_map(|line| {
            let value: Value = serde_json::from_str(line).ok()?;
            let raw = match value.get("_msg").and_then(Value::as_str) {
                Some(msg) => msg.to_string(),
                None => line.to_string(),
            };
            let entry: Value = serde_json::from_str(&raw).ok()?;
            let ours = entry.get("system").and_then(Value::as_str) == Some(system)
                && entry.get("prevRoot").is_some()
                && entry.get("index").is_some();
            ours.then_some(raw)
        })
        .filter(|raw| seen.insert(raw.clone()))
        .collect()
}

/// Outer Err: unreadable input; inner Err: the record does not hold.
fn verify_files(
    entries: &Path,
    checkpoint_files: &[std::path::PathBuf],
    status: Option<&Path>,
    key: Option<&str>,
    system: Option<&str>,
) -> Result<Result<String, String>, String> {
    let mut checkpoints = Vec::new();
    for f in checkpoint_files {
        checkpoints.push(read(f)?);
    }
    let mut key = key.map(str::to_string);
    let mut system = system.map(str::to_string);
    if let Some(path) = status {
        let object: IoTSystem = serde_json::from_str(&read(path)?)
            .map_err(|e| format!("{}: not an IoTSystem: {e}", path.display()))?;
        let log = object
            .status
            .as_ref()
            .and_then(|s| s.decision_log.clone())
            .ok_or_else(|| format!("{}: the status has no decisionLog", path.display()))?;
        checkpoints.push(log.checkpoint);
        key.get_or_insert(log.key);
        system.get_or_insert(format!(
            "{}/{}",
            object.metadata.namespace.unwrap_or_default(),
            object.metadata.name.unwrap_or_default()
        ));
    }
    let key = key.ok_or("no key: give --key or --status")?;
    let system = system.ok_or("no system: give --system or --status")?;
    if checkpoints.is_empty() {
        return Err("no checkpoint: give --checkpoint or --status".into());
    }
    let lines = entry_lines(&read(entries)?, &system);
    Ok(match super::verify(&lines, &checkpoints, &key) {
        Ok(report) => Ok(format!(
            "{system}: {} entries, {} checkpoints verified; latest checkpoint: size {}{}",
            report.entries,
            report.checkpoints,
            report.latest.size,
            if report.unverified > 0 {
                format!(
                    "; {} later entries are not covered by a checkpoint yet",
                    report.unverified
                )
            } else {
                String::new()
            }
        )),
        Err(e) => Err(format!("{system}: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_raw_or_inside_a_log_store_record_and_others_are_skipped() {
        let entry = r#"{"index":0,"time":"t","system":"ns/a","kind":"Applied","subject":"s","detail":"d","prevRoot":"x"}"#;
        let other = r#"{"index":0,"time":"t","system":"ns/b","kind":"Applied","subject":"s","detail":"d","prevRoot":"x"}"#;
        let stored = serde_json::json!({"_msg": entry, "_time": "t"}).to_string();
        let text = format!("{entry}\nnot json\n{other}\n{{\"level\":\"INFO\"}}\n{stored}\n");
        // The stored copy is the same entry shipped twice: kept once.
        assert_eq!(entry_lines(&text, "ns/a"), [entry]);
        // A second entry 0 that differs is kept, for verification to refuse.
        let forged = entry.replace("\"detail\":\"d\"", "\"detail\":\"e\"");
        assert_eq!(
            entry_lines(&format!("{entry}\n{forged}\n{entry}\n"), "ns/a"),
            [entry, forged.as_str()]
        );
    }
}
