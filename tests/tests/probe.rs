//! The kernel probe on real TCP traffic with real faults injected on the path.
//!
//! Each test builds its own lab (three hosts behind a router, all namespaces), attaches
//! a fresh probe, drives traffic and reads what the kernel counted. Run one at a time
//! (`--test-threads=1`): the tracepoints are global to the kernel.
use std::{
    io::Write,
    net::{IpAddr, TcpStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use faultline::{
    Probe, ProbeOptions, UrgentEvents, UrgentRecord,
    link::{Link, LinkCounters, LinkSample, RttHistogram},
};
use faultline_ebpf::UrgentKind;
use faultline_integration::{
    Lab,
    netns::Host,
    traffic::{Duplex, Flow, Sink, bulk, connect},
};

const PORT: u16 = 5001;
/// Upper bound on waiting for the kernel to count something: generous, so only a probe
/// that never sees it fails, and a hang becomes a failure.
const DEADLINE: Duration = Duration::from_secs(15);
/// How often a waiting test reads the probe.
const POLL: Duration = Duration::from_millis(200);

fn attach() -> Probe {
    Probe::attach(&ProbeOptions::default()).unwrap_or_else(|e| panic!("attach probe: {e}"))
}

/// A probe with its urgent-event ring, which needs a tokio reactor to register with.
/// Fields drop in order: the ring before the runtime it is registered with.
struct Watched {
    urgent: UrgentEvents,
    probe: Probe,
    _runtime: tokio::runtime::Runtime,
}

fn attach_watching() -> Watched {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut probe = attach();
    let urgent = {
        let _guard = runtime.enter();
        probe.take_urgent_events().unwrap().unwrap()
    };
    Watched {
        urgent,
        probe,
        _runtime: runtime,
    }
}

fn ip(host: &Host, v6: bool) -> IpAddr {
    if v6 { host.v6 } else { host.v4 }
}

/// Sum of the deltas of one link in a batch of samples.
fn link(samples: &[LinkSample], from: &Host, to: &Host, v6: bool) -> (LinkCounters, RttHistogram) {
    let want = Link {
        local: ip(from, v6),
        remote: ip(to, v6),
    };
    samples
        .iter()
        .find(|s| s.link == want)
        .map(|s| (s.delta, s.rtt))
        .unwrap_or_default()
}

fn sample(probe: &mut Probe) -> Vec<LinkSample> {
    probe.sample().unwrap_or_else(|e| panic!("read probe: {e}"))
}

/// The counters the probe sees on some links, summed over samples read every [`POLL`]
/// until `done` holds for them; panics naming `what` after [`DEADLINE`].
fn until<const N: usize>(
    probe: &mut Probe,
    links: [(&Host, &Host, bool); N],
    what: &str,
    done: impl Fn(&[LinkCounters; N]) -> bool,
) -> [LinkCounters; N] {
    let deadline = Instant::now() + DEADLINE;
    let mut sums = [LinkCounters::default(); N];
    loop {
        let samples = sample(probe);
        for (sum, (from, to, v6)) in sums.iter_mut().zip(links) {
            sum.add(&link(&samples, from, to, v6).0);
        }
        if done(&sums) {
            return sums;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {DEADLINE:?}: {sums:?}"
        );
        std::thread::sleep(POLL);
    }
}

fn has_event(events: &[UrgentRecord], kind: UrgentKind, from: &Host, to: &Host, v6: bool) -> bool {
    events
        .iter()
        .any(|e| e.kind == kind && e.link.local == ip(from, v6) && e.link.remote == ip(to, v6))
}

fn loss_is_counted_on_the_lossy_link_only(v6: bool) {
    let lab = Lab::new();
    let _sink_b = Sink::start(&lab.b.ns, lab.b.addr(v6, PORT));
    let _sink_c = Sink::start(&lab.c.ns, lab.c.addr(v6, PORT));
    let mut probe = attach();
    sample(&mut probe);
    lab.drop_to(ip(&lab.b, v6), 5);

    let to_b = Flow::start(
        &lab.a.ns,
        lab.b.addr(v6, PORT),
        Duration::from_secs(30),
        40 << 20,
    );
    let to_c = Flow::start(
        &lab.a.ns,
        lab.c.addr(v6, PORT),
        Duration::from_secs(30),
        4 << 20,
    );
    // Read while the flows still run (they run until stopped): once they close, b's
    // FIN may be retransmitted because the ACK to it was dropped, which is loss
    // towards b, not from it. Wait for steady traffic, well past slow start: hundreds
    // of retransmissions to compare with the drops, hundreds of segments from c.
    let [lossy, reverse, unrelated] = until(
        &mut probe,
        [
            (&lab.a, &lab.b, v6),
            (&lab.b, &lab.a, v6),
            (&lab.a, &lab.c, v6),
        ],
        "500 retransmissions towards b, and 500 segments from c",
        |[lossy, _, unrelated]| lossy.retrans_segs >= 500 && unrelated.progress_segs >= 500,
    );
    let drops = lab.dropped_packets();
    assert!(to_b.stop() > 0 && to_c.stop() > 0, "traffic flowed");

    assert!(drops > 0, "the router dropped nothing");
    // A dropped packet on veth may be a whole GSO burst, re-sent as one or more
    // retransmissions; every drop needs at least one, within a small factor.
    assert!(
        lossy.retrans_segs * 2 >= drops && lossy.retrans_segs <= drops * 10 + 20,
        "retransmissions {} not consistent with {drops} drops: {lossy:?}",
        lossy.retrans_segs
    );
    assert!(
        lossy.progress_segs > 0,
        "the lossy link still delivers: {lossy:?}"
    );
    // Loss is pinned on the lossy link: the others stay within noise (a busy machine
    // makes TCP send a spurious tail-loss probe now and then), at most a fiftieth of it.
    let noise = lossy.retrans_segs / 50;
    assert!(
        reverse.retrans_segs + reverse.rto_timeouts <= noise,
        "reverse link: {reverse:?} against {lossy:?}"
    );
    assert!(
        unrelated.progress_segs > 0,
        "unrelated link carried traffic: {unrelated:?}"
    );
    assert!(
        unrelated.retrans_segs + unrelated.rto_timeouts <= noise,
        "unrelated link: {unrelated:?} against {lossy:?}"
    );
}

fn blackhole_counts_rtos_and_progress_stops(v6: bool) {
    let lab = Lab::new();
    let _sink = Sink::start(&lab.b.ns, lab.b.addr(v6, PORT));
    let Watched {
        mut urgent,
        mut probe,
        _runtime,
    } = attach_watching();

    let flow = Flow::start(
        &lab.a.ns,
        lab.b.addr(v6, PORT),
        Duration::from_secs(30),
        u64::MAX,
    );
    until(
        &mut probe,
        [(&lab.a, &lab.b, v6)],
        "the healthy link progresses",
        |[healthy]| healthy.progress_segs > 0,
    );
    urgent.drain();

    lab.drop_to(ip(&lab.b, v6), 100);
    // The first RTO: from then on nothing the peer sends can arrive.
    let [onset] = until(
        &mut probe,
        [(&lab.a, &lab.b, v6)],
        "an RTO after the blackhole",
        |[onset]| onset.rto_timeouts >= 1,
    );
    // Polls come every 200 ms, the second (backed-off) RTO 400 ms after the first.
    assert_eq!(
        onset.repeat_timeouts, 0,
        "a connection's first timeout is not a repeat: {onset:?}"
    );
    // RTOs keep firing (backed off), each retransmitting (counted just after the RTO
    // itself), and nothing progresses.
    let [dark] = until(
        &mut probe,
        [(&lab.a, &lab.b, v6)],
        "a second RTO in the blackhole, and its retransmission",
        |[dark]| dark.rto_timeouts >= 1 && dark.retrans_segs >= 1,
    );
    flow.stop();

    assert_eq!(
        dark.progress_segs, 0,
        "no progress in a blackhole: {dark:?}"
    );
    assert_eq!(
        dark.repeat_timeouts, dark.rto_timeouts,
        "every later timeout of the connection is a repeat: {dark:?}"
    );
    let events = urgent.drain();
    assert!(
        has_event(&events, UrgentKind::Rto, &lab.a, &lab.b, v6),
        "an urgent RTO event arrived: {events:?}"
    );
}

/// Traffic towards b is dropped, b's traffic towards a is not: a retransmits and times
/// out, yet still receives b's (retransmitted) data, so segments received keep growing
/// at a's link to b and only the ACK count shows that nothing a sends gets through.
fn a_one_way_fault_stops_acks_but_not_segments_received(v6: bool) {
    /// Each direction's rate: enough for ACKs every tick, far below what loads the CPUs.
    const RATE: u64 = 1 << 20;
    let lab = Lab::new();
    // Attached first: ACKs are counted on sockets opened after sock_ops attached.
    let mut probe = attach();
    let duplex = Duplex::start(
        &lab.a.ns,
        &lab.b.ns,
        lab.b.addr(v6, PORT),
        Duration::from_secs(30),
        RATE,
    );
    let [healthy] = until(
        &mut probe,
        [(&lab.a, &lab.b, v6)],
        "ACKs of a's data and segments from b on the healthy link",
        |[healthy]| healthy.acked_segs >= 10 && healthy.progress_segs >= 10,
    );
    // A loaded machine may delay an ACK past a tail-loss probe's few milliseconds (CI
    // saw one spurious retransmission in 18 segments), never past an RTO's 200.
    assert!(
        healthy.rto_timeouts == 0 && healthy.retrans_segs * 10 <= healthy.progress_segs,
        "the healthy link times out never and retransmits under a tenth: {healthy:?}"
    );

    lab.drop_to(ip(&lab.b, v6), 100);
    // The onset: ACKs already on their way to a when the rule went in still arrive. By
    // a's first RTO (200 ms at least without an ACK) they all have.
    until(
        &mut probe,
        [(&lab.a, &lab.b, v6)],
        "a's first RTO after the one-way fault",
        |[onset]| onset.rto_timeouts >= 1,
    );
    // From now on: a keeps timing out, b's retransmitted data keeps arriving at a.
    let [during, reverse] = until(
        &mut probe,
        [(&lab.a, &lab.b, v6), (&lab.b, &lab.a, v6)],
        "another RTO at a, and segments from b arriving at a",
        |[during, _]| during.rto_timeouts >= 1 && during.progress_segs >= 1,
    );
    assert!(
        during.retrans_segs >= 1,
        "a retransmits into the fault: {during:?}"
    );
    assert_eq!(
        during.acked_segs, 0,
        "nothing a sends is acknowledged, though b's segments arrive: {during:?}"
    );
    assert_eq!(
        reverse.progress_segs + reverse.acked_segs,
        0,
        "nothing reaches b: {reverse:?}"
    );

    lab.heal();
    // a's next (backed-off) retransmission gets through and is acknowledged.
    until(
        &mut probe,
        [(&lab.a, &lab.b, v6)],
        "ACKs of a's data once the path heals",
        |[healed]| healed.acked_segs >= 1,
    );
    let (client, server) = duplex.stop();
    assert!(
        client > 0 && server > 0,
        "both sides sent: {client} {server}"
    );
}

/// Segments, retransmissions and timeouts on the agents' heartbeat port (an agent
/// listens there for its followers' heartbeats and sends its own to its peers' on the
/// same port) are counted apart from loss; every other socket's stay loss. Into a
/// blackhole: a connection to a's heartbeat port from b; one from a to c's, and a
/// user's flow.
fn heartbeats_are_counted_apart_from_loss(v6: bool) {
    const CONTROL: u16 = 5002;
    const RATE: u64 = 256 << 10;
    let lab = Lab::new();
    let _sink = Sink::start(&lab.c.ns, lab.c.addr(v6, PORT));
    let mut probe = Probe::attach(&ProbeOptions {
        control_port: Some(CONTROL),
        ..ProbeOptions::default()
    })
    .unwrap_or_else(|e| panic!("attach probe: {e}"));
    // b sends heartbeats to a; a sends its own to c, and to c's sink as any client.
    let served = Duplex::start(
        &lab.b.ns,
        &lab.a.ns,
        lab.a.addr(v6, CONTROL),
        Duration::from_secs(30),
        RATE,
    );
    let followed = Duplex::start(
        &lab.a.ns,
        &lab.c.ns,
        lab.c.addr(v6, CONTROL),
        Duration::from_secs(30),
        RATE,
    );
    let flow = Flow::start(
        &lab.a.ns,
        lab.c.addr(v6, PORT),
        Duration::from_secs(30),
        RATE,
    );
    let [healthy_b, _] = until(
        &mut probe,
        [(&lab.a, &lab.b, v6), (&lab.a, &lab.c, v6)],
        "both links progress, on both of a's connections to c",
        |[b, c]| {
            b.progress_segs >= 10
                && c.control_progress_segs >= 10
                && c.progress_segs_but_heartbeats() >= 10
        },
    );
    assert_eq!(
        healthy_b.control_progress_segs, healthy_b.progress_segs,
        "every segment from b came on the control port: {healthy_b:?}"
    );
    lab.drop_to(ip(&lab.b, v6), 100);
    lab.drop_to(ip(&lab.c, v6), 100);
    let [to_b, to_c] = until(
        &mut probe,
        [(&lab.a, &lab.b, v6), (&lab.a, &lab.c, v6)],
        "retransmissions and timeouts into the blackhole on every connection",
        |[b, c]| {
            b.control_retrans_segs >= 1
                && c.control_retrans_segs >= 1
                && c.retrans_segs >= 1
                && b.control_timeouts >= 1
                && c.control_timeouts >= 1
                && c.rto_timeouts >= 1
        },
    );
    served.stop();
    followed.stop();
    flow.stop();
    assert_eq!(
        (to_b.retrans_segs, to_b.rto_timeouts),
        (0, 0),
        "from the control port: not loss: {to_b:?}"
    );
    assert!(
        to_c.retrans_segs >= 1 && to_c.control_retrans_segs >= 1,
        "towards c, the flow's retransmissions are loss, the heartbeats' not: {to_c:?}"
    );
}

fn connect_to_blackhole_retries_syn_then_fails(v6: bool) {
    let lab = Lab::new();
    let _sink = Sink::start(&lab.b.ns, lab.b.addr(v6, PORT));
    let Watched {
        mut urgent,
        mut probe,
        _runtime,
    } = attach_watching();
    lab.drop_to(ip(&lab.b, v6), 100);

    // SYN retries fire from 1 s after the SYN (the initial RTO), then 1 s apart
    // (`tcp_syn_linear_timeouts`, since Linux 6.5) or backed off (1 s, 3 s, 7 s).
    let result = connect(&lab.a.ns, lab.b.addr(v6, PORT), Duration::from_millis(3500));
    assert!(result.is_err(), "connect into a blackhole must fail");
    let (c, _) = link(&sample(&mut probe), &lab.a, &lab.b, v6);
    assert!(
        c.syn_retrans >= 2,
        "SYN retransmitted at least twice: {c:?}"
    );
    assert_eq!(
        c.repeat_timeouts,
        c.syn_retrans - 1,
        "every SYN retry but the first is a repeat: {c:?}"
    );
    assert_eq!(c.failed_connects, 1, "one failed connect: {c:?}");
    assert_eq!(c.progress_segs, 0, "{c:?}");
    let events = urgent.drain();
    assert!(
        has_event(&events, UrgentKind::SynRetrans, &lab.a, &lab.b, v6),
        "{events:?}"
    );
    assert!(
        has_event(&events, UrgentKind::FailedConnect, &lab.a, &lab.b, v6),
        "{events:?}"
    );
}

fn closed_port_gives_a_reset(v6: bool) {
    let lab = Lab::new();
    let mut probe = attach();
    let result = connect(&lab.a.ns, lab.b.addr(v6, 5999), Duration::from_secs(2));
    let err = result.expect_err("nothing listens on 5999");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let (c, _) = link(&sample(&mut probe), &lab.a, &lab.b, v6);
    assert_eq!(c.resets_rx, 1, "{c:?}");
    assert_eq!(c.syn_retrans, 0, "{c:?}");
}

/// Everything the agent logs through `tracing` on this thread, as text.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The one kernel failure path that can be made to fire on purpose: nobody reads the
/// urgent ring (256 KiB, ~4,700 events), and every refused connect sends two urgent
/// events (Reset, FailedConnect) into it, so it fills and the program logs its failed
/// output. The record must reach the agent's tracing output under the kernel target.
///
/// Connects are paced below the in-kernel rate limit (64 events per 10 ms per CPU):
/// faster, most events would be dropped by the limit and never reach the ring.
#[test]
fn a_full_urgent_ring_is_reported_in_the_kernel_log() {
    const BATCH: usize = 1_000;
    const MAX_BATCHES: usize = 10;
    /// 16 connects (32 events) per 10 ms: half the limit of one CPU.
    const CONNECTS_PER_PAUSE: usize = 16;
    const PAUSE: Duration = Duration::from_millis(10);
    let captured = CapturedLog::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let captured = captured.clone();
            move || captured.clone()
        })
        .with_ansi(false)
        .finish();
    let _guard = tracing_subscriber::util::SubscriberInitExt::set_default(subscriber);
    let lab = Lab::new();
    let mut probe = attach();
    let to = lab.b.addr(false, 5999);
    let mut refused = 0;
    for _ in 0..MAX_BATCHES {
        refused += lab
            .a
            .ns
            .run(move || {
                let mut refused = 0;
                for i in 0..BATCH {
                    if i % CONNECTS_PER_PAUSE == 0 {
                        std::thread::sleep(PAUSE);
                    }
                    if TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_err() {
                        refused += 1;
                    }
                }
                refused
            })
            .join()
            .unwrap();
        sample(&mut probe);
        if captured.text().contains("URGENT ring buffer output") {
            break;
        }
    }
    let text = captured.text();
    let line = text
        .lines()
        .find(|l| l.contains("URGENT ring buffer output"))
        .unwrap_or_else(|| {
            panic!("no kernel log of the full ring after {refused} refused connects:\n{text}")
        });
    assert!(
        line.contains(" WARN ") && line.contains("faultline::kernel"),
        "{line}"
    );
    assert!(probe.urgent_dropped().unwrap() > 0);
}

