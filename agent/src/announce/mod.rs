//! `faultline announce`: closes the loop from verdicts to routers. It follows the
//! verdict feeds of agents in several sites, and through the local gobgpd withdraws a
//! site's prefixes when agents in `quorum` other sites find that site FAILED, and
//! announces them again when they see it deliver ([`decide`]). Routers in front then
//! send users to a site that works, in well under a second, even when a blackhole
//! behind a live border router keeps BGP and BFD up.
//!
//! It fails static: it never withdraws the last healthy site serving a prefix; with
//! its feeds lost it keeps what it announced and says so; it starts from what the
//! feeds report (waiting up to `startup_wait` for them), not from "all withdrawn"; and
//! it leaves gobgpd's table as it is when it stops. gobgpd's table is compared with
//! what should be announced every `gobgp.resync`, and after any failed call, so a
//! gobgpd that restarts gets its paths back.
mod config;
mod decide;
mod feed;
mod gobgp;
mod metrics;
mod state;

pub use config::{AnnounceConfig, AnnounceConfigError, FeedAgent, GobgpTarget, Prefix, Served};

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{info, warn};

use self::{
    decide::Standing,
    feed::{FeedEvent, FeedUpdate},
    gobgp::Gobgp,
    metrics::AnnounceMetrics,
    state::Feeds,
};

/// After a failed gobgpd call, the first retry comes this soon, then less often up to
/// `gobgp.resync`.
const RETRY_FIRST: Duration = Duration::from_millis(200);

/// Runs until `stop` resolves. Errors only for what retrying cannot fix (a metrics
/// address that cannot be bound).
pub async fn run(
    cfg: AnnounceConfig,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(AnnounceMetrics::new(&cfg));
    if let Some(addr) = cfg.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("metrics.listen {addr}: {e}"))?;
        let m = metrics.clone();
        tokio::spawn(crate::metrics::serve(listener, move || m.render()));
    }
    let (tx, mut rx) = mpsc::channel(256);
    let followers: Vec<_> = cfg
        .agents
        .iter()
        .enumerate()
        .map(|(i, a)| {
            tokio::spawn(feed::follow(
                i,
                a.endpoint.clone(),
                cfg.tls_ca.clone(),
                tx.clone(),
            ))
        })
        .collect();
    drop(tx);
    info!(
        agents = cfg.agents.len(),
        entities = cfg.served.len(),
        gobgp = %cfg.gobgp.endpoint,
        dry_run = cfg.dry_run,
        "announcer started; waiting up to {:?} for every feed's first snapshot",
        cfg.startup_wait
    );
    let mut a = Announcer {
        feeds: Feeds::new(&cfg),
        failed: cfg.served.iter().map(|_| false).collect(),
        // Until the feeds say otherwise, everything is served (what gobgpd held before
        // Faultline, and what it holds when the feeds are lost).
        wanted: cfg
            .served
            .iter()
            .filter(|s| s.local)
            .flat_map(|s| s.prefixes.iter().copied())
            .collect(),
        gobgp: Gobgp::new(cfg.gobgp.clone()),
        metrics,
        started: false,
        retry: None,
        cfg,
    };
    let started_at = Instant::now();
    let mut resync = tokio::time::interval(a.cfg.gobgp.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        let startup_left = a.cfg.startup_wait.saturating_sub(started_at.elapsed());
        let retry_in = a
            .retry
            .map(|(at, _)| at.saturating_duration_since(Instant::now()));
        tokio::select! {
            () = &mut stop => break,
            update = rx.recv() => {
                let Some(update) = update else { break };
                a.on_feed(update).await;
            }
            () = tokio::time::sleep(startup_left), if !a.started => {
                warn!(
                    missing = %a.feeds.without_snapshot().join(", "),
                    "not every feed answered within startup_wait; starting from what the others report"
                );
                a.start().await;
            }
            _ = resync.tick(), if a.started => a.reconcile().await,
            () = tokio::time::sleep(retry_in.unwrap_or_default()), if retry_in.is_some() => {
                a.reconcile().await;
            }
        }
    }
    for f in followers {
        f.abort();
    }
    info!("announcer stopped; gobgpd keeps what is announced (fail static)");
    Ok(())
}

struct Announcer {
    cfg: AnnounceConfig,
    feeds: Feeds,
    /// Per served entity: failed, per the last plan ([`decide::plan`]).
    failed: Vec<bool>,
    /// The prefixes gobgpd should hold, per the last plan.
    wanted: BTreeSet<Prefix>,
    gobgp: Gobgp,
    metrics: Arc<AnnounceMetrics>,
    /// Acting: every feed delivered a snapshot, or `startup_wait` passed.
    started: bool,
    /// After a failed gobgpd call: when to compare tables again, and the delay after.
    retry: Option<(Instant, Duration)>,
}

impl Announcer {
    async fn on_feed(&mut self, u: FeedUpdate) {
        let agent = &self.cfg.agents[u.agent];
        match &u.event {
            FeedEvent::Lost(why) if self.feeds.is_up(u.agent) => {
                warn!(agent = %agent.endpoint, site = %agent.site, "verdict feed lost: {why}; its verdicts no longer count");
            }
            FeedEvent::Snapshot(_) if !self.feeds.is_up(u.agent) => {
                info!(agent = %agent.endpoint, site = %agent.site, "verdict feed up");
            }
            _ => {}
        }
        self.feeds.apply(u.agent, u.event, u.at);
        self.metrics.feeds(&self.feeds);
        if !self.feeds.any_up() && self.started {
            warn!("every verdict feed is lost: keeping what is announced");
        }
        if !self.started && self.feeds.without_snapshot().is_empty() {
            info!("every feed delivered its snapshot");
            self.start().await;
            return;
        }
        if self.started {
            self.act().await;
        }
    }

