//! TLS for the gRPC port and towards peers (rustls with ring).
//!
//! One certificate per agent, signed by the fleet's CA: served on `listen.grpc`, and
//! presented as a client certificate when following peers. The CA verifies both
//! directions: a peer's server certificate must be valid for the address (or name)
//! this agent follows it at, and only clients with a certificate it signed may
//! subscribe to `Observations`. `Verdicts` and health accept clients without one.
//!
//! The files are read and checked before anything is bound. The server re-reads them
//! when they change (checked every [`RELOAD_CHECK`]) or on SIGHUP, so a rotated
//! certificate is served without a restart; a bad new file is refused and the
//! current certificate kept. Peer followers read them at each connect.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use serde::Deserialize;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
};

/// How often the server checks whether its files changed.
pub(crate) const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// The largest certificate or key file read: a chain is a few KiB.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// `[tls]` in the agent's config.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// This agent's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificate(s) (PEM) that sign the fleet's agents.
    pub ca: PathBuf,
}

/// Why the TLS files cannot be used: the `tls.*` key whose file is at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsProblem {
    pub(crate) key: &'static str,
    pub(crate) reason: String,
}

impl TlsProblem {
    fn of(key: &'static str, path: &Path, reason: impl std::fmt::Display) -> Self {
        Self {
            key,
            reason: format!("{}: {reason}", path.display()),
        }
    }
}

/// The three files, read and parsed.
struct Material {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: RootCertStore,
    pem: Pem,
}

/// The files as read, for tonic's client config.
#[derive(Clone)]
struct Pem {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsProblem> {
    let text = faultline_core::capped_read::read_to_string(path, MAX_PEM_BYTES)
        .map_err(|e| TlsProblem::of(key, path, e))?;
    Ok(text.into_bytes())
}

impl Material {
    fn read(cfg: &TlsConfig) -> Result<Self, TlsProblem> {
        let pem = Pem {
            cert: read_pem("tls.cert", &cfg.cert)?,
            key: read_pem("tls.key", &cfg.key)?,
            ca: read_pem("tls.ca", &cfg.ca)?,
        };
        let certs = |key, path: &Path, bytes: &[u8]| {
            let certs = CertificateDer::pem_slice_iter(bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsProblem::of(key, path, format!("not PEM certificates: {e}")))?;
            if certs.is_empty() {
                return Err(TlsProblem::of(key, path, "no certificate in the file"));
            }
            Ok(certs)
        };
        let chain = certs("tls.cert", &cfg.cert, &pem.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&pem.key)
            .map_err(|e| TlsProblem::of("tls.key", &cfg.key, format!("no private key: {e}")))?;
        let mut roots = RootCertStore::empty();
        for ca in certs("tls.ca", &cfg.ca, &pem.ca)? {
            roots.add(ca).map_err(|e| {
                TlsProblem::of("tls.ca", &cfg.ca, format!("not a CA certificate: {e}"))
            })?;
        }
        Ok(Self {
            chain,
            key,
            roots,
            pem,
        })
    }

    /// The server side: this certificate, client certificates optional but verified
    /// against the CA when presented.
    fn server_config(self, cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsProblem> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsProblem::of("tls.ca", &cfg.ca, e))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsProblem::of("tls.cert", &cfg.cert, e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain, self.key)
            .map_err(|e| {
                TlsProblem::of(
                    "tls.key",
                    &cfg.key,
                    format!(
                        "does not fit the certificate in {}: {e}",
                        cfg.cert.display()
                    ),
                )
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// What identifies a version of the files: their modification times and sizes.
type Stamp = [Option<(SystemTime, u64)>; 3];

fn stamp(cfg: &TlsConfig) -> Stamp {
    [&cfg.cert, &cfg.key, &cfg.ca].map(|p| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    })
}

/// Checks the files as `faultline check` and start-up do: readable, parsed, the key
/// fitting the certificate.
pub(crate) fn check(cfg: &TlsConfig) -> Result<(), TlsProblem> {
    Material::read(cfg)?.server_config(cfg).map(drop)
}

/// The server's TLS: the current rustls config, replaced when the files change.
#[derive(Clone)]
pub(crate) struct ServerTls {
    files: TlsConfig,
    current: Arc<RwLock<(Arc<ServerConfig>, Stamp)>>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reload {
    Unchanged,
    Reloaded,
    /// The new files were refused; the current certificate stays.
    Refused(TlsProblem),
}

impl ServerTls {
    pub(crate) fn load(files: &TlsConfig) -> Result<Self, TlsProblem> {
        let stamp = stamp(files);
        let config = Material::read(files)?.server_config(files)?;
        Ok(Self {
            files: files.clone(),
            current: Arc::new(RwLock::new((config, stamp))),
        })
    }

    /// An acceptor with the current certificate.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        TlsAcceptor::from(current.0.clone())
    }

    /// Re-reads the files if they changed since the last read (or `force`).
    pub(crate) fn reload(&self, force: bool) -> Reload {
        let now = stamp(&self.files);
        {
            let current = self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !force && current.1 == now {
                return Reload::Unchanged;
            }
        }
        let loaded = Material::read(&self.files).and_then(|m| m.server_config(&self.files));
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Refused files are not retried until they change again.
        current.1 = now;
        match loaded {
            Ok(config) => {
                current.0 = config;
                Reload::Reloaded
            }
            Err(problem) => Reload::Refused(problem),
        }
    }
}

/// tonic's client config for following the peer at `host` (an address or a name,
/// without brackets): this agent's certificate, the fleet's CA, and the name its
/// certificate must carry. Read at each connect, so a rotated certificate is used
/// from the next connection on.
pub(crate) fn client_config(
    files: &TlsConfig,
    host: &str,
) -> Result<tonic::transport::ClientTlsConfig, TlsProblem> {
    let Material { pem, .. } = Material::read(files)?;
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pem.ca))
        .identity(tonic::transport::Identity::from_pem(pem.cert, pem.key))
        .domain_name(host))
}

/// tonic's client config for a verdict client (`faultline watch`, `faultline
/// announce`) of the agent at `endpoint`: trusting the CA in `ca`. Verdicts need no
/// client certificate.
pub(crate) fn trusting(
    ca: &Path,
    endpoint: &str,
) -> Result<tonic::transport::ClientTlsConfig, String> {
    let pem = read_pem("tls.ca", ca).map_err(|p| p.reason)?;
    let parsed = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", ca.display()))?;
    if parsed.is_empty() {
        return Err(format!("{}: no certificate in the file", ca.display()));
    }
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
        .domain_name(crate::feed::peer_identity::endpoint_host(endpoint)))
}

/// An endpoint to `endpoint`, over TLS trusting `ca` when it is `https://`.
pub(crate) fn endpoint_trusting(
    endpoint: &str,
    ca: Option<&Path>,
) -> Result<tonic::transport::Endpoint, String> {
    let mut e = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| format!("endpoint `{endpoint}`: {e}"))?;
    if endpoint.starts_with("https://") {
        let ca = ca.ok_or_else(|| {
            format!("endpoint `{endpoint}`: https needs the CA that signed the agent's certificate")
        })?;
        e = e
            .tls_config(trusting(ca, endpoint)?)
            .map_err(|e| format!("endpoint `{endpoint}`: {e}"))?;
    }
    Ok(e)
}
