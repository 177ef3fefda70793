//! Faultline agent library: everything the `faultline` binary does, so integration
//! tests and benchmarks drive the same code the daemon runs.
pub mod check;
pub mod config;
pub mod detector;
pub mod feed;
pub mod links_report;
pub mod metrics;
pub mod netif;
pub mod probe;
pub mod run;
pub mod topology;
pub mod watch;
