//! The real agent's way out (root: it attaches the kernel programs). On SIGTERM, and the
//! same on SIGINT, `""` goes NOT_SERVING at a health watcher before the server drains,
//! open Watch streams are then closed, and the agent exits 0 having logged why.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use faultline_integration::require_root;
use faultline_proto::{
    health::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    },
    v1::{self as pb, verdicts_client::VerdictsClient},
};

/// Generous bounds that turn a hang into a failure; none is a performance goal.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// The agent's drain gives open streams 2 s after a 0.2 s NOT_SERVING grace.
const STREAMS_CLOSED_WITHIN: Duration = Duration::from_millis(2200 + 1000);

struct Agent {
    child: Child,
    log: mpsc::Receiver<String>,
    grpc: String,
}

impl Agent {
    fn start(dir: &std::path::Path) -> Self {
        let config = dir.join("faultline.toml");
        std::fs::write(
            &config,
            "[agent]\nname = \"shutdown-test\"\nlocal_addresses = [\"127.0.0.1\"]\n\
             [listen]\ngrpc = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\nheartbeat = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_faultline"))
            .args(["--log-json", "run", "--config"])
            .arg(&config)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start faultline run");
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut agent = Self {
            child,
            log,
            grpc: String::new(),
        };
        let ready = agent
            .wait_log(START_TIMEOUT, "probe attached, watching TCP links")
            .expect("the agent attached and logged its gRPC address");
        agent.grpc = format!("http://{}", ready["fields"]["grpc"].as_str().unwrap());
        agent
    }

    /// The next log line whose message is `message`, within `timeout`.
    fn wait_log(&self, timeout: Duration, message: &str) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let line = self.log.recv_timeout(left).ok()?;
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if json["fields"]["message"] == message {
                return Some(json);
            }
        }
        None
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill has no memory preconditions; pid is our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the clients saw after the signal, in order of arrival.
#[derive(Debug)]
struct Seen {
    not_serving: Option<Duration>,
    watch_closed: Option<Duration>,
}

fn stops_in_order(signal: libc::c_int, name: &str) {
    require_root();
    let dir =
        std::env::temp_dir().join(format!("faultline-shutdown-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut agent = Agent::start(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut health, mut verdicts) = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(agent.grpc.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel.clone())
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = health.message().await.unwrap().unwrap();
        assert_eq!(
            first.status,
            ServingStatus::Serving as i32,
            "serving while running"
        );
        let mut verdicts = VerdictsClient::new(channel)
            .watch(pb::WatchRequest::default())
            .await
            .unwrap()
            .into_inner();
        verdicts
            .message()
            .await
            .unwrap()
            .expect("the snapshot comes first");
        (health, verdicts)
    });

    let signalled = Instant::now();
    agent.signal(signal);
    let seen = rt.block_on(async {
        let not_serving = async {
            while let Ok(Some(m)) = health.message().await {
                if m.status == ServingStatus::NotServing as i32 {
                    return Some(signalled.elapsed());
                }
            }
            None
        };
        let watch_closed = async {
            // A clean end or an error both mean the stream is gone.
            while let Ok(Some(_)) = verdicts.message().await {}
            Some(signalled.elapsed())
        };
        let (not_serving, watch_closed) = tokio::time::timeout(EXIT_TIMEOUT, async {
            tokio::join!(not_serving, watch_closed)
        })
        .await
        .expect("both streams resolved");
        Seen {
            not_serving,
            watch_closed,
        }
    });
    let stopping = agent
        .wait_log(
            EXIT_TIMEOUT,
            "shutting down: agent NOT_SERVING, draining gRPC, detaching programs",
        )
        .expect("the shutdown is logged");
    assert_eq!(
        stopping["fields"]["reason"], name,
        "the log says why: {stopping}"
    );
    let status = agent.wait_exit();
    std::fs::remove_dir_all(&dir).unwrap();

    let not_serving = seen
        .not_serving
        .expect("\"\" went NOT_SERVING before its stream closed");
    let closed = seen.watch_closed.unwrap();
    assert!(
        not_serving <= closed,
        "NOT_SERVING before the drain closed streams: {seen:?}"
    );
    assert!(
        closed <= STREAMS_CLOSED_WITHIN,
        "Watch streams closed by the drain: {seen:?}"
    );
    assert!(status.success(), "a signal is an orderly stop: {status}");
}

#[test]
fn sigterm_goes_not_serving_then_drains_then_exits() {
    stops_in_order(libc::SIGTERM, "SIGTERM");
}

/// SIGHUP reloads instead (tests/reload.rs); Ctrl-C stops like SIGTERM.
#[test]
fn sigint_takes_the_same_way_out() {
    stops_in_order(libc::SIGINT, "SIGINT");
}
