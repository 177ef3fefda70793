//! Generates the faultline.v1 messages and services into OUT_DIR, plus a descriptor
//! set for gRPC reflection; and a client of the few gobgpd API calls `faultline
//! announce` makes. Uses the `protoc` that comes with the protoc-bin-vendored crate, or
//! the one PROTOC names: `cargo xtask` itself needs these types, so its build cannot
//! wait for `cargo xtask setup` to install a protoc on a fresh machine.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-env-changed=PROTOC");
    if env::var_os("PROTOC").is_none_or(|p| p.is_empty()) {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: a build script is one thread; nothing else reads the environment
        // while it is set.
        unsafe { env::set_var("PROTOC", protoc) };
    }
    let protos = [
        "faultline/v1/verdicts.proto",
        "faultline/v1/observations.proto",
        "grpc/health/v1/health.proto",
    ];
    // gobgpd's API (client only, for `faultline announce`): kept out of the descriptor
    // set the agent serves for reflection.
    let gobgp = "gobgp/apipb.proto";
    println!("cargo:rerun-if-changed={gobgp}");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&[gobgp], &["."])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