#[test]
fn loss_is_counted_on_the_lossy_link_only_v4() {
    loss_is_counted_on_the_lossy_link_only(false);
}

#[test]
fn loss_is_counted_on_the_lossy_link_only_v6() {
    loss_is_counted_on_the_lossy_link_only(true);
}

#[test]
fn blackhole_counts_rtos_and_progress_stops_v4() {
    blackhole_counts_rtos_and_progress_stops(false);
}

#[test]
fn blackhole_counts_rtos_and_progress_stops_v6() {
    blackhole_counts_rtos_and_progress_stops(true);
}

#[test]
fn a_one_way_fault_stops_acks_but_not_segments_received_v4() {
    a_one_way_fault_stops_acks_but_not_segments_received(false);
}

#[test]
fn a_one_way_fault_stops_acks_but_not_segments_received_v6() {
    a_one_way_fault_stops_acks_but_not_segments_received(true);
}

#[test]
fn heartbeats_are_counted_apart_from_loss_v4() {
    heartbeats_are_counted_apart_from_loss(false);
}

#[test]
fn heartbeats_are_counted_apart_from_loss_v6() {
    heartbeats_are_counted_apart_from_loss(true);
}

#[test]
fn connect_to_blackhole_retries_syn_then_fails_v4() {
    connect_to_blackhole_retries_syn_then_fails(false);
}

