//! Real TCP traffic between namespaces, always bounded in time.
use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::Netns;

/// A server that accepts connections and discards what they send, until dropped.
pub struct Sink {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Listens on `addr` inside `ns`; returns once the socket is listening.
    pub fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop_flag = stop.clone();
        let thread = ns.run(move || {
            let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            let mut readers = Vec::new();
            while !stop_flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let stop = stop_flag.clone();
                        readers.push(std::thread::spawn(move || drain(stream, &stop)));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept on {addr}: {e}"),
                }
            }
            for r in readers {
                let _ = r.join();
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("sink did not start");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

fn drain(mut stream: TcpStream, stop: &AtomicBool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends as fast as TCP allows from `ns` to `to` for `duration`; returns bytes written.
/// Writes time out after 100 ms so a blackholed connection still stops on time.
pub fn bulk(ns: &Netns, to: SocketAddr, duration: Duration) -> JoinHandle<u64> {
    paced(ns, to, duration, u64::MAX)
}

/// Like [`bulk`], but at most `bytes_per_sec`. Two unpaced flows saturate this
/// machine's two cores, and the router's backlog then drops packets for real.
pub fn paced(
    ns: &Netns,
    to: SocketAddr,
    duration: Duration,
    bytes_per_sec: u64,
) -> JoinHandle<u64> {
    Flow::start(ns, to, duration, bytes_per_sec).thread
}

/// A flow that runs until stopped (or until its time limit, so it always ends): for
/// tests that watch the kernel until something happens, then stop the traffic.
pub struct Flow {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl Flow {
    /// Sends from `ns` to `to` at most `bytes_per_sec` (`u64::MAX`: as fast as TCP
    /// allows) until [`Flow::stop`] or `limit`.
    pub fn start(ns: &Netns, to: SocketAddr, limit: Duration, bytes_per_sec: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = ns.run(move || {
            let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("connect {to}: {e}"));
            send_paced(
                &mut stream,
                to,
                bytes_per_sec,
                Instant::now() + limit,
                &stop_flag,
            )
        });
        Self { stop, thread }
    }

    /// Stops the flow and returns the bytes it wrote.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("flow thread panicked")
    }
}

/// Writes to `stream` (connected to `to`) at most `bytes_per_sec` (`u64::MAX`: as fast
/// as TCP allows) until `stop` or `deadline`; returns the bytes written. Writes time out
/// after 100 ms so a blackholed connection still stops on time. A write error panics,
/// unless `stop` is set: then the other end may be closing on purpose.
fn send_paced(
    stream: &mut TcpStream,
    to: SocketAddr,
    bytes_per_sec: u64,
    deadline: Instant,
    stop: &AtomicBool,
) -> u64 {
    stream
        .set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let buf = vec![0x5au8; 64 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        let allowed =
            u64::try_from(u128::from(bytes_per_sec) * start.elapsed().as_micros() / 1_000_000)
                .unwrap_or(u64::MAX);
        if sent > allowed {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        match stream.write(&buf) {
            Ok(n) => sent += n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(e) => panic!("write to {to}: {e}"),
        }
    }
    sent
}

/// One connection with data flowing both ways: a client in one namespace and a server
/// in another each send at most `bytes_per_sec` and read what the other sends, until
/// stopped (or until the time limit, so it always ends).
pub struct Duplex {
    stop: Arc<AtomicBool>,
    client: JoinHandle<u64>,
    server: JoinHandle<u64>,
}

impl Duplex {
    /// Listens on `addr` in `server_ns`, connects to it from `client_ns`, and starts
    /// both sides talking; returns once the server listens.
    pub fn start(
        client_ns: &Netns,
        server_ns: &Netns,
        addr: SocketAddr,
        limit: Duration,
        bytes_per_sec: u64,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + limit;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop_flag = stop.clone();
        let server = server_ns.run(move || {
            let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            let (stream, peer) = loop {
                match listener.accept() {
                    Ok(accepted) => break accepted,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if stop_flag.load(Ordering::Relaxed) || Instant::now() >= deadline {
                            return 0;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept on {addr}: {e}"),
                }
            };
            talk(stream, peer, bytes_per_sec, deadline, &stop_flag)
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("duplex server did not start");
        let stop_flag = stop.clone();
        let client = client_ns.run(move || {
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            talk(stream, addr, bytes_per_sec, deadline, &stop_flag)
        });
        Self {
            stop,
            client,
            server,
        }
    }

    /// Stops both sides; returns the bytes (client, server) wrote.
    pub fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let client = self.client.join().expect("duplex client panicked");
        let server = self.server.join().expect("duplex server panicked");
        (client, server)
    }
}

/// Reads everything `stream` receives on a second thread while sending on this one.
fn talk(
    stream: TcpStream,
    peer: SocketAddr,
    bytes_per_sec: u64,
    deadline: Instant,
    stop: &Arc<AtomicBool>,
) -> u64 {
    let reading = stream.try_clone().expect("clone the duplex socket");
    let reader_stop = stop.clone();
    let reader = std::thread::spawn(move || drain(reading, &reader_stop));
    let mut stream = stream;
    let sent = send_paced(&mut stream, peer, bytes_per_sec, deadline, stop);
    // The reader stops with `stop`; at the deadline, stop it ourselves.
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    sent
}

/// One connect attempt from `ns` with a timeout; Ok if it connected.
pub fn connect(ns: &Netns, to: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    ns.run(move || TcpStream::connect_timeout(&to, timeout).map(drop))
        .join()
        .expect("connect thread panicked")
}
