//! Real gRPC health subscribers: what a load balancer next to an agent would see.
//!
//! One subscriber per chosen host: a thread inside the host's namespace running a
//! single-threaded tokio runtime (so every socket it makes is made there), one HTTP/2
//! connection to the host's own agent, and one grpc.health.v1 Watch stream per entity
//! service name. Every status it receives is logged with its arrival time; a broken
//! stream is reopened after [`RETRY`]. The lab never judges the statuses here: it only
//! records them for the scenario to measure.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use faultline_proto::health::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
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

    /// Everything received so far (sorted by time).
    pub(super) fn all(&self) -> Vec<Status> {
        self.statuses
            .lock()
            .expect("no panics under the lock")
            .clone()
    }
}

/// The subscriber threads; stopped on drop.
pub(super) struct Subscribers {
    pub(super) log: Arc<StatusLog>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Subscribers {
    /// `hosts`: (namespace, agent endpoint) per subscriber.
    pub(super) fn start(hosts: &[(String, String)], services: &[String]) -> Self {
        let mut subs = Self {
            log: Arc::default(),
            stop: Arc::default(),
            threads: Vec::new(),
        };
        for (i, (ns, url)) in hosts.iter().enumerate() {
            let (ns, url, services) = (ns.clone(), url.clone(), services.to_vec());
            let (log, stop) = (subs.log.clone(), subs.stop.clone());
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
                rt.block_on(subscribe(i, url, services, log, stop));
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
