//! Real gRPC health subscribers: what a load balancer next to an agent would see.
//!
//! One subscriber per chosen host: a thread inside the host's namespace running a
//! single-threaded tokio runtime (so every socket it makes is made there), one HTTP/2
//! connection to the host's own agent, and one grpc.health.v1 Watch stream per entity
//! service name. Every status it receives is logged with its arrival time; a broken
//! stream is reopened after [`RETRY`]. Beside them, one faultline.v1.Verdicts Watch
//! stream per subscriber records every verdict change (state, level, `local_fault`),
//! which health cannot show: DEGRADED, and who names itself cut off. The lab never
//! judges what it receives here: it only records it for the scenario to check.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use faultline_proto::{
    health::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    },
    v1::{Level, State, WatchRequest, verdicts_client::VerdictsClient, watch_event::Event},
};
use tonic::transport::{Channel, Endpoint};

use super::traffic::enter;

const RETRY: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// One status received by one subscriber.
#[derive(Clone, Copy, Debug)]
pub(super) struct Status {
    pub(super) at: Instant,
    /// Index into the lab's subscriber hosts.
    pub(super) subscriber: usize,
    /// Index into the service names.
    pub(super) service: usize,
    pub(super) status: ServingStatus,
}

#[derive(Default)]
pub(super) struct StatusLog {
    statuses: Mutex<Vec<Status>>,
}

impl StatusLog {
    fn push(&self, subscriber: usize, service: usize, status: ServingStatus) {
        let mut all = self.statuses.lock().expect("no panics under the lock");
        let at = Instant::now();
        all.push(Status {
            at,
            subscriber,
            service,
            status,
        });
    }

    /// Logs a status received at `at` (a moment already past), keeping the log sorted.
    pub(super) fn push_at(
        &self,
        at: Instant,
        subscriber: usize,
        service: usize,
        status: ServingStatus,
    ) {
        let mut all = self.statuses.lock().expect("no panics under the lock");
        let i = all.partition_point(|s| s.at <= at);
        all.insert(
            i,
            Status {
                at,
                subscriber,
                service,
                status,
            },
        );
    }

    /// Everything received so far (sorted by time).
    pub(super) fn all(&self) -> Vec<Status> {
        self.statuses
            .lock()
            .expect("no panics under the lock")
            .clone()
    }
}

/// One verdict received by one subscriber over faultline.v1.Verdicts Watch.
#[derive(Clone, Debug)]
pub(super) struct VerdictSeen {
    pub(super) at: Instant,
    pub(super) subscriber: usize,
    pub(super) level: Level,
    pub(super) path: String,
    pub(super) state: State,
    pub(super) local_fault: bool,
}

#[derive(Default)]
pub(super) struct VerdictLog {
    verdicts: Mutex<Vec<VerdictSeen>>,
}

impl VerdictLog {
    fn push(&self, v: VerdictSeen) {
        self.verdicts
            .lock()
            .expect("no panics under the lock")
            .push(v);
    }

    /// Everything received so far (sorted by time).
    pub(super) fn all(&self) -> Vec<VerdictSeen> {
        self.verdicts
            .lock()
            .expect("no panics under the lock")
            .clone()
    }
}

/// The subscriber threads; stopped on drop.
pub(super) struct Subscribers {
    pub(super) log: Arc<StatusLog>,
    pub(super) verdicts: Arc<VerdictLog>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Subscribers {
    /// `hosts`: (namespace, agent endpoint) per subscriber.
    pub(super) fn start(hosts: &[(String, String)], services: &[String]) -> Self {
        let mut subs = Self {
            log: Arc::default(),
            verdicts: Arc::default(),
            stop: Arc::default(),
            threads: Vec::new(),
        };
        for (i, (ns, url)) in hosts.iter().enumerate() {
            let (ns, url, services) = (ns.clone(), url.clone(), services.to_vec());
            let (log, verdicts, stop) =
                (subs.log.clone(), subs.verdicts.clone(), subs.stop.clone());
            subs.threads.push(std::thread::spawn(move || {
                if enter(&ns).is_err() {
                    return;
                }
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(subscribe(i, url, services, log, verdicts, stop));
            }));
        }
        subs
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

async fn subscribe(
    me: usize,
    url: String,
    services: Vec<String>,
    log: Arc<StatusLog>,
    verdicts: Arc<VerdictLog>,
    stop: Arc<AtomicBool>,
) {
    let Ok(endpoint) = Endpoint::from_shared(url) else {
        return;
    };
    // Lazy: the channel connects (and reconnects) on use, inside this namespace.
    let channel = endpoint.connect_timeout(CONNECT_TIMEOUT).connect_lazy();
    let mut tasks = tokio::task::JoinSet::new();
    for (s, name) in services.into_iter().enumerate() {
        let (channel, log, stop) = (channel.clone(), log.clone(), stop.clone());
        tasks.spawn(watch(me, s, name, channel, log, stop));
    }
    tasks.spawn(watch_verdicts(me, channel, verdicts, stop.clone()));
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tasks.abort_all();
}

async fn watch(
    me: usize,
    service: usize,
    name: String,
    channel: Channel,
    log: Arc<StatusLog>,
    stop: Arc<AtomicBool>,
) {
    let mut client = HealthClient::new(channel);
    while !stop.load(Ordering::Relaxed) {
        let request = HealthCheckRequest {
            service: name.clone(),
        };
        if let Ok(response) = client.watch(request).await {
            let mut stream = response.into_inner();
            while let Ok(Some(msg)) = stream.message().await {
                let status = ServingStatus::try_from(msg.status).unwrap_or(ServingStatus::Unknown);
                log.push(me, service, status);
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn watch_verdicts(me: usize, channel: Channel, log: Arc<VerdictLog>, stop: Arc<AtomicBool>) {
    let mut client = VerdictsClient::new(channel);
    while !stop.load(Ordering::Relaxed) {
        let request = WatchRequest {
            filter: None,
            resume_after: None,
            incarnation: None,
        };
        if let Ok(response) = client.watch(request).await {
            let mut stream = response.into_inner();
            while let Ok(Some(event)) = stream.message().await {
                let at = Instant::now();
                let verdicts = match event.event {
                    Some(Event::Snapshot(s)) => s.verdicts,
                    Some(Event::Change(c)) => c.verdict.into_iter().collect(),
                    None => Vec::new(),
                };
                for v in verdicts {
                    let entity = v.entity.unwrap_or_default();
                    log.push(VerdictSeen {
                        at,
                        subscriber: me,
                        level: Level::try_from(entity.level).unwrap_or(Level::Unspecified),
                        path: entity.path,
                        state: State::try_from(v.state).unwrap_or(State::Unspecified),
                        local_fault: v.local_fault,
                    });
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}
