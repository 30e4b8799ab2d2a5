//! The operator's decisions into each system's tamper-evident record
//! (checklist item VII-2; the tree and the signatures are in `crate::record`).
//!
//! Each system has its own log, whose right edge lives in its status, so the
//! leader of the moment appends where the last one stopped. A reconcile's
//! decisions (objects applied and pruned, verdicts changed) become entries;
//! the lines are written to stdout, where the node's log collector ships
//! them with the operator's other logs, only once the status that counts
//! them is stored. The signing key sits in a Secret of the operator's
//! namespace, created by the first leader when empty.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use k8s_openapi::{
    ByteString,
    api::{core::v1::Secret, events::v1::Event},
};
use kube::{Api, Client, ResourceExt, api::PostParams};
use tracing::{info, warn};

use crate::{
    api::{DecisionLogStatus, IoTSystem, ItemStatus},
    record::{
        Decision, Frontier, Kind, Log, LogError, Signer,
        merkle::{decode_hash, encode_hash},
    },
};

use super::apply::ObjectKey;

/// The key's name in the signed notes and the Secret's data key.
pub const KEY_NAME: &str = "iotposture.dev/decisions";
const SECRET_KEY: &str = "ed25519.pkcs8";
/// Where the Secret shows the verifier key.
pub const VERIFIER_KEY_ANNOTATION: &str = "iotposture.dev/verifier-key";

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the decision record's key Secret {0}: {1}")]
    Secret(String, #[source] kube::Error),
    #[error("the decision record's key in Secret {0} is unusable: {1}")]
    Key(String, String),
    #[error(transparent)]
    Log(#[from] LogError),
}

/// What one reconcile decided, before it becomes entries.
pub fn decisions(
    system: &str,
    time: &str,
    applied: &[ObjectKey],
    pruned: &[ObjectKey],
    before: &[ItemStatus],
    after: &[ItemStatus],
) -> Vec<Decision> {
    let decision = |kind, subject: String, detail: String| Decision {
        time: time.to_string(),
        system: system.to_string(),
        kind,
        subject,
        detail,
    };
    let mut out: Vec<Decision> = applied
        .iter()
        .map(|k| decision(Kind::Applied, k.to_string(), "applied".into()))
        .chain(
            pruned
                .iter()
                .map(|k| decision(Kind::Pruned, k.to_string(), "removed".into())),
        )
        .collect();
    for item in after {
        let old = before.iter().find(|b| b.id == item.id);
        if old.is_some_and(|o| o.verdict == item.verdict) {
            continue;
        }
        let from = old.map_or("none", |o| o.verdict.as_str());
        out.push(decision(
            Kind::VerdictChanged,
            item.id.clone(),
            format!("{from} -> {}: {}", item.verdict.as_str(), item.evidence),
        ));
    }
    out
}

/// Where an admission Event sorts: its time (fixed width, so strings
/// compare as times do) and its name.
fn handover_key(event: &Event) -> Option<String> {
    let time = event.event_time.as_ref()?.0;
    Some(format!(
        "{} {}",
        time.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"),
        event.metadata.name.as_deref()?
    ))
}

/// The admission refusals and warnings the webhooks handed over for the
/// system with `uid` (`crate::webhook::refusals`) after `through`, oldest
/// first, and the new `through`. Pure: the same inputs give the same
/// decisions, so a recomputed status write appends each once.
pub fn handed_over(
    system: &str,
    uid: &str,
    events: &[Arc<Event>],
    through: Option<&str>,
) -> (Vec<Decision>, Option<String>) {
    use crate::webhook::refusals::{DECISION_LABEL, REFUSED, WARNED};
    let mut new: Vec<(String, &Event, Kind)> = events
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid))
        .filter_map(|e| {
            let kind = match e.metadata.labels.as_ref()?.get(DECISION_LABEL)?.as_str() {
                REFUSED => Kind::AdmissionRefused,
                WARNED => Kind::AdmissionWarned,
                _ => return None,
            };
            Some((handover_key(e)?, e.as_ref(), kind))
        })
        .filter(|(key, _, _)| through.is_none_or(|t| key.as_str() > t))
        .collect();
    new.sort_by(|a, b| a.0.cmp(&b.0));
    let last = new
        .last()
        .map(|(key, _, _)| key.clone())
        .or_else(|| through.map(str::to_string));
    let decisions = new
        .into_iter()
        .map(|(key, e, kind)| {
            let subject = e
                .related
                .as_ref()
                .map(|r| {
                    format!(
                        "{}/{}",
                        r.kind.as_deref().unwrap_or("?"),
                        r.name.as_deref().unwrap_or("?")
                    )
                })
                .unwrap_or_else(|| "?".into());
            Decision {
                time: key
                    .split_once(' ')
                    .map_or(key.as_str(), |(t, _)| t)
                    .to_string(),
                system: system.to_string(),
                kind,
                subject,
                detail: e.note.clone().unwrap_or_default(),
            }
        })
        .collect();
    (decisions, last)
}

