//! The whole agent (`faultline run`) as a child process, for tests that drive it from
//! outside: verdicts read from its structured log, killed on drop even when the test
//! fails.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// A running `faultline run`.
pub struct AgentProcess {
    child: Child,
    verdicts: mpsc::Receiver<(Instant, serde_json::Value)>,
    /// The gRPC address it serves on (from its start-up line).
    pub grpc: String,
    /// Its `/metrics` address.
    pub metrics: String,
}

impl AgentProcess {
    /// Starts `binary` (the test's `env!("CARGO_BIN_EXE_faultline")`) with `config`
    /// and waits until its probe is attached.
    pub fn start_binary(binary: &str, config: &Path) -> Self {
        let mut child = Command::new(binary)
            .args(["--log-json", "run", "--config"])
            .arg(config)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start faultline run");
        let stderr = child.stderr.take().unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (tx, verdicts) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                    eprintln!("agent: {line}");
                    continue;
                };
                let message = json["fields"]["message"].as_str().unwrap_or_default();
                if message == "probe attached, watching TCP links" {
                    let field = |k: &str| json["fields"][k].as_str().unwrap_or_default().to_owned();
                    let _ = ready_tx.send((field("grpc"), field("metrics")));
                } else if message == "verdict" {
                    let _ = tx.send((Instant::now(), json["fields"].clone()));
                } else {
                    eprintln!("agent: {line}");
                }
            }
        });
        let (grpc, metrics) = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("agent attached");
        Self {
            child,
            verdicts,
            grpc,
            metrics,
        }
    }

    /// Waits for a verdict matching `pred`, collecting every verdict seen meanwhile.
    pub fn wait_for(
        &self,
        seen: &mut Vec<serde_json::Value>,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok((at, v)) = self.verdicts.recv_timeout(left) else {
                break;
            };
            let hit = pred(&v);
            seen.push(v);
            if hit {
                return Some(at);
            }
        }
        None
    }

    /// The value of one metric in its `/metrics` (None: not exported).
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics_text()?
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Its whole `/metrics` body.
    pub fn metrics_text(&self) -> Option<String> {
        use std::io::{Read as _, Write as _};
        let mut conn = std::net::TcpStream::connect(&self.metrics).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        conn.read_to_string(&mut response).ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        Some(body.to_owned())
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill with a valid pid of our own child.
        unsafe { libc::kill(i32::try_from(self.child.id()).unwrap(), signal) };
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill with a valid pid of our own child.
        unsafe { libc::kill(i32::try_from(self.child.id()).unwrap(), libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
