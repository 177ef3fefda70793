//! TLS on the gRPC port, with the real agent (`faultline run`) and certificates the
//! test issues itself: observations only for clients with a certificate the CA
//! signed, verdicts for anyone who trusts the server, peers followed over mutual TLS,
//! a rotated certificate served without a restart, bad files refused.
use faultline_integration::TempDir;
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use faultline_integration::{
    agent::AgentProcess,
    pki::{Issued, TestCa},
    require_root,
};
use faultline_proto::v1::{
    SnapshotRequest, SubscribeRequest, observations_client::ObservationsClient,
    verdicts_client::VerdictsClient,
};
use tokio_rustls::rustls::{self, pki_types::CertificateDer};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// An agent config with `[tls]` and `peers`, written to `dir/NAME.toml`.
fn write_config(dir: &Path, name: &str, issued: &Issued, ca: &Path, peers: &[String]) -> PathBuf {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[agent]\nname = \"{name}\"\nlocal_addresses = [\"192.0.2.1\"]\npeers = [{}]\n\
             [listen]\ngrpc = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\nheartbeat = \"127.0.0.1:0\"\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            peers.join(", "),
            issued.cert.display(),
            issued.key.display(),
            ca.display()
        ),
    )
    .unwrap();
    path
}

fn start(config: &Path) -> AgentProcess {
    AgentProcess::start_binary(env!("CARGO_BIN_EXE_faultline"), config)
}

/// A channel to `grpc` trusting `ca`, presenting `identity` if given.
async fn channel(grpc: &str, ca: &str, identity: Option<&Issued>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("127.0.0.1");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&id.cert).unwrap(),
            std::fs::read(&id.key).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://{grpc}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Subscribes to observations and waits for the first batch.
async fn first_batch(channel: Channel) -> Result<(), tonic::Status> {
    let mut stream = ObservationsClient::new(channel)
        .subscribe(SubscribeRequest {
            subscriber: "test".into(),
        })
        .await?
        .into_inner();
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no batch in 5 s"))??;
    Ok(())
}

#[test]
fn observations_need_a_client_certificate_verdicts_do_not() {
    require_root();
    let dir = TempDir::new("tls-auth");
    let ca = TestCa::new("fleet CA");
    let ca_path = ca.write(&dir, "ca");
    let server = ca.issue(&dir, "server", &["127.0.0.1"]);
    let client = ca.issue(&dir, "client", &["peer-1.example"]);
    let stranger = TestCa::new("someone else's CA").issue(&dir, "stranger", &["127.0.0.1"]);
    let agent = start(&write_config(&dir, "tls-a", &server, &ca_path, &[]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // No client certificate: verdicts yes, observations no.
        let anonymous = channel(&agent.grpc, &ca.pem(), None).await.unwrap();
        VerdictsClient::new(anonymous.clone())
            .snapshot(SnapshotRequest::default())
            .await
            .expect("verdicts need no client certificate");
        let refused = first_batch(anonymous).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

        // A certificate the CA signed: observations flow.
        let agent_client = channel(&agent.grpc, &ca.pem(), Some(&client))
            .await
            .unwrap();
        first_batch(agent_client)
            .await
            .expect("an agent's certificate may subscribe");

        // A certificate another CA signed is refused in the handshake.
        let outcome = match channel(&agent.grpc, &ca.pem(), Some(&stranger)).await {
            Err(e) => Err(e),
            Ok(ch) => first_batch(ch).await.map_err(|s| s.to_string()),
        };
        assert!(outcome.is_err(), "a stranger's certificate subscribed");

        // Cleartext gets nowhere.
        let plain = Endpoint::from_shared(format!("http://{}", agent.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        assert!(
            VerdictsClient::new(plain)
                .snapshot(SnapshotRequest::default())
                .await
                .is_err(),
            "cleartext answered on a TLS port"
        );
    });
    // `faultline watch` over TLS: with the CA it follows; without it, it says why.
    let watch = |ca: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_faultline"));
        cmd.args([
            "watch",
            "--json",
            "--endpoint",
            &format!("https://{}", agent.grpc),
        ]);
        if let Some(ca) = ca {
            cmd.arg("--tls-ca").arg(ca);
        }
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut with_ca = watch(Some(&ca_path));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        with_ca.try_wait().unwrap().is_none(),
        "watch with the CA keeps following"
    );
    with_ca.kill().unwrap();
    let out = with_ca.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !said.contains("retrying") && !said.contains("reconnecting"),
        "{said}"
    );
    let out = watch(None).wait_with_output().unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("https needs the CA"), "{said}");
    assert!(
        agent
            .metric("faultline_observations_unauthenticated_total")
            .unwrap()
            >= 1.0
    );
    assert!(
        agent
            .metric("faultline_tls_handshakes_failed_total")
            .unwrap()
            >= 1.0
    );
    assert!(agent.terminate().success());
}

