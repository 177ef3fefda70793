//! Feeds arbitrary bytes to `faultline::fuzzing::grpc_requests`, which decodes them as
//! each request message of the agent's gRPC services (faultline.v1 `Verdicts` and
//! `Observations`, grpc.health.v1 `Health`) and runs the services' own validation of
//! it (filters, resume points, service names).
//!
//! A request comes from any client on the network: whatever it decodes to, it must be
//! answered or refused with a status, never panic. The checks live in the library
//! function, next to the services; this target only hands it the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| faultline::fuzzing::grpc_requests(data));
