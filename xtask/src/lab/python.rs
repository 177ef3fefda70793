//! An independent subscriber: the project's own Python grpcio health client
//! (`tests/python/health_client.py --watch …`, stock grpcio, none of our code), beside
//! the tonic ones, at one agent in every site.
//!
//! One Python process for the whole lab, one thread per Watch stream. A process lives
//! in one network namespace, and grpcio makes its sockets on its own threads, so it
//! cannot enter the hosts' namespaces itself: it talks to `unix:` sockets in the run
//! directory instead, and a small relay here ([`Relay`]) joins each one to its agent
//! from inside that host's namespace, byte for byte. The script prints one JSON line per
//! status with its own CLOCK_MONOTONIC time; a reader thread maps that clock onto
//! [`Instant`] (the same clock) and logs the statuses next to the tonic subscribers'.
use std::{
    io::{BufRead as _, BufReader},
    net::{Shutdown, SocketAddr, TcpStream},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{JoinHandle, sleep},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use faultline_proto::health::health_check_response::ServingStatus;

use super::{subscribe::StatusLog, traffic::enter};
use crate::{bench::die_with_parent, workspace_root};

/// Connections one relay carries at once (grpcio keeps one per channel).
const MAX_RELAYED: usize = 8;
/// The script exits on its own after this long.
const MAX_LIFETIME: Duration = Duration::from_secs(4 * 3600);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The Python subscriber process and its relays; stopped on drop.
pub(super) struct PythonSubscriber {
    child: Child,
    relays: Vec<Relay>,
    reader: Option<JoinHandle<()>>,
}

impl PythonSubscriber {
    /// `hosts`: (label, namespace, agent address) per subscriber; their statuses go to
    /// `log` as subscribers `first_index + i`.
    pub(super) fn start(
        hosts: &[(String, String, SocketAddr)],
        services: &[String],
        run_dir: &Path,
        log: Arc<StatusLog>,
        first_index: usize,
    ) -> Result<Self> {
        let python = workspace_root().join(".venv/bin/python");
        if !python.exists() {
            bail!(
                "{} is missing: `cargo xtask setup` makes it",
                python.display()
            );
        }
        let mut relays = Vec::new();
        let mut cmd = Command::new(&python);
        cmd.arg("-u")
            .arg(workspace_root().join("tests/python/health_client.py"))
            .arg("--watch-seconds")
            .arg(MAX_LIFETIME.as_secs().to_string());
        for (label, ns, addr) in hosts {
            let socket = run_dir.join(format!("grpc-{label}.sock"));
            relays.push(Relay::start(&socket, ns, *addr)?);
            cmd.arg("--watch-target")
                .arg(format!("{label}=unix:{}", socket.display()));
        }
        let list = run_dir.join("python-services.txt");
        std::fs::write(&list, services.join("\n") + "\n")
            .with_context(|| format!("write {}", list.display()))?;
        cmd.arg("--watch-services-file").arg(&list);
        let log_path = run_dir.join("python-subscriber.log");
        let err = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        cmd.env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err);
        let mut child = die_with_parent(&mut cmd)
            .spawn()
            .with_context(|| format!("start {}", python.display()))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let labels: Vec<String> = hosts.iter().map(|(l, _, _)| l.clone()).collect();
        let services = services.to_vec();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some((at, target, service, status)) = parse(&line) {
                    let (Some(sub), Some(svc)) = (
                        labels.iter().position(|l| *l == target),
                        services.iter().position(|s| *s == service),
                    ) else {
                        continue;
                    };
                    log.push_at(at, first_index + sub, svc, status);
                }
            }
        });
        Ok(Self {
            child,
            relays,
            reader: Some(reader),
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PythonSubscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.relays.clear();
    }
}

/// One JSON line: `{"mono": S, "target": L, "service": N, "status": "SERVING"}`.
fn parse(line: &str) -> Option<(Instant, String, String, ServingStatus)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let mono = v.get("mono")?.as_f64()?;
    let status = ServingStatus::from_str_name(v.get("status")?.as_str()?)?;
    let now = monotonic_secs();
    let ago = Duration::try_from_secs_f64((now - mono).max(0.0)).ok()?;
    Some((
        Instant::now().checked_sub(ago)?,
        v.get("target")?.as_str()?.to_owned(),
        v.get("service")?.as_str()?.to_owned(),
        status,
    ))
}

/// CLOCK_MONOTONIC in seconds: Python's `time.monotonic()` and Rust's `Instant`.
fn monotonic_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    Duration::new(secs, nanos).as_secs_f64()
}

/// A `unix:` socket whose connections are carried to `agent` from inside namespace
/// `ns`; stops accepting and removes the socket on drop.
struct Relay {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(path: &Path, ns: &str, agent: SocketAddr) -> Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener =
            UnixListener::bind(path).with_context(|| format!("listen on {}", path.display()))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, stop2) = (ns.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Connections are made here, inside the host's namespace (the listener is a
            // path, reachable from any namespace).
            if enter(&ns).is_err() {
                return;
            }
            let open = Arc::new(AtomicUsize::new(0));
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) if open.load(Ordering::Relaxed) < MAX_RELAYED => {
                        let Ok(agent) = TcpStream::connect_timeout(&agent, CONNECT_TIMEOUT) else {
                            continue;
                        };
                        let _ = agent.set_nodelay(true);
                        open.fetch_add(1, Ordering::Relaxed);
                        let open = open.clone();
                        std::thread::spawn(move || {
                            carry(client, agent);
                            open.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Ok(_) => {}
                    Err(_) => sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Copies both ways until either side closes (blocking; ends when the Python process
/// or the agent goes away).
fn carry(client: UnixStream, agent: TcpStream) {
    let (Ok(mut client_r), Ok(mut agent_w)) = (client.try_clone(), agent.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_r, &mut agent_w);
        let _ = agent_w.shutdown(Shutdown::Write);
    });
    let (mut agent_r, mut client_w) = (agent, client);
    let _ = std::io::copy(&mut agent_r, &mut client_w);
    let _ = client_w.shutdown(Shutdown::Both);
    let _ = up.join();
}