/// The signer shared by every system's log, and where lines go.
pub struct DecisionRecord {
    signer: Arc<Signer>,
    out: Mutex<Box<dyn Write + Send>>,
}

/// A log's new head and the lines that got it there, to emit once stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    pub status: DecisionLogStatus,
    pub lines: Vec<String>,
}

impl DecisionRecord {
    pub fn new(signer: Signer, out: Box<dyn Write + Send>) -> Self {
        Self {
            signer: Arc::new(signer),
            out: Mutex::new(out),
        }
    }

    /// A record with a key of its own, for operators run without a key Secret:
    /// its checkpoints verify only until the process ends.
    pub fn ephemeral() -> Result<Self, RecordError> {
        let pkcs8 = Signer::generate_pkcs8()
            .map_err(|e| RecordError::Key("(none)".into(), e.to_string()))?;
        let signer = Signer::from_pkcs8(KEY_NAME, &pkcs8)
            .map_err(|e| RecordError::Key("(none)".into(), e.to_string()))?;
        Ok(Self::new(signer, Box::new(std::io::stdout())))
    }

    pub fn vkey(&self) -> String {
        self.signer.vkey()
    }

    /// Appends `decisions` to the log `current` describes (a new one when
    /// none, or when it is unreadable: a new origin then says so). Pure: the
    /// same inputs give the same head and lines.
    pub fn append(
        &self,
        system: &IoTSystem,
        current: Option<&DecisionLogStatus>,
        decisions: Vec<Decision>,
    ) -> Result<Option<Appended>, RecordError> {
        if decisions.is_empty() {
            return Ok(None);
        }
        let origin = format!(
            "iotposture.dev/{}/{}/{}",
            system.namespace().unwrap_or_default(),
            system.name_any(),
            system.uid().unwrap_or_default()
        );
        let resumed = current
            .filter(|c| c.origin == origin)
            .and_then(|c| frontier(c).ok());
        if let (Some(c), None) = (current, &resumed) {
            warn!(origin = %c.origin, "the decision log in status cannot be resumed; a new log starts");
        }
        let mut log = Log::resume(&origin, self.signer.clone(), resumed.unwrap_or_default())?;
        let mut lines = Vec::with_capacity(decisions.len());
        for d in decisions {
            lines.push(log.append(d)?.0);
        }
        Ok(Some(Appended {
            status: DecisionLogStatus {
                origin,
                size: log.size() as i64,
                checkpoint: log.checkpoint()?,
                key: log.vkey(),
                frontier: log.frontier().nodes().iter().map(encode_hash).collect(),
                admissions_through: current.and_then(|c| c.admissions_through.clone()),
            },
            lines,
        }))
    }

    /// Writes the lines, one per line, for the log collector.
    pub fn emit(&self, lines: &[String]) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        for line in lines {
            if let Err(e) = writeln!(out, "{line}") {
                warn!(error = %e, "could not write a decision record line");
            }
        }
        let _ = out.flush();
    }
}

fn frontier(status: &DecisionLogStatus) -> Result<Frontier, String> {
    let nodes = status
        .frontier
        .iter()
        .map(|h| decode_hash(h).ok_or_else(|| format!("{h:?} is not a hash")))
        .collect::<Result<Vec<_>, _>>()?;
    Frontier::from_parts(status.size.max(0) as u64, nodes).map_err(|e| e.to_string())
}

