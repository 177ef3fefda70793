//! Faultline agent library: everything the `faultline` binary does, so integration
//! tests and benchmarks drive the same code the daemon runs. Modules are private; what
//! the binary, the tests and the benches use is re-exported here, and nothing else.
mod announce;
mod check;
mod config;
mod feed;
#[doc(hidden)]
pub mod fuzzing;
mod links_report;
mod metrics;
mod mounts;
mod netif;
mod peers;
mod probe;
mod run;
mod status;
mod tls;
mod watch;

// The pure core: topology, link types and the verdict engine.
pub use faultline_core::{detector, link, topology};

/// `faultline check`: the preflight.
pub mod preflight {
    pub use crate::check::{passed, render, run_with_config, topology_summary};
}

/// `faultline links`: one observation window, tabulated.
pub mod links {
    pub use crate::links_report::{render_table, rows};
}

/// `peers = "auto"` and `faultline topology peers`: the peers chosen for a host.
pub mod peer_choice {
    pub use crate::{
        config::DEFAULT_PEER_PORT,
        peers::{ChosenPeer, HostNotFound, choose, find_host},
    };
}

pub use announce::{
    AnnounceConfig, AnnounceConfigError, FeedAgent, GobgpTarget, Prefix, Served, run as announce,
};
pub use config::{Config, ConfigError, Peers};
pub use feed::{Feed, FeedLimits};
pub use probe::{Probe, ProbeError, ProbeOptions, UrgentEvents, UrgentRecord};
pub use run::{Agent, ReloadFrom, RunError, observe_links, run, run_reloading};
pub use status::{Status, StatusOptions, status};
pub use tls::TlsConfig;
pub use watch::{WatchOptions, watch};