#[test]
fn connect_to_blackhole_retries_syn_then_fails_v6() {
    connect_to_blackhole_retries_syn_then_fails(true);
}

#[test]
fn closed_port_gives_a_reset_v4() {
    closed_port_gives_a_reset(false);
}

#[test]
fn closed_port_gives_a_reset_v6() {
    closed_port_gives_a_reset(true);
}

#[test]
fn queueing_delay_moves_the_rtt_histogram_up() {
    let lab = Lab::new();
    let _sink = Sink::start(&lab.b.ns, lab.b.addr(false, PORT));
    let mut probe = attach();
    sample(&mut probe);
    bulk(&lab.a.ns, lab.b.addr(false, PORT), Duration::from_secs(2))
        .join()
        .unwrap();
    let (_, fast) = link(&sample(&mut probe), &lab.a, &lab.b, false);

    lab.shape_to("b", "20mbit");
    bulk(&lab.a.ns, lab.b.addr(false, PORT), Duration::from_secs(3))
        .join()
        .unwrap();
    let (_, slow) = link(&sample(&mut probe), &lab.a, &lab.b, false);

    let fast_p50 = fast.quantile_us(0.5).expect("RTT samples without shaping");
    let slow_p50 = slow.quantile_us(0.5).expect("RTT samples with shaping");
    assert!(
        slow_p50 >= 4 * fast_p50 && slow_p50 >= 1024,
        "queueing delay must raise the RTT: p50 {fast_p50} µs unshaped, {slow_p50} µs shaped"
    );
}