/// The signing key from `namespace/name`, made and stored there when the
/// Secret is empty (the chart creates it empty, so the operator needs no
/// right to create Secrets). Two leaders cannot both store one: the update
/// carries the resourceVersion read.
pub async fn load_or_create_key(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Signer, RecordError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let what = format!("{namespace}/{name}");
    for _ in 0..3 {
        let secret = api
            .get(name)
            .await
            .map_err(|e| RecordError::Secret(what.clone(), e))?;
        if let Some(pkcs8) = secret.data.as_ref().and_then(|d| d.get(SECRET_KEY)) {
            return Signer::from_pkcs8(KEY_NAME, &pkcs8.0)
                .map_err(|e| RecordError::Key(what.clone(), e.to_string()));
        }
        let pkcs8 =
            Signer::generate_pkcs8().map_err(|e| RecordError::Key(what.clone(), e.to_string()))?;
        let vkey = Signer::from_pkcs8(KEY_NAME, &pkcs8)
            .map_err(|e| RecordError::Key(what.clone(), e.to_string()))?
            .vkey();
        let mut updated = secret.clone();
        updated
            .data
            .get_or_insert_default()
            .insert(SECRET_KEY.into(), ByteString(pkcs8));
        // The verifier key beside it, for auditors who may not read the key.
        updated
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(VERIFIER_KEY_ANNOTATION.into(), vkey);
        match api.replace(name, &PostParams::default(), &updated).await {
            Ok(_) => info!(secret = %what, "stored a new decision record key"),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(RecordError::Secret(what.clone(), e)),
        }
    }
    Err(RecordError::Key(
        what,
        "it kept changing while being written".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::Verdict, record::verify};

    fn system() -> IoTSystem {
        let mut s: IoTSystem =
            serde_saphyr::from_str(crate::build::fixtures::FACTORY).expect("fixture");
        s.metadata.uid = Some("u-1".into());
        s
    }

    fn item(id: &str, verdict: Verdict) -> ItemStatus {
        ItemStatus {
            id: id.into(),
            verdict,
            evidence: format!("{id} evidence"),
            remediation: None,
        }
    }

    fn record() -> (DecisionRecord, Arc<Mutex<Vec<u8>>>) {
        #[derive(Clone)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        let pkcs8 = Signer::generate_pkcs8().unwrap();
        let signer = Signer::from_pkcs8(KEY_NAME, &pkcs8).unwrap();
        (
            DecisionRecord::new(signer, Box::new(Shared(buf.clone()))),
            buf,
        )
    }

    #[test]
    fn only_changed_verdicts_and_written_objects_are_decisions() {
        let key = |kind, name: &str| ObjectKey {
            kind,
            name: name.into(),
        };
        let d = decisions(
            "plant/factory",
            "2026-11-30T00:00:00Z",
            &[key("Role", "factory-admin")],
            &[key("NetworkPolicy", "old")],
            &[item("I-1", Verdict::Pass), item("I-2", Verdict::Unknown)],
            &[
                item("I-1", Verdict::Pass),
                item("I-2", Verdict::Fail),
                item("I-3", Verdict::Unknown),
            ],
        );
        let shown: Vec<(Kind, &str, &str)> = d
            .iter()
            .map(|d| (d.kind, d.subject.as_str(), d.detail.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                (Kind::Applied, "Role/factory-admin", "applied"),
                (Kind::Pruned, "NetworkPolicy/old", "removed"),
                (Kind::VerdictChanged, "I-2", "Unknown -> Fail: I-2 evidence"),
                (Kind::VerdictChanged, "I-3", "none -> Unknown: I-3 evidence"),
            ]
        );
    }

    #[test]
    fn a_log_resumed_from_status_verifies_across_reconciles() {
        let (record, out) = record();
        let s = system();
        let decide = |n: usize, t: &str| {
            (0..n)
                .map(|i| Decision {
                    time: t.into(),
                    system: "plant/factory".into(),
                    kind: Kind::VerdictChanged,
                    subject: format!("I-{i}"),
                    detail: "x".into(),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(record.append(&s, None, Vec::new()).unwrap(), None);
        let first = record.append(&s, None, decide(3, "t1")).unwrap().unwrap();
        record.emit(&first.lines);
        let again = record
            .append(&s, Some(&first.status), decide(2, "t2"))
            .unwrap()
            .unwrap();
        assert_eq!(
            record
                .append(&s, Some(&first.status), decide(2, "t2"))
                .unwrap(),
            Some(again.clone()),
            "pure: recomputing from the same status gives the same head"
        );
        record.emit(&again.lines);
        assert_eq!(again.status.size, 5);
        assert_eq!(again.status.origin, "iotposture.dev/plant/factory/u-1");
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let report = verify(
            &lines,
            &[
                first.status.checkpoint.clone(),
                again.status.checkpoint.clone(),
            ],
            &again.status.key,
        )
        .unwrap();
        assert_eq!((report.entries, report.checkpoints), (5, 2));

        // Another system's head (or a spoiled one) is not resumed: a new log.
        let mut other = again.status.clone();
        other.frontier.pop();
        let fresh = record
            .append(&s, Some(&other), decide(1, "t3"))
            .unwrap()
            .unwrap();
        assert_eq!(fresh.status.size, 1);
    }

    fn handover(name: &str, at: &str, uid: &str, label: &str) -> Arc<Event> {
        let h = crate::webhook::refusals::Handover {
            namespace: "plant".into(),
            system: "factory".into(),
            system_uid: uid.into(),
            subject: format!("Pod/{name}"),
            message: format!("refused {name}"),
            warned: label == crate::webhook::refusals::WARNED,
        };
        let mut e = crate::webhook::refusals::event(&h, "replica-1", at.parse().unwrap(), 1);
        e.metadata.name = Some(format!("factory.{name}"));
        e.metadata.labels.as_mut().unwrap().insert(
            crate::webhook::refusals::DECISION_LABEL.into(),
            label.into(),
        );
        Arc::new(e)
    }

    #[test]
    fn handed_over_refusals_are_recorded_once_in_time_order() {
        use crate::webhook::refusals::{REFUSED, WARNED};
        let events = vec![
            handover("b", "2026-11-30T10:00:02Z", "u-1", REFUSED),
            handover("a", "2026-11-30T10:00:01.5Z", "u-1", WARNED),
            // An earlier system of the same name, and a foreign label value.
            handover("old", "2026-11-30T10:00:03Z", "u-0", REFUSED),
            handover("odd", "2026-11-30T10:00:03Z", "u-1", "something-else"),
        ];
        let (decided, through) = handed_over("plant/factory", "u-1", &events, None);
        let shown: Vec<(Kind, &str, &str, &str)> = decided
            .iter()
            .map(|d| {
                (
                    d.kind,
                    d.time.as_str(),
                    d.subject.as_str(),
                    d.detail.as_str(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                (
                    Kind::AdmissionWarned,
                    "2026-11-30T10:00:01.500000Z",
                    "Pod/a",
                    "Pod/a: refused a"
                ),
                (
                    Kind::AdmissionRefused,
                    "2026-11-30T10:00:02.000000Z",
                    "Pod/b",
                    "Pod/b: refused b"
                ),
            ]
        );
        assert_eq!(
            through.as_deref(),
            Some("2026-11-30T10:00:02.000000Z factory.b")
        );
        // Nothing new after the mark; a later one is.
        let (again, same) = handed_over("plant/factory", "u-1", &events, through.as_deref());
        assert!(again.is_empty());
        assert_eq!(same, through);
        let mut more = events.clone();
        more.push(handover("c", "2026-11-30T10:00:02Z", "u-1", REFUSED));
        let (later, last) = handed_over("plant/factory", "u-1", &more, through.as_deref());
        assert_eq!(later.len(), 1, "same time, later name: {later:?}");
        assert_eq!(later[0].subject, "Pod/c");
        assert_eq!(
            last.as_deref(),
            Some("2026-11-30T10:00:02.000000Z factory.c")
        );
    }

    #[test]
    fn the_mark_is_carried_in_the_status_the_append_returns() {
        let (record, _) = record();
        let s = system();
        let mut current = record
            .append(
                &s,
                None,
                vec![Decision {
                    time: "t".into(),
                    system: "plant/factory".into(),
                    kind: Kind::AdmissionRefused,
                    subject: "Pod/a".into(),
                    detail: "x".into(),
                }],
            )
            .unwrap()
            .unwrap()
            .status;
        current.admissions_through = Some("mark".into());
        let next = record
            .append(
                &s,
                Some(&current),
                vec![Decision {
                    time: "t2".into(),
                    system: "plant/factory".into(),
                    kind: Kind::VerdictChanged,
                    subject: "I-1".into(),
                    detail: "x".into(),
                }],
            )
            .unwrap()
            .unwrap();
        assert_eq!(next.status.admissions_through.as_deref(), Some("mark"));
    }
}
