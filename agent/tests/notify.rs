//! `Type=notify` without systemd as PID 1: the agent run with a real `NOTIFY_SOCKET`
//! (a datagram socket this test binds) says READY once attached and evaluating,
//! WATCHDOG=1 from its evaluation loop, and STOPPING=1 on SIGTERM.
use faultline_integration::TempDir;
use std::{
    os::unix::net::UnixDatagram,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use faultline_integration::require_root;

/// The next message on `socket`, within `within`.
fn next(socket: &UnixDatagram, within: Duration) -> Option<String> {
    socket.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn ready_then_watchdog_from_the_loop_then_stopping() {
    require_root();
    let dir = TempDir::new("notify");
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        "[agent]\nlocal_addresses = [\"192.0.2.1\"]\n\
         [listen]\ngrpc = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\nheartbeat = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = next(&socket, Duration::from_secs(20));
    assert!(
        ready.as_deref().is_some_and(|m| m.starts_with("READY=1")),
        "{ready:?}"
    );
    // Half the 400 ms watchdog: a keepalive every ~200 ms from the loop.
    let start = Instant::now();
    let mut keepalives = 0;
    while start.elapsed() < Duration::from_secs(1) {
        if next(&socket, Duration::from_millis(500)).as_deref() == Some("WATCHDOG=1") {
            keepalives += 1;
        }
    }
    assert!(
        (3..=7).contains(&keepalives),
        "{keepalives} keepalives in 1 s"
    );
    // SAFETY: kill with a valid pid of our own child.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let mut stopping = false;
    while let Some(m) = next(&socket, Duration::from_secs(5)) {
        stopping |= m == "STOPPING=1";
        if stopping {
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
    assert!(child.wait().unwrap().success());
}
