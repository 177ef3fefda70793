//! A data center on one machine, for privileged integration tests.
//!
//! Network namespaces stand in for hosts and routers, veth pairs for cables, nft rules in
//! a router's forward chain for a faulty switch. Every namespace is owned by a guard that
//! deletes it on drop (which also removes its veths and nft tables), so a failing test
//! leaves nothing behind. Traffic helpers run in a thread that has entered the
//! namespace, and every loop is bounded in time.
pub mod agent;
pub mod feed;
pub mod netns;
pub mod pki;
pub mod tempdir;
pub mod traffic;

pub use netns::{Lab, Netns, require_root};
pub use tempdir::TempDir;
