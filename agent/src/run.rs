//! `faultline run`: the daemon loop. Reads the kernel counters every tick and wakes at
//! once on urgent events. Until the detector lands, it logs each link that lost
//! packets during a tick and each urgent event, one structured line apiece.
use std::{future::Future, time::Duration};

use tokio::time::MissedTickBehavior;

use crate::{
    config::Config,
    probe::{Probe, ProbeError, SockOpsStatus, UrgentEvents},
};

/// Attaches the probe and runs until `shutdown` completes; dropping the probe on the
/// way out detaches every program.
pub async fn run(config: &Config, shutdown: impl Future<Output = ()>) -> Result<(), ProbeError> {
    let mut probe = Probe::attach(&config.probe.probe_options())?;
    match probe.sock_ops_status() {
        SockOpsStatus::Attached(cgroup) => {
            tracing::info!(cgroup = %cgroup.display(), "sock_ops attached: RTOs are counted");
        }
        SockOpsStatus::Unavailable(why) => {
            tracing::warn!(reason = %why, "sock_ops not attached: RTOs are not counted, retransmissions are");
        }
    }
    let mut urgent = probe.take_urgent_events().transpose()?;
    tracing::info!(tick = ?config.probe.tick, "probe attached, watching TCP links");
    let mut ticker = tokio::time::interval(config.probe.tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => log_tick(&mut probe)?,
            batch = next_urgent(urgent.as_mut()) => match batch {
                Ok(events) => for e in events {
                    tracing::warn!(kind = ?e.kind, local = %e.link.local, peer = %e.link.remote, "urgent");
                },
                Err(e) => {
                    tracing::error!(error = %e, "urgent event ring unreadable; relying on ticks");
                    urgent = None;
                }
            },
        }
    }
    tracing::info!("shutting down, detaching programs");
    Ok(())
}

async fn next_urgent(
    urgent: Option<&mut UrgentEvents>,
) -> std::io::Result<Vec<crate::probe::UrgentRecord>> {
    match urgent {
        Some(u) => u.next_batch().await,
        None => std::future::pending().await,
    }
}

fn log_tick(probe: &mut Probe) -> Result<(), ProbeError> {
    for s in probe.sample()? {
        if s.delta.losses() == 0 {
            continue;
        }
        let d = &s.delta;
        tracing::info!(
            local = %s.link.local,
            peer = %s.link.remote,
            retrans = d.retrans_segs,
            rto = d.rto_timeouts,
            syn_retrans = d.syn_retrans,
            failed_connects = d.failed_connects,
            resets = d.resets_rx,
            progress = d.progress_segs,
            srtt_us = s.srtt_us,
            "link loss"
        );
    }
    Ok(())
}

/// `faultline links`: attaches, waits `duration`, returns what each link did meanwhile.
pub fn observe_links(
    config: &Config,
    duration: Duration,
) -> Result<Vec<crate::probe::LinkSample>, ProbeError> {
    let mut probe = Probe::attach(&config.probe.probe_options())?;
    std::thread::sleep(duration);
    probe.sample()
}