#[test]
fn the_kernel_keeps_only_links_of_this_hosts_addresses() {
    let lab = Lab::new();
    let _sinks: Vec<Sink> = [false, true]
        .into_iter()
        .map(|v6| Sink::start(&lab.b.ns, lab.b.addr(v6, PORT)))
        .collect();
    let mut probe = Probe::attach(&ProbeOptions {
        local_addresses: vec![lab.a.v4, lab.a.v6],
        ..ProbeOptions::default()
    })
    .unwrap_or_else(|e| panic!("attach probe: {e}"));
    sample(&mut probe);
    // a and c both send to b: a's links are its own; b's ends of them and c's links
    // are other hosts'.
    for from in [&lab.a, &lab.c] {
        for v6 in [false, true] {
            bulk(&from.ns, lab.b.addr(v6, PORT), Duration::from_millis(200))
                .join()
                .unwrap();
        }
    }
    let samples = sample(&mut probe);
    for v6 in [false, true] {
        let (own, _) = link(&samples, &lab.a, &lab.b, v6);
        assert!(
            own.progress_segs > 0 && own.acked_segs > 0,
            "a to b (v6 {v6}): {own:?}"
        );
        for (from, to) in [(&lab.b, &lab.a), (&lab.c, &lab.b), (&lab.b, &lab.c)] {
            let (other, _) = link(&samples, from, to, v6);
            assert_eq!(other, LinkCounters::default(), "not a's link (v6 {v6})");
        }
    }
    let foreign: Vec<_> = samples
        .iter()
        .filter(|s| s.link.local != lab.a.v4 && s.link.local != lab.a.v6)
        .map(|s| s.link)
        .collect();
    assert!(
        foreign.is_empty(),
        "links of other addresses kept: {foreign:?}"
    );
}

