//! Faultline's pure core: the topology, the link observations the kernel probe and the
//! peers produce, and the verdict engine that turns them into verdicts. No I/O happens
//! here — observations and a clock in, verdict changes out — so everything is tested
//! with simulated time and fuzzed without a kernel.
pub mod capped_read;
pub mod detector;
pub mod duration;
pub mod link;
pub mod topology;
