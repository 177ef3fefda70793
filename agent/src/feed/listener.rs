//! The gRPC port's accept loop: a bounded number of connections, TLS when
//! configured, and what the services need to know about each connection (whether
//! its client presented a certificate the fleet's CA signed).
//!
//! Handshakes run in their own tasks, bounded in time, so a client that opens a
//! connection and says nothing holds one slot for [`HANDSHAKE_TIMEOUT`] and never
//! stalls the accept loop. A connection past the limit is closed at once.
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::tls::ServerTls;

/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of the gRPC listener and its streams, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct ServerCounters {
    pub(crate) connections_refused: AtomicU64,
    pub(crate) handshakes_failed: AtomicU64,
    pub(crate) streams_refused: AtomicU64,
    pub(crate) observations_unauthenticated: AtomicU64,
    pub(crate) tls_reloads: AtomicU64,
    pub(crate) tls_reloads_refused: AtomicU64,
    /// Streams open now, by [`StreamKind`].
    pub(crate) open_streams: [AtomicU64; 3],
    /// From a verdict's publication to its change queued towards each live Watch
    /// subscriber.
    pub(crate) verdict_to_subscriber: crate::metrics::latency::Latency,
}

/// What a stream serves, for the subscriber counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StreamKind {
    Verdicts = 0,
    Health = 1,
    Observations = 2,
}

impl StreamKind {
    pub(crate) const ALL: [Self; 3] = [Self::Verdicts, Self::Health, Self::Observations];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Verdicts => "faultline.v1.Verdicts",
            Self::Health => "grpc.health.v1.Health",
            Self::Observations => "faultline.v1.Observations",
        }
    }
}

/// A stream's slot: held by its task, counted while it lives.
pub(crate) struct StreamSlot {
    _permit: OwnedSemaphorePermit,
    counters: Arc<ServerCounters>,
    kind: StreamKind,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.counters.open_streams[self.kind as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the services learn about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnInfo {
    pub(crate) remote: Option<SocketAddr>,
    /// The client presented a certificate the CA signed (rustls verified it).
    pub(crate) client_certified: bool,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection; its slot is freed when it closes.
pub(crate) struct Conn {
    io: Io,
    info: ConnInfo,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts on `listener` until the returned stream is dropped: at most
/// `max_connections` open at once, each through TLS when `tls` is set.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Option<ServerTls>,
    max_connections: usize,
    counters: Arc<ServerCounters>,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, mostly: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                counters.connections_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%remote, "connection refused: at the listen.max_connections limit");
                continue;
            };
            // TCP_NODELAY: a change is a small write; Nagle would hold it back until
            // the client's delayed ACK (40 ms) releases it.
            let _ = stream.set_nodelay(true);
            let plain = ConnInfo {
                remote: Some(remote),
                client_certified: false,
            };
            match &tls {
                None => {
                    let conn = Conn {
                        io: Io::Plain(stream),
                        info: plain,
                        _slot: slot,
                    };
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let (acceptor, tx, counters) = (tls.acceptor(), tx.clone(), counters.clone());
                    tokio::spawn(async move {
                        let handshake =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                        let stream = match handshake {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                counters.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                counters.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(%remote, "TLS handshake timed out");
                                return;
                            }
                        };
                        let client_certified = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .is_some_and(|c| !c.is_empty());
                        let conn = Conn {
                            io: Io::Tls(Box::new(stream)),
                            info: ConnInfo {
                                client_certified,
                                ..plain
                            },
                            _slot: slot,
                        };
                        let _ = tx.send(Ok(conn)).await;
                    });
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// The connection a request came on (None outside this listener, e.g. in-process).
pub(crate) fn conn_info<T>(request: &tonic::Request<T>) -> Option<ConnInfo> {
    request.extensions().get::<ConnInfo>().copied()
}

/// The streams (Watch, Subscribe) open at once, across every connection: each holds
/// a task and a queue, so they are bounded like connections.
#[derive(Clone)]
pub(crate) struct StreamSlots {
    slots: Arc<Semaphore>,
    max: usize,
    counters: Arc<ServerCounters>,
}

impl StreamSlots {
    pub(crate) fn new(max: usize, counters: Arc<ServerCounters>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            counters,
        }
    }

    /// A slot for one stream, held until its task ends; RESOURCE_EXHAUSTED at the limit.
    pub(crate) fn take(&self, kind: StreamKind) -> Result<StreamSlot, tonic::Status> {
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| {
            self.counters
                .streams_refused
                .fetch_add(1, Ordering::Relaxed);
            tonic::Status::resource_exhausted(format!(
                "this agent serves at most {} streams at once (listen.max_streams)",
                self.max
            ))
        })?;
        self.counters.open_streams[kind as usize].fetch_add(1, Ordering::Relaxed);
        Ok(StreamSlot {
            _permit: permit,
            counters: self.counters.clone(),
            kind,
        })
    }

    pub(crate) fn counters(&self) -> Arc<ServerCounters> {
        self.counters.clone()
    }

    /// A client without a certificate asked for observations.
    pub(crate) fn count_unauthenticated(&self) {
        self.counters
            .observations_unauthenticated
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Streams open now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}