/// The lab's links in a table of the probe's, keyed by their remote address: the
/// host's other connections (its own control traffic) move while a test reads.
fn lab_links<T: Copy>(
    lab: &Lab,
    table: &std::collections::HashMap<faultline_ebpf::LinkKey, T>,
) -> Vec<([u8; 16], [u8; 16], T)> {
    let ours: Vec<[u8; 16]> = [&lab.a, &lab.b, &lab.c]
        .iter()
        .flat_map(|h| [key_bytes(h.v4), key_bytes(h.v6)])
        .collect();
    let mut links: Vec<_> = table
        .iter()
        .filter(|(k, _)| ours.contains(&k.local) && ours.contains(&k.remote))
        .map(|(k, v)| (k.local, k.remote, *v))
        .collect();
    links.sort_by_key(|&(local, remote, _)| (local, remote));
    links
}

/// An address as the kernel's key holds it: IPv4 in the first four bytes.
fn key_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[test]
fn links_read_in_batches_are_the_links_read_one_by_one() {
    let lab = Lab::new();
    let sinks: Vec<Sink> = [
        (&lab.b, false),
        (&lab.b, true),
        (&lab.c, false),
        (&lab.c, true),
    ]
    .into_iter()
    .map(|(h, v6)| Sink::start(&h.ns, h.addr(v6, PORT)))
    .collect();
    let mut probe = attach();
    for (to, v6) in [
        (&lab.b, false),
        (&lab.b, true),
        (&lab.c, false),
        (&lab.c, true),
    ] {
        bulk(&lab.a.ns, to.addr(v6, PORT), Duration::from_millis(200))
            .join()
            .unwrap();
    }
    drop(sinks);
    // Let the closing segments land: the links must be still while they are read.
    std::thread::sleep(Duration::from_millis(300));
    let one_by_one = lab_links(&lab, &probe.totals_one_by_one().unwrap());
    assert!(
        one_by_one.len() >= 8,
        "a talked to b and c over v4 and v6, both ways: {} links",
        one_by_one.len()
    );
    assert!(
        one_by_one
            .iter()
            .all(|(_, _, t)| t.counters.progress_segs > 0)
    );
    // A few links per call: the table is read over several calls, and a bucket may
    // hold more links than one asks for.
    for per_call in [1, 2, 3, 1024] {
        let batched = lab_links(&lab, &probe.totals_in_calls_of(per_call).unwrap());
        assert_eq!(batched, one_by_one, "{per_call} link(s) per call");
    }
}

