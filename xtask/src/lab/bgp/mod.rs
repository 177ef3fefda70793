//! `--scenario bgp-failover`: a site fails behind its border, and BGP moves a client's
//! traffic to the other site serving the same VIP, driven by `faultline announce`.
//!
//! The setup ([`Bgp`], started with the lab when the scenario is asked for): a client
//! network behind an edge router running bird ([`wiring`]), eBGP sessions from bird to
//! a gobgpd in the site router of each of the first two sites ([`daemons`]), the VIP
//! served by one host in each of them, and a client asking it every 10 ms which site
//! answers ([`vip`]). bird prefers the first site. One announcer per border drives its
//! gobgpd from the agents' verdicts ([`announcer`]); without them ("static" mode, and
//! while the agent has no `announce` subcommand) the lab adds the VIP to both gobgpds
//! by hand.
//!
//! Each run of the scenario ([`failover`]) is three faults side by side: the first
//! site blackholed behind its border (1) with the announcers and (2) without, and (3)
//! the edge's link to it cut, the reference (bird drops the session on link state).
//! Every timing comes from streams read as they happen, on the lab's clock: the
//! announcer's log lines, each gobgpd's RIB (`gobgp monitor`), the edge's kernel table
//! (`ip monitor route`) and the client's requests. [`report`] turns them into a table,
//! `target/lab/bgp-failover.json` and checks.
mod announcer;
mod daemons;
mod failover;
mod report;
mod vip;
mod wiring;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

pub(super) use self::failover::{Variant, run_round, run_scenario};
pub(super) use self::report::{Report, soak_withdrawals};
use self::{
    announcer::Announcers,
    daemons::{Daemon, Lines},
    vip::VipTraffic,
    wiring::Wiring,
};
use super::{net::Network, net::progress, topology::Topology};
use crate::bench::check_interrupted;

/// How long the BGP setup may take to be steady again (route via the preferred site,
/// every request answered there) before a variant starts anyway.
const STEADY_TIMEOUT: Duration = Duration::from_secs(60);
/// Steady: every request that ended within this window was answered by the first site.
const STEADY_WINDOW: Duration = Duration::from_secs(1);

/// Who keeps the VIP in the gobgpds' RIBs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// One `faultline announce` per border.
    Announcers,
    /// The lab, by hand, once (nothing withdraws it).
    Static,
}

/// The running BGP setup. Fields drop in order: the client first, the namespaces last.
pub(in crate::lab) struct Bgp {
    vip: VipTraffic,
    announcers: Option<Announcers>,
    watchers: Vec<Daemon>,
    gobgpd: Vec<Daemon>,
    bird: Daemon,
    wiring: Wiring,
    /// Each border's RIB changes, edge route changes, each announcer's stderr.
    rib: Vec<Arc<Lines>>,
    edge_routes: Arc<Lines>,
    announcer_lines: Vec<Arc<Lines>>,
    /// Whether `faultline announce` exists in this build.
    adapter: bool,
    mode: Mode,
    bin: PathBuf,
    dir: PathBuf,
}

/// What the BGP setup looks like at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct State {
    /// Whether each border's gobgpd has the VIP in its RIB.
    pub(super) rib: Vec<bool>,
    /// The border the edge's route to the VIP points at; None: no route (or elsewhere).
    pub(super) edge: Option<usize>,
}

