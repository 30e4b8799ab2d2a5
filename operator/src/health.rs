//! What `/readyz` answers, and what holds back the controller and the
//! webhooks at start: every watch cache has had its first full list, no
//! watch is failing now, and the webhook server (when it runs) is serving
//! with its configurations registered.

use std::{
    collections::BTreeSet,
    sync::{Mutex, MutexGuard},
};

use tokio::sync::watch;

#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
    /// Turns true once, when every expected watch has listed.
    listed: watch::Sender<bool>,
    /// Turns true once, when the process is asked to stop.
    stopping: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct State {
    /// Watches that have not had their first full list yet.
    unlisted: BTreeSet<&'static str>,
    /// Watches whose last attempt failed.
    failing: BTreeSet<&'static str>,
    /// None: no webhook server in this process.
    webhooks: Option<WebhookState>,
    /// Asked to stop: unready, so Services send new requests elsewhere.
    terminating: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookState {
    Starting,
    Serving,
    Down,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::default()),
            listed: watch::Sender::new(false),
            stopping: watch::Sender::new(false),
        }
    }
}

impl Health {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A watch that must list before anything starts.
    pub fn expect_watch(&self, kind: &'static str) {
        self.state().unlisted.insert(kind);
        self.listed.send_replace(false);
    }

    /// The watch has (re)listed everything and is watching.
    pub fn watch_listed(&self, kind: &'static str) {
        let mut state = self.state();
        state.failing.remove(kind);
        state.unlisted.remove(kind);
        if state.unlisted.is_empty() {
            self.listed.send_replace(true);
        }
    }

    pub fn watch_failed(&self, kind: &'static str) {
        self.state().failing.insert(kind);
    }

    pub fn set_terminating(&self) {
        self.state().terminating = true;
        self.stopping.send_replace(true);
    }

    /// A receiver that turns true with `set_terminating`.
    pub fn terminating(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    pub fn set_webhooks(&self, webhooks: WebhookState) {
        self.state().webhooks = Some(webhooks);
    }

    /// Whether every cache has had its first full list.
    pub fn caches_listed(&self) -> bool {
        *self.listed.borrow()
    }

    /// Resolves once every cache has had its first full list.
    pub async fn wait_listed(&self) {
        let mut rx = self.listed.subscribe();
        let _ = rx.wait_for(|listed| *listed).await;
    }

    /// A receiver that turns true with `caches_listed`.
    pub fn listed_receiver(&self) -> watch::Receiver<bool> {
        self.listed.subscribe()
    }

    /// Why the process is not ready; empty when it is.
    pub fn problems(&self) -> Vec<String> {
        let state = self.state();
        let mut out = Vec::new();
        if state.terminating {
            out.push("shutting down".into());
        }
        if !state.unlisted.is_empty() {
            out.push(format!(
                "caches not filled yet: {}",
                state
                    .unlisted
                    .iter()
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !state.failing.is_empty() {
            out.push(format!(
                "watches failing: {}",
                state.failing.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
        match state.webhooks {
            Some(WebhookState::Starting) => out.push("admission webhooks not serving yet".into()),
            Some(WebhookState::Down) => out.push("admission webhook server is down".into()),
            Some(WebhookState::Serving) | None => {}
        }
        out
    }

    pub fn is_ready(&self) -> bool {
        self.problems().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_listed_watching_and_serving() {
        let health = Health::default();
        health.expect_watch("Pod");
        health.expect_watch("Role");
        health.set_webhooks(WebhookState::Starting);
        assert_eq!(
            health.problems(),
            [
                "caches not filled yet: Pod, Role",
                "admission webhooks not serving yet"
            ]
        );
        health.watch_listed("Pod");
        health.watch_listed("Role");
        assert!(health.caches_listed());
        health.set_webhooks(WebhookState::Serving);
        assert!(health.is_ready());
        health.watch_failed("Role");
        assert_eq!(health.problems(), ["watches failing: Role"]);
        health.watch_listed("Role");
        health.set_webhooks(WebhookState::Down);
        assert_eq!(health.problems(), ["admission webhook server is down"]);
        assert!(health.caches_listed(), "listing happens once");
        health.set_webhooks(WebhookState::Serving);
        health.set_terminating();
        assert_eq!(health.problems(), ["shutting down"]);
    }
}