#[test]
fn a_second_probe_does_not_disturb_the_first() {
    let lab = Lab::new();
    let _sink = Sink::start(&lab.b.ns, lab.b.addr(false, PORT));
    let mut first = attach();
    sample(&mut first);
    let mut second = attach();
    bulk(&lab.a.ns, lab.b.addr(false, PORT), Duration::from_secs(1))
        .join()
        .unwrap();
    let (seen_by_first, _) = link(&sample(&mut first), &lab.a, &lab.b, false);
    let (seen_by_second, _) = link(&sample(&mut second), &lab.a, &lab.b, false);
    assert!(seen_by_first.progress_segs > 0 && seen_by_second.progress_segs > 0);
    // Both saw the same segments, each in its own maps.
    let diff = seen_by_first
        .progress_segs
        .abs_diff(seen_by_second.progress_segs);
    assert!(
        diff * 100 <= seen_by_first.progress_segs,
        "{seen_by_first:?} vs {seen_by_second:?}"
    );

    drop(second);
    bulk(&lab.a.ns, lab.b.addr(false, PORT), Duration::from_secs(1))
        .join()
        .unwrap();
    let (after, _) = link(&sample(&mut first), &lab.a, &lab.b, false);
    assert!(
        after.progress_segs > 0,
        "the first probe keeps counting after the second detached"
    );
}

