//! grpc.health.v1 over Faultline's entities, to the spec (Check, Watch, List), so any
//! stock gRPC load balancer or health checker can act on verdicts.
//!
//! Names: `""` is the agent itself; `<level>/<path>` an entity (`rack/dc-a/c1/r1`).
//! NOT_SERVING exactly when the entity is FAILED. A name not in the topology (nor a
//! host the agent has met) is NOT_FOUND for Check and SERVICE_UNKNOWN for Watch, whose
//! stream stays open and reports the entity once it appears.
use std::{collections::BTreeMap, sync::Arc};

use faultline_proto::health::{
    self as pb, HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
    health_check_response::ServingStatus, health_server::Health,
};
use tokio::sync::{broadcast::error::RecvError, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    SharedTopology,
    hub::Hub,
    listener::{StreamKind, StreamSlots},
};
use crate::{
    detector::State,
    topology::{Level, Topology},
};

pub(crate) struct HealthService {
    hub: Arc<Hub>,
    topology: SharedTopology,
    /// The agent's own status: true while serving, false once shutting down.
    agent: watch::Receiver<bool>,
    streams: StreamSlots,
}

impl HealthService {
    pub(crate) fn new(
        hub: Arc<Hub>,
        topology: SharedTopology,
        agent: watch::Receiver<bool>,
        streams: StreamSlots,
    ) -> Self {
        Self {
            hub,
            topology,
            agent,
            streams,
        }
    }

    /// The status of `name`, or None if the name is unknown.
    fn status(&self, name: &str) -> Option<ServingStatus> {
        if name.is_empty() {
            return Some(if *self.agent.borrow() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            });
        }
        if let Some(v) = self.hub.latest(name) {
            return Some(if v.state == State::Failed {
                ServingStatus::NotServing
            } else {
                ServingStatus::Serving
            });
        }
        in_topology(&self.topology.get(), name).then_some(ServingStatus::Serving)
    }
}

/// Is `level/path` an entity of the topology?
fn in_topology(topology: &Topology, name: &str) -> bool {
    let Some((level, path)) = name.split_once('/') else {
        return false;
    };
    let Some(level) = Level::parse(level) else {
        return false;
    };
    topology
        .find(path)
        .is_some_and(|id| topology.entity(id).level == level)
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status.into(),
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let name = request.into_inner().service;
        match self.status(&name) {
            Some(status) => Ok(Response::new(response(status))),
            None => Err(Status::not_found(format!(
                "unknown service `{name}`: not an entity of the topology"
            ))),
        }
    }

    type WatchStream = ReceiverStream<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let name = request.into_inner().service;
        let slot = self.streams.take(StreamKind::Health)?;
        let (tx, rx) = mpsc::channel(4);
        // Subscribe before reading the current status, so no change falls in between.
        let mut live = self.hub.live();
        let mut agent = self.agent.clone();
        let me = Self::new(
            self.hub.clone(),
            self.topology.clone(),
            self.agent.clone(),
            self.streams.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            let current = |me: &Self| me.status(&name).unwrap_or(ServingStatus::ServiceUnknown);
            let mut last = current(&me);
            if tx.send(Ok(response(last))).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    changed = agent.changed(), if name.is_empty() => if changed.is_err() { return },
                    next = live.recv() => match next {
                        Ok(n) if n.verdict.entity.service_name() != name => continue,
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                }
                let now = current(&me);
                if now != last {
                    last = now;
                    if tx.send(Ok(response(now))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list(
        &self,
        _request: Request<HealthListRequest>,
    ) -> Result<Response<HealthListResponse>, Status> {
        let mut statuses = BTreeMap::new();
        statuses.insert(
            String::new(),
            self.status("").unwrap_or(ServingStatus::Unknown),
        );
        let topology = self.topology.get();
        for e in topology.entities() {
            let name = format!("{}/{}", e.level, e.path);
            let status = self.status(&name).unwrap_or(ServingStatus::Serving);
            statuses.insert(name, status);
        }
        // Hosts the agent met that the topology does not list.
        for n in self.hub.snapshot().1 {
            let v = &n.verdict;
            let name = v.entity.service_name();
            let status = if v.state == State::Failed {
                ServingStatus::NotServing
            } else {
                ServingStatus::Serving
            };
            statuses.insert(name, status);
        }
        Ok(Response::new(pb::HealthListResponse {
            statuses: statuses
                .into_iter()
                .map(|(k, s)| (k, response(s)))
                .collect(),
        }))
    }
}