impl Bgp {
    pub(in crate::lab) fn start(
        t: &Topology,
        net: &Network,
        bin: &Path,
        run_dir: &Path,
    ) -> Result<Self> {
        let dir = run_dir.join("bgp");
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        progress("bgp-failover: wiring the client network and the VIP");
        let wiring = Wiring::build(t, net)?;
        let edge_routes = Arc::new(Lines::default());
        // Watch the edge's table before anything can be in it.
        let mut watchers = vec![daemons::watch_edge_routes(
            &wiring,
            &dir,
            edge_routes.clone(),
        )?];
        progress("bgp-failover: starting bird and gobgpd");
        let mut bird = daemons::start_bird(&wiring, &dir)?;
        let mut gobgpd = Vec::new();
        let mut rib = Vec::new();
        for b in &wiring.borders {
            gobgpd.push(daemons::start_gobgpd(b, &dir)?);
            let lines = Arc::new(Lines::default());
            watchers.push(daemons::watch_rib(b, &dir, lines.clone())?);
            rib.push(lines);
        }
        daemons::wait_established(&mut bird, &wiring, &dir)?;
        let adapter = announcer::available(bin);
        let servers: Vec<(String, String)> = wiring
            .borders
            .iter()
            .map(|b| (b.host_ns.clone(), b.name.clone()))
            .collect();
        let vip = VipTraffic::start(&servers, &wiring.client)?;
        let mut bgp = Self {
            vip,
            announcers: None,
            watchers,
            gobgpd,
            bird,
            announcer_lines: wiring.borders.iter().map(|_| Arc::default()).collect(),
            wiring,
            rib,
            edge_routes,
            adapter,
            mode: Mode::Static,
            bin: bin.to_owned(),
            dir,
        };
        // The lab's own paths first: the announcers (if any) take over from them.
        for b in &bgp.wiring.borders {
            daemons::add_static_path(b)?;
        }
        if adapter {
            bgp.set_mode(Mode::Announcers, t)?;
        }
        println!();
        println!(
            "bgp-failover: VIP {} served by {} ({}, preferred) and {} ({}); client in {}; {}; logs in {}",
            wiring::VIP,
            bgp.wiring.borders[0].name,
            t.hosts[bgp.wiring.borders[0].host].name,
            bgp.wiring.borders[1].name,
            t.hosts[bgp.wiring.borders[1].host].name,
            bgp.wiring.client,
            if adapter {
                "one `faultline announce` per border"
            } else {
                "NO `faultline announce` in this build: paths added by hand, no adapter runs"
            },
            bgp.dir.display()
        );
        Ok(bgp)
    }

    /// Whether the adapter can run at all.
    pub(super) fn adapter(&self) -> bool {
        self.adapter
    }

    /// Starts or stops the announcers. Static: the VIP is (re)added to both RIBs by hand
    /// after the announcers are gone, whatever they did on their way out.
    pub(super) fn set_mode(&mut self, mode: Mode, t: &Topology) -> Result<()> {
        if mode == self.mode {
            return Ok(());
        }
        match mode {
            Mode::Static => {
                drop(self.announcers.take());
                for b in &self.wiring.borders {
                    daemons::add_static_path(b)?;
                }
            }
            Mode::Announcers => {
                anyhow::ensure!(self.adapter, "no `faultline announce` in this build");
                // The announcers announce what is healthy themselves; a path of the
                // lab's left in the RIB would outlive their withdrawal.
                for b in &self.wiring.borders {
                    daemons::delete_path(b)?;
                }
                self.announcers = Some(Announcers::start(
                    &self.bin,
                    t,
                    &self.wiring,
                    &self.dir,
                    &self.announcer_lines,
                )?);
            }
        }
        self.mode = mode;
        Ok(())
    }

    pub(super) fn check_alive(&mut self) -> Result<()> {
        self.bird.check_alive()?;
        for d in self.gobgpd.iter_mut().chain(&mut self.watchers) {
            d.check_alive()?;
        }
        if let Some(a) = &mut self.announcers {
            a.check_alive()?;
        }
        Ok(())
    }

    /// Each border's RIB as (when, VIP present) changes.
    pub(super) fn rib_changes(&self, border: usize) -> Vec<(Instant, bool)> {
        self.rib[border]
            .all()
            .into_iter()
            .filter_map(|(at, l)| daemons::rib_event(&l).map(|e| (at, e)))
            .collect()
    }

    /// The edge's route to the VIP as (when, border it points at) changes.
    pub(super) fn edge_changes(&self) -> Vec<(Instant, Option<usize>)> {
        self.edge_routes
            .all()
            .into_iter()
            .filter_map(|(at, l)| {
                daemons::edge_route_event(&l)
                    .map(|via| (at, via.and_then(|v| self.wiring.border_by_next_hop(&v))))
            })
            .collect()
    }