/// A copy of this kernel's format files with one field renamed.
fn fake_tracefs(dir: &Path, event: &str, from: &str, to: &str) {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/fixtures");
    for (group, name) in [
        ("tcp", "tcp_retransmit_skb"),
        ("tcp", "tcp_receive_reset"),
        ("sock", "inet_sock_set_state"),
        ("tcp", "tcp_probe"),
    ] {
        let target = dir.join("events").join(group).join(name);
        std::fs::create_dir_all(&target).unwrap();
        let mut text = std::fs::read_to_string(fixtures.join(format!("{name}.format"))).unwrap();
        if name == event {
            text = text.replace(from, to);
        }
        std::fs::write(target.join("format"), text).unwrap();
    }
}

#[test]
fn a_malformed_tracepoint_format_refuses_to_start_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("faultline-tracefs-{}", std::process::id()));
    fake_tracefs(&dir, "tcp_probe", "srtt;", "smoothed_rtt;");
    let options = ProbeOptions {
        tracefs: dir.clone(),
        ..ProbeOptions::default()
    };
    let result = Probe::attach(&options);
    std::fs::remove_dir_all(&dir).unwrap();
    let Err(err) = result else {
        panic!("a format without `srtt` must be refused")
    };
    let msg = err.to_string();
    assert!(
        msg.contains("tcp_probe/format") && msg.contains("`srtt`"),
        "{msg}"
    );
}
