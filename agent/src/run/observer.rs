//! Who this agent is and which links are its own: fixed at start-up from the config.
use std::{collections::HashSet, net::IpAddr, sync::Arc};

use super::RunError;
use crate::{config::Config, detector::Observation, netif, probe::LinkSample};

/// The agent's identity and the links it judges.
pub(crate) struct Observer {
    pub name: Arc<str>,
    locals: HashSet<IpAddr>,
}

impl Observer {
    pub(crate) fn from_config(config: &Config) -> Result<Self, RunError> {
        let name = config.agent.name.clone().unwrap_or_else(hostname);
        let locals = match &config.agent.local_addresses {
            Some(list) => list.iter().copied().collect(),
            None => netif::local_addresses()
                .map_err(|source| RunError::LocalAddresses { source })?
                .into_iter()
                .collect(),
        };
        Ok(Self {
            name: name.into(),
            locals,
        })
    }

    /// The addresses this agent judges links for, sorted.
    pub(crate) fn addresses(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self.locals.iter().copied().collect();
        out.sort_unstable();
        out
    }

    /// How many addresses this agent judges links for.
    pub(crate) fn local_count(&self) -> usize {
        self.locals.len()
    }

    /// This host's links among the samples, as observations. Loopback and other
    /// namespaces' traffic are not this host's network.
    pub(crate) fn observations(&self, samples: &[LinkSample]) -> Vec<Observation> {
        samples
            .iter()
            .filter(|s| self.locals.contains(&s.link.local) && !s.link.remote.is_loopback())
            .map(|s| Observation::from_sample(&self.name, s))
            .collect()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "faultline".to_owned())
}
