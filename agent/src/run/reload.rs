//! SIGHUP: read the config (and the topology and TLS files it names) again and apply
//! what can change while running. Everything is loaded and checked first, the way
//! start-up checks it; a bad file is refused, logged with its file, line and key,
//! and changes nothing.
//!
//! Applied: detector thresholds (evidence kept), the topology (the detector starts
//! over: its entities and their verdicts are the topology's), the peers followed,
//! and the TLS files. What is bound or attached at start-up — `listen.*`, `probe.*`,
//! `agent.name`, `agent.local_addresses`, the TLS file paths — is left as it is and
//! named in a warning: those need a restart.
use std::{path::PathBuf, sync::Arc};

use super::{RunError, agent::Agent, error_chain, load_topology};
use crate::{config::Config, detector::Detector, metrics::Metrics};

/// Where a reload reads the config from: the `--config` path, or None for the
/// default path (as at start-up: the built-in defaults when it does not exist).
#[derive(Debug, Clone)]
pub struct ReloadFrom(pub Option<PathBuf>);

impl Agent {
    /// Reloads, logging what changed or why nothing did.
    pub(super) fn reload(&mut self) {
        let Some(from) = self.reload_from.clone() else {
            tracing::warn!(
                "SIGHUP ignored: this agent was given its config in-process, not from a file"
            );
            return;
        };
        match self.try_reload(&from) {
            Ok(applied) => {
                Metrics::add(&self.metrics.reloads, 1);
                tracing::info!(applied = %applied.join(", "), "SIGHUP: config reloaded");
            }
            Err(e) => {
                Metrics::add(&self.metrics.reloads_refused, 1);
                tracing::error!(error = %error_chain(&e), "SIGHUP: config refused; nothing changed");
            }
        }
    }

    fn try_reload(&mut self, from: &ReloadFrom) -> Result<Vec<String>, RunError> {
        let new = Config::load(from.0.as_deref())?;
        let topology = load_topology(&new)?;
        new.check_tls()?;
        let peers = crate::peers::resolve(&new, &topology, &self.observer.addresses())?;
        // Everything checked: from here on nothing can fail.
        let fixed = needs_restart(&self.config, &new);
        if !fixed.is_empty() {
            tracing::warn!(keys = %fixed.join(", "), "SIGHUP: these keys changed but need a restart; kept as they were");
        }
        let mut applied = Vec::new();
        let topology_changed = topology != *self.feed.topology.get();
        if topology_changed {
            let gone: Vec<_> = self
                .detector
                .verdicts()
                .into_iter()
                .map(|v| v.entity)
                .collect();
            self.detector = Detector::new(topology.clone(), new.detector.clone());
            self.feed.hub.forget(&gone);
            self.feed.topology.set(Arc::new(topology));
            applied.push(format!(
                "topology ({} entities; verdicts start over)",
                self.detector.topology().len()
            ));
        } else if new.detector != self.config.detector {
            self.detector.reconfigure(new.detector.clone());
            applied.push("detector thresholds".to_owned());
        }
        if topology_changed || peers.endpoints != self.endpoints {
            self.tasks.stop_named(super::agent::PEER_FOLLOWER);
            self.endpoints = peers.endpoints;
            self.gate.topology = self.feed.topology.get();
            self.gate.tls.clone_from(&new.tls);
            self.spawn_followers();
            applied.push(format!("peers ({})", self.endpoints.len()));
        }
        if let Some(tls) = &self.tls {
            super::agent::note_tls_reload(&tls.reload(true), &self.feed.counters);
            applied.push("TLS files".to_owned());
        }
        if applied.is_empty() {
            applied.push("nothing changed".to_owned());
        }
        // Keep what needs a restart as it runs; take the rest.
        let mut kept = new;
        kept.listen = self.config.listen.clone();
        kept.probe = self.config.probe.clone();
        kept.agent.name.clone_from(&self.config.agent.name);
        kept.agent
            .local_addresses
            .clone_from(&self.config.agent.local_addresses);
        kept.tls.clone_from(&self.config.tls);
        self.config = kept;
        Ok(applied)
    }
}

/// The keys that changed between `old` and `new` but only take effect at start-up.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.listen != new.listen {
        keys.push("listen");
    }
    if old.probe != new.probe {
        keys.push("probe");
    }
    if old.agent.name != new.agent.name {
        keys.push("agent.name");
    }
    if old.agent.local_addresses != new.agent.local_addresses {
        keys.push("agent.local_addresses");
    }
    if old.tls != new.tls {
        keys.push("tls (paths; the files themselves are reloaded)");
    }
    keys
}