/// The leaf certificate the server at `grpc` presents to a new connection.
async fn served_certificate(grpc: &str, ca: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(grpc).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

fn der_of(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[test]
fn a_rotated_certificate_is_served_without_a_restart_and_a_bad_one_refused() {
    require_root();
    let dir = TempDir::new("tls-rotate");
    let ca = TestCa::new("fleet CA");
    let ca_path = ca.write(&dir, "ca");
    let server = ca.issue(&dir, "server", &["127.0.0.1"]);
    let first = der_of(&std::fs::read_to_string(&server.cert).unwrap());
    let agent = start(&write_config(&dir, "tls-r", &server, &ca_path, &[]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        rt.block_on(served_certificate(&agent.grpc, &ca.pem())),
        first
    );

    // Rotation, as cert-manager or an ACME client does it: both files replaced.
    let (cert, key) = ca.issue_pem(&["127.0.0.1"]);
    std::fs::write(&server.key, key).unwrap();
    std::fs::write(&server.cert, &cert).unwrap();
    let second = der_of(&cert);
    let deadline = Instant::now() + Duration::from_secs(15);
    while rt.block_on(served_certificate(&agent.grpc, &ca.pem())) != second {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(agent.metric("faultline_tls_reloads_total").unwrap() >= 1.0);

    // A broken file is refused; the agent keeps serving the certificate it has.
    std::fs::write(&server.cert, "not a certificate").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent.metric("faultline_tls_reloads_refused_total").unwrap() < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the broken file was never noticed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        rt.block_on(served_certificate(&agent.grpc, &ca.pem())),
        second
    );
    assert!(agent.terminate().success());
}

#[test]
fn agents_follow_each_other_over_mutual_tls_and_strangers_do_not() {
    require_root();
    let dir = TempDir::new("tls-peers");
    let ca = TestCa::new("fleet CA");
    let ca_path = ca.write(&dir, "ca");
    let a = start(&write_config(
        &dir,
        "tls-pa",
        &ca.issue(&dir, "a", &["127.0.0.1"]),
        &ca_path,
        &[],
    ));
    let peer = format!("https://{}", a.grpc);
    let b = start(&write_config(
        &dir,
        "tls-pb",
        &ca.issue(&dir, "b", &["b.example"]),
        &ca_path,
        std::slice::from_ref(&peer),
    ));
    // A stranger: its own CA, which A does not trust (nor does it trust A's).
    let other = TestCa::new("someone else's CA");
    let other_ca = other.write(&dir, "other-ca");
    let stranger = start(&write_config(
        &dir,
        "tls-ps",
        &other.issue(&dir, "s", &["127.0.0.1"]),
        &other_ca,
        &[peer],
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.metric("faultline_peer_batches_total").unwrap() < 5.0 {
        assert!(Instant::now() < deadline, "B never followed A over TLS");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        stranger.metric("faultline_peer_batches_total").unwrap(),
        0.0,
        "a stranger followed A"
    );
    assert!(a.metric("faultline_tls_handshakes_failed_total").unwrap() >= 1.0);
    for agent in [stranger, b, a] {
        assert!(agent.terminate().success());
    }
}

/// `faultline run` with this config: refused before anything is bound, with stderr.
fn refused(config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["run", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with {}", config.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unusable_tls_files_are_refused_naming_file_line_and_key() {
    let dir = TempDir::new("tls-refuse");
    let ca = TestCa::new("fleet CA");
    let ca_path = ca.write(&dir, "ca");
    let good = ca.issue(&dir, "good", &["127.0.0.1"]);
    let other = ca.issue(&dir, "other", &["127.0.0.1"]);

    let missing = Issued {
        cert: dir.join("nowhere.crt"),
        key: good.key.clone(),
    };
    let config = write_config(&dir, "missing", &missing, &ca_path, &[]);
    let err = refused(&config);
    assert!(
        err.contains(&format!(
            "{}:10: tls.cert: {}",
            config.display(),
            missing.cert.display()
        )),
        "{err}"
    );

    let mismatched = Issued {
        cert: good.cert.clone(),
        key: other.key.clone(),
    };
    let config = write_config(&dir, "mismatch", &mismatched, &ca_path, &[]);
    let err = refused(&config);
    assert!(
        err.contains(&format!("{}:11: tls.key: ", config.display()))
            && err.contains("does not fit"),
        "{err}"
    );

    let config = write_config(&dir, "no-ca", &good, &good.key, &[]);
    let err = refused(&config);
    assert!(
        err.contains(&format!("{}:12: tls.ca: ", config.display())),
        "{err}"
    );
}
