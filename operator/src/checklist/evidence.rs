//! Bounded evidence text: the first offenders by name, then a count.

use crate::api::Verdict;

/// Longest evidence string kept in status and reports.
pub const MAX_EVIDENCE: usize = 600;
const SHOWN: usize = 5;

/// What one check concluded.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub verdict: Verdict,
    pub evidence: String,
}

impl Check {
    pub fn pass(evidence: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Pass,
            evidence: bounded(evidence.into()),
        }
    }

    pub fn fail(evidence: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Fail,
            evidence: bounded(evidence.into()),
        }
    }

    pub fn not_applicable(evidence: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::NotApplicable,
            evidence: bounded(evidence.into()),
        }
    }

    pub fn unknown(evidence: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Unknown,
            evidence: bounded(evidence.into()),
        }
    }
}

/// Collects offences; `Pass` with the given evidence when there are none.
#[derive(Default)]
pub struct Offences(Vec<String>);

impl Offences {
    pub fn add(&mut self, offence: impl Into<String>) {
        let offence = offence.into();
        if !self.0.contains(&offence) {
            self.0.push(offence);
        }
    }

    pub fn into_vec(self) -> Vec<String> {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn verdict(self, pass_evidence: impl Into<String>) -> Check {
        if self.0.is_empty() {
            return Check::pass(pass_evidence);
        }
        let mut text = self
            .0
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        if self.0.len() > SHOWN {
            text.push_str(&format!("; and {} more", self.0.len() - SHOWN));
        }
        Check::fail(text)
    }
}

pub fn bounded(s: String) -> String {
    truncate(&s, MAX_EVIDENCE, "...")
}

/// At most `max` bytes, cut on a character boundary, `marker` ending a cut text.
pub fn truncate(s: &str, max: usize, marker: &str) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(marker.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &s[..end])
}