    /// A border's announcer's actions on `entity`: (when, announced).
    pub(super) fn announcer_actions(&self, border: usize, entity: &str) -> Vec<(Instant, bool)> {
        self.announcer_lines[border]
            .all()
            .into_iter()
            .filter_map(|(at, l)| announcer::action(&l, entity).map(|a| (at, a)))
            .collect()
    }

    /// Every withdrawal any announcer logged in `[from, to)`: (border, line).
    pub(super) fn withdrawals(&self, from: Instant, to: Instant) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, lines) in self.announcer_lines.iter().enumerate() {
            for (at, l) in lines.all() {
                let withdrew = self
                    .wiring
                    .borders
                    .iter()
                    .any(|b| announcer::action(&l, &b.name) == Some(false));
                if at >= from && at < to && withdrew {
                    out.push((i, l));
                }
            }
        }
        out
    }

    /// `faultline_announce_withdrawals_total` summed over the announcers (None when
    /// not running, or one cannot be read).
    pub(in crate::lab) fn withdrawals_metric(&self) -> Option<f64> {
        self.announcers.as_ref()?;
        self.wiring
            .borders
            .iter()
            .map(|b| announcer::withdrawals_total(&b.router_ns))
            .sum()
    }

    /// The setup as its streams recorded it at `at`.
    pub(super) fn state_at(&self, at: Instant) -> State {
        let last_before = |changes: Vec<(Instant, bool)>| {
            changes
                .iter()
                .rev()
                .find(|(t, _)| *t <= at)
                .is_some_and(|(_, on)| *on)
        };
        State {
            rib: (0..self.wiring.borders.len())
                .map(|b| last_before(self.rib_changes(b)))
                .collect(),
            edge: self
                .edge_changes()
                .iter()
                .rev()
                .find(|(t, _)| *t <= at)
                .and_then(|(_, b)| *b),
        }
    }

    /// Steady at `at`: both borders announce the VIP, the edge routes it to the first,
    /// and every request that ended in the [`STEADY_WINDOW`] before was answered there.
    pub(super) fn steady_at(&self, at: Instant) -> Result<(), String> {
        let state = self.state_at(at);
        for (b, on) in self.wiring.borders.iter().zip(&state.rib) {
            if !on {
                return Err(format!("no VIP in the RIB of {}'s gobgpd", b.name));
            }
        }
        if state.edge != Some(0) {
            return Err(format!(
                "the edge's route to the VIP is not via {}",
                self.wiring.borders[0].name
            ));
        }
        let recent = self.vip.log.between(at - STEADY_WINDOW, at);
        let elsewhere = recent.iter().filter(|p| p.answer != Some(0)).count();
        if recent.is_empty() || elsewhere > 0 {
            return Err(format!(
                "{elsewhere} of {} requests in the last {STEADY_WINDOW:?} not answered by {}",
                recent.len(),
                self.wiring.borders[0].name
            ));
        }
        Ok(())
    }

    /// Waits until [`Self::steady_at`] now, at most until `deadline`: Ok(Err(why)) if not.
    pub(super) fn wait_steady(&mut self, deadline: Instant) -> Result<Result<(), String>> {
        loop {
            check_interrupted()?;
            self.check_alive()?;
            match self.steady_at(Instant::now()) {
                Ok(()) => return Ok(Ok(())),
                Err(why) if Instant::now() >= deadline => return Ok(Err(why)),
                Err(_) => sleep(Duration::from_millis(50)),
            }
        }
    }

    /// For `--keep`: how to look at the BGP setup by hand.
    pub(in crate::lab) fn how_to_look(&self) -> Vec<String> {
        let mut out = vec![format!(
            "bird (edge): birdc -s {} show route all",
            daemons::bird_socket(&self.dir).display()
        )];
        for b in &self.wiring.borders {
            out.push(format!(
                "gobgpd ({}): ip netns exec {} gobgp -p {} global rib",
                b.name,
                b.router_ns,
                daemons::GOBGP_API_PORT
            ));
        }
        out.push(format!(
            "the client's route: ip -n {} route get {}",
            self.wiring.edge,
            wiring::VIP
        ));
        out
    }

    fn names(&self) -> Vec<String> {
        self.wiring.borders.iter().map(|b| b.name.clone()).collect()
    }
}