    async fn start(&mut self) {
        self.started = true;
        self.act().await;
        if !self.cfg.dry_run {
            self.reconcile().await;
        }
    }

    /// Plans, logs every change with the verdicts behind it, and applies it.
    async fn act(&mut self) {
        let words = self.feeds.words();
        let plan = decide::plan(&self.cfg, &words, &self.failed);
        let dry = if self.cfg.dry_run { "dry run: " } else { "" };
        for (e, served) in self.cfg.served.iter().enumerate() {
            if plan.failed[e] == self.failed[e] {
                continue;
            }
            let evidence = self.feeds.evidence(e);
            match &plan.standings[e] {
                Standing::Failed(sites) => warn!(
                    entity = %served.entity,
                    "{dry}{} FAILED per agents in {}; {evidence}",
                    served.entity,
                    sites.join(", ")
                ),
                _ => info!(
                    entity = %served.entity,
                    "{dry}{} delivers again per agents outside it; {evidence}",
                    served.entity
                ),
            }
        }
        let decided_at = self.feeds.latest_at();
        let (old, new) = (self.wanted.clone(), plan.wanted.clone());
        for p in new.difference(&old) {
            let why = if plan.last_standing.contains(p) {
                "although its site failed: nothing else healthy serves it (fail static)".to_owned()
            } else {
                format!("served by {}", self.serving(*p, &plan.failed))
            };
            info!(prefix = %p, "{dry}announce {p}: {why}");
        }
        for p in old.difference(&new) {
            warn!(
                prefix = %p,
                "{dry}withdraw {p}: {}; users go to {}",
                self.failed_serving(*p, &plan.failed),
                self.serving(*p, &plan.failed)
            );
        }
        self.metrics.plan(&self.cfg, &plan, &old);
        self.failed = plan.failed;
        self.wanted = new.clone();
        if self.cfg.dry_run || old == new {
            return;
        }
        let mut result = Ok(());
        for &p in new.difference(&old) {
            result = result.and(self.gobgp.announce(p).await);
        }
        for &p in old.difference(&new) {
            result = result.and(self.gobgp.withdraw(p).await);
        }
        match result {
            Ok(()) => {
                let took = decided_at.map(|t| t.elapsed());
                self.metrics.applied(took);
                info!(
                    took_ms = took.map(|d| d.as_secs_f64() * 1e3),
                    "gobgpd applied the change"
                );
                self.gobgp_ok();
            }
            Err(status) => self.gobgp_failed(&status),
        }
    }

    /// The entities serving `p` that have not failed, for log lines.
    fn serving(&self, p: Prefix, failed: &[bool]) -> String {
        let names: Vec<&str> = self
            .cfg
            .served
            .iter()
            .zip(failed)
            .filter(|(s, f)| !**f && s.prefixes.contains(&p))
            .map(|(s, _)| s.entity.as_str())
            .collect();
        if names.is_empty() {
            "nothing".to_owned()
        } else {
            names.join(", ")
        }
    }

    /// The local entities serving `p` that failed, for log lines.
    fn failed_serving(&self, p: Prefix, failed: &[bool]) -> String {
        let names: Vec<&str> = self
            .cfg
            .served
            .iter()
            .zip(failed)
            .filter(|(s, f)| **f && s.local && s.prefixes.contains(&p))
            .map(|(s, _)| s.entity.as_str())
            .collect();
        format!("{} FAILED", names.join(", "))
    }

    fn all_local(&self) -> BTreeSet<Prefix> {
        self.cfg
            .served
            .iter()
            .filter(|s| s.local)
            .flat_map(|s| s.prefixes.iter().copied())
            .collect()
    }

    /// Makes gobgpd's table hold exactly the wanted prefixes among ours.
    async fn reconcile(&mut self) {
        if self.cfg.dry_run || !self.started {
            self.retry = None;
            return;
        }
        let (wanted, ours) = (self.wanted.clone(), self.all_local());
        let result = async {
            let present = self.gobgp.announced(&ours).await?;
            let mut fixed = Vec::new();
            for &p in wanted.difference(&present) {
                self.gobgp.announce(p).await?;
                fixed.push(format!("+{p}"));
            }
            for &p in present.difference(&wanted) {
                self.gobgp.withdraw(p).await?;
                fixed.push(format!("-{p}"));
            }
            Ok::<_, tonic::Status>(fixed)
        }
        .await;
        match result {
            Ok(fixed) => {
                if !fixed.is_empty() {
                    warn!(endpoint = %self.gobgp.endpoint(), "gobgpd's table differed from what should be announced (restarted?); fixed: {}", fixed.join(" "));
                    self.metrics.resynced();
                }
                self.gobgp_ok();
            }
            Err(status) => self.gobgp_failed(&status),
        }
    }

    fn gobgp_ok(&mut self) {
        if self.retry.take().is_some() {
            info!(endpoint = %self.gobgp.endpoint(), "gobgpd answers again; its table matches");
        }
        self.metrics.gobgp_up(true);
    }

    fn gobgp_failed(&mut self, status: &tonic::Status) {
        let delay = self
            .retry
            .map_or(RETRY_FIRST, |(_, d)| (d * 2).min(self.cfg.gobgp.resync));
        if self.retry.is_none() {
            warn!(endpoint = %self.gobgp.endpoint(), "gobgpd call failed: {}; retrying, then re-applying everything", status.message());
        }
        self.retry = Some((Instant::now() + delay, delay));
        self.metrics.gobgp_up(false);
    }
}
