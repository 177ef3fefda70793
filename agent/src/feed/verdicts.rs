//! `faultline.v1.Verdicts`: a snapshot, then every change in order, per subscriber.
//!
//! Each Watch gets a task that reads the hub's broadcast and writes into a bounded
//! queue towards the client. A client that stops reading fills its queue; its task then
//! waits, its broadcast receiver falls behind, and when it reads again it gets a fresh
//! snapshot (the latest state of every entity) instead of the changes it missed. The
//! detector and the other subscribers never wait for it.
use std::sync::Arc;

use faultline_proto::v1::{self as pb, verdicts_server::Verdicts};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    filter::Filter,
    hub::{Hub, Numbered, Start},
    listener::{ServerCounters, StreamKind, StreamSlots},
};

pub(crate) struct VerdictService {
    hub: Arc<Hub>,
    /// Messages queued per subscriber before it counts as slow.
    queue: usize,
    streams: StreamSlots,
}

impl VerdictService {
    pub(crate) fn new(hub: Arc<Hub>, queue: usize, streams: StreamSlots) -> Self {
        Self {
            hub,
            queue: queue.max(1),
            streams,
        }
    }
}

type EventResult = Result<pb::WatchEvent, Status>;

#[tonic::async_trait]
impl Verdicts for VerdictService {
    type WatchStream = ReceiverStream<EventResult>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        let filter = Filter::parse(request.filter.as_ref())?;
        let slot = self.streams.take(StreamKind::Verdicts)?;
        let (start, live) = self
            .hub
            .subscribe(request.resume_after, request.incarnation);
        let (tx, rx) = mpsc::channel(self.queue);
        let subscriber = Subscriber {
            hub: self.hub.clone(),
            filter,
            tx,
            counters: self.streams.counters(),
        };
        let forward = subscriber.forward(start, request.resume_after.unwrap_or(0), live);
        tokio::spawn(async move {
            forward.await;
            drop(slot);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::VerdictSnapshot>, Status> {
        let filter = Filter::parse(request.into_inner().filter.as_ref())?;
        let (sequence, verdicts) = self.hub.snapshot();
        Ok(Response::new(snapshot(&filter, sequence, &verdicts)))
    }
}

fn snapshot(filter: &Filter, sequence: u64, verdicts: &[Numbered]) -> pb::VerdictSnapshot {
    pb::VerdictSnapshot {
        sequence,
        verdicts: verdicts
            .iter()
            .filter(|n| filter.matches(&n.verdict))
            .map(|n| (*n.wire).clone())
            .collect(),
    }
}

struct Subscriber {
    hub: Arc<Hub>,
    filter: Filter,
    tx: mpsc::Sender<EventResult>,
    counters: Arc<ServerCounters>,
}

impl Subscriber {
    async fn forward(
        self,
        start: Start,
        resume_after: u64,
        mut live: tokio::sync::broadcast::Receiver<Numbered>,
    ) {
        let mut last = match start {
            Start::Resume(missed) => {
                let mut last = resume_after;
                let mut first = true;
                for n in &missed {
                    last = n.sequence;
                    if self.filter.matches(&n.verdict) {
                        if !self.send(self.change(n, first)).await {
                            return;
                        }
                        first = false;
                    }
                }
                // Nothing matching was missed: say so, so the client knows it resumed.
                if first
                    && !self
                        .send(pb::WatchEvent {
                            event: None,
                            resumed: true,
                            incarnation: self.hub.incarnation(),
                        })
                        .await
                {
                    return;
                }
                last
            }
            Start::Snapshot { sequence, verdicts } => {
                if !self.send_snapshot(sequence, &verdicts).await {
                    return;
                }
                sequence
            }
        };
        loop {
            let next = tokio::select! {
                () = self.tx.closed() => return,
                next = live.recv() => next,
            };
            match next {
                Ok(n) if n.sequence <= last => {}
                Ok(n) => {
                    last = n.sequence;
                    if self.filter.matches(&n.verdict) {
                        if !self.send(self.change(&n, false)).await {
                            return;
                        }
                        self.counters
                            .verdict_to_subscriber
                            .record(n.published.elapsed());
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    // Too slow: the latest state of every entity replaces the backlog.
                    let (sequence, verdicts) = self.hub.snapshot();
                    if !self.send_snapshot(sequence, &verdicts).await {
                        return;
                    }
                    last = sequence;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    fn change(&self, n: &Numbered, resumed: bool) -> pb::WatchEvent {
        pb::WatchEvent {
            event: Some(pb::watch_event::Event::Change(pb::Change {
                sequence: n.sequence,
                verdict: Some((*n.wire).clone()),
            })),
            resumed,
            incarnation: self.hub.incarnation(),
        }
    }

    async fn send_snapshot(&self, sequence: u64, verdicts: &[Numbered]) -> bool {
        let event = pb::WatchEvent {
            event: Some(pb::watch_event::Event::Snapshot(snapshot(
                &self.filter,
                sequence,
                verdicts,
            ))),
            resumed: false,
            incarnation: self.hub.incarnation(),
        };
        self.send(event).await
    }

    /// False when the client is gone.
    async fn send(&self, event: pb::WatchEvent) -> bool {
        self.tx.send(Ok(event)).await.is_ok()
    }
}
