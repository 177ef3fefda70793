//! grpc.health.v1 and reflection as an independent client sees them: Python grpcio,
//! grpcio-health-checking and grpcio-reflection (tests/python/health_client.py) against
//! the feed served in-process on 127.0.0.1:0.
//!
//! Needs the venv that `cargo xtask setup` makes (`.venv` in the workspace root); the
//! test fails without it.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use faultline::{
    FeedLimits,
    detector::{State, Verdict},
    topology::Level,
};
use faultline_integration::feed::FeedServer;
use tokio::sync::mpsc;

const TOPOLOGY: &str = "[[site]]\nname = \"dc-a\"\n[[cabinet]]\nname = \"c1\"\nsite = \"dc-a\"\n\
    [[rack]]\nname = \"r1\"\ncabinet = \"dc-a/c1\"\n[[rack]]\nname = \"r2\"\ncabinet = \"dc-a/c1\"\n";

/// Bounds every wait on the script: start-up and its first lines, the change, the end.
const WAIT: Duration = Duration::from_secs(30);

fn rack(n: u32, state: State) -> Verdict {
    Verdict::scripted(Level::Rack, &format!("dc-a/c1/r{n}"), state)
}

/// The script's process, killed (and reaped) if the test ends before it does.
struct Script {
    child: Child,
    /// Its stdout, line by line, until it closes.
    lines: mpsc::UnboundedReceiver<String>,
    /// Its stderr, whole, once it closes.
    stderr: std::sync::mpsc::Receiver<String>,
    /// Every stdout line so far, for messages.
    stdout: Vec<String>,
}

impl Script {
    fn spawn(python: &Path, script: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(python)
            .arg("-u")
            .arg(script)
            .args(args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", python.display()));
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (line_tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, err_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            let _ = err_tx.send(text);
        });
        Self {
            child,
            lines,
            stderr: err_rx,
            stdout: Vec::new(),
        }
    }

    /// The next stdout line; None once stdout closed. Panics after `timeout`.
    async fn line(&mut self, timeout: Duration, waiting_for: &str) -> Option<String> {
        match tokio::time::timeout(timeout, self.lines.recv()).await {
            Ok(line) => {
                if let Some(l) = &line {
                    self.stdout.push(l.clone());
                }
                line
            }
            Err(_) => self.fail(&format!("no {waiting_for} within {timeout:?}")),
        }
    }

    /// Waits (bounded) for the exit, after stdout closed.
    async fn exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > timeout {
                self.fail(&format!(
                    "still running {timeout:?} after its stdout closed"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the script, then panics with everything it printed.
    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("health_client.py: {what}\n{}", self.output());
    }

    fn output(&self) -> String {
        let stderr = self
            .stderr
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| "(stderr not closed)".to_owned());
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.join("\n"),
            stderr.trim_end()
        )
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ lives inside the workspace")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_health_and_reflection_clients_agree_with_the_spec() {
    let root = workspace_root();
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup` to create .venv with grpcio",
        python.display()
    );
    let script = root.join("tests/python/health_client.py");

    let server = FeedServer::start(TOPOLOGY, FeedLimits::default()).await;
    let target = server.addr.to_string();
    server
        .feed
        .publish(&[rack(2, State::Healthy), rack(1, State::Healthy)]);

    let mut client = Script::spawn(
        &python,
        &script,
        &[
            "--target",
            &target,
            "--failed",
            "rack/dc-a/c1/r1",
            "--serving",
            "rack/dc-a/c1/r2",
            "--serving",
            "cabinet/dc-a/c1",
            "--serving",
            "site/dc-a",
            "--unknown",
            "rack/dc-a/c1/r9",
        ],
    );
    // The script prints "watching" once its Watch of r1 has reported SERVING: only
    // then does r1 fail, so the change cannot fall before the watch.
    // Each line is awaited with a deadline, and so is the whole wait: a script that
    // keeps printing other lines fails too.
    let watching = tokio::time::timeout(WAIT, async {
        loop {
            match client.line(WAIT, "\"watching\" line").await.as_deref() {
                Some("watching") => return true,
                Some(_) => {}
                None => return false,
            }
        }
    })
    .await;
    match watching {
        Ok(true) => {}
        Ok(false) => client.fail("ended before \"watching\""),
        Err(_) => client.fail(&format!("no \"watching\" line within {WAIT:?}")),
    }
    server.feed.publish(&[rack(1, State::Failed)]);

    let ended = tokio::time::timeout(WAIT, async {
        while client.line(WAIT, "end of output").await.is_some() {}
    })
    .await;
    if ended.is_err() {
        client.fail(&format!("output did not end within {WAIT:?}"));
    }
    let status = client.exit(WAIT).await;
    let output = client.output();
    assert!(
        status.success(),
        "health_client.py exited with {status}\n{output}"
    );
    assert!(
        client.stdout.iter().any(|l| l == "all checks passed"),
        "{output}"
    );
    println!("{output}");
}
