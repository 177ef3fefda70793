//! Faultline agent library: everything the `faultline` binary does, so integration
//! tests and benchmarks drive the same code the daemon runs.
pub mod check;
pub mod config;
pub mod feed;
pub mod links_report;
pub mod metrics;
pub mod mounts;
pub mod netif;
pub mod probe;
pub mod run;
pub mod watch;

// The pure core, under the names the rest of the agent has always used.
pub use faultline_core::{detector, topology};
