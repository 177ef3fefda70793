//! Feeds arbitrary bytes to `faultline::fuzzing::peer_batches`, which reads them as a
//! sequence of length-delimited `faultline.v1.ObservationBatch` messages and drives
//! each through the agent's own peer path (the code that handles a subscribed peer's
//! batches) into the detector.
//!
//! What a peer agent sends is not trusted: a malformed, truncated or absurd batch
//! (addresses that are not addresses, counters at u64::MAX, sequences that go back)
//! must be refused or absorbed, never panic. The checks live in the library function,
//! next to the code they exercise; this target only hands it the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| faultline::fuzzing::peer_batches(data));
