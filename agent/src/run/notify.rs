//! systemd's notify protocol (`Type=notify`): `READY=1` once the programs are
//! attached and the first evaluation ran, `WATCHDOG=1` from the evaluation loop (so
//! a hung detector is restarted, not just a dead process), `STOPPING=1` when the
//! shutdown begins. A datagram to `$NOTIFY_SOCKET`; nothing at all without it.
use std::{
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

pub(super) struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    /// Half of `$WATCHDOG_USEC`: how often the loop must say it is alive.
    watchdog_every: Option<Duration>,
    last_watchdog: Instant,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (checked against `$WATCHDOG_PID`).
    pub(super) fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let addr = socket_addr(path.to_str()?)
                .inspect_err(
                    |e| tracing::warn!(error = %e, "NOTIFY_SOCKET unusable; not notifying systemd"),
                )
                .ok()?;
            let socket = UnixDatagram::unbound()
                .inspect_err(|e| tracing::warn!(error = %e, "cannot notify systemd"))
                .ok()?;
            Some((socket, addr))
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(|u| Duration::from_micros(u) / 2);
        Self {
            socket,
            watchdog_every,
            last_watchdog: Instant::now(),
        }
    }

    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.socket
            && let Err(e) = socket.send_to_addr(message.as_bytes(), addr)
        {
            tracing::warn!(error = %e, message, "notifying systemd failed");
        }
    }

    pub(super) fn ready(&self) {
        self.send("READY=1\nSTATUS=watching TCP links");
    }

    pub(super) fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// After an evaluation: `WATCHDOG=1` when half the watchdog interval has passed.
    pub(super) fn evaluated(&mut self) {
        if let Some(every) = self.watchdog_every
            && self.last_watchdog.elapsed() >= every
        {
            self.send("WATCHDOG=1");
            self.last_watchdog = Instant::now();
        }
    }
}

/// A path, or `@name` for the abstract namespace.
fn socket_addr(path: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => std::os::unix::net::SocketAddr::from_pathname(path),
    }
}
