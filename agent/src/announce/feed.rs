//! Following one agent's `faultline.v1.Verdicts` feed: a snapshot, then every change,
//! reconnecting with backoff and resuming where it left off. A connection that stops
//! answering HTTP/2 pings is dropped within about a second, so a feed into a
//! blackhole is known lost instead of trusted silent.
use std::time::{Duration, Instant};

use faultline_proto::v1::{self as pb, verdicts_client::VerdictsClient, watch_event::Event};
use tokio::sync::mpsc;
use tonic::transport::Endpoint;

use crate::watch::{MAX_SNAPSHOT, Resume};

/// What a follower reports, tagged with the agent's index in the config.
#[derive(Debug)]
pub(super) struct FeedUpdate {
    pub(super) agent: usize,
    pub(super) at: Instant,
    pub(super) event: FeedEvent,
}

#[derive(Debug)]
pub(super) enum FeedEvent {
    /// Every current verdict (at connection, or after falling behind).
    Snapshot(Vec<pb::Verdict>),
    /// Nothing was missed since the last stream: its verdicts still hold.
    Resumed,
    Change(Box<pb::Verdict>),
    /// The stream ended or failed; the follower reconnects.
    Lost(String),
}

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Follows `endpoint` until the receiver is dropped.
pub(super) async fn follow(
    agent: usize,
    endpoint: String,
    tls_ca: Option<std::path::PathBuf>,
    tx: mpsc::Sender<FeedUpdate>,
) {
    let mut resume_after = Resume::default();
    let mut backoff = BACKOFF_FIRST;
    loop {
        let connect = crate::tls::endpoint_trusting(&endpoint, tls_ca.as_deref());
        let why = match stream(agent, connect, &mut resume_after, &tx, &mut backoff).await {
            Ok(()) => "stream ended".to_owned(),
            Err(status) => status.message().to_owned(),
        };
        let update = FeedUpdate {
            agent,
            at: Instant::now(),
            event: FeedEvent::Lost(why),
        };
        if tx.send(update).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn stream(
    agent: usize,
    endpoint: Result<Endpoint, String>,
    resume_after: &mut Resume,
    tx: &mpsc::Sender<FeedUpdate>,
    backoff: &mut Duration,
) -> Result<(), tonic::Status> {
    let channel = endpoint
        .map_err(tonic::Status::invalid_argument)?
        .connect_timeout(Duration::from_secs(1))
        .http2_keep_alive_interval(Duration::from_millis(300))
        .keep_alive_timeout(Duration::from_millis(700))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    // Hosts are not announced for: their verdicts are most of the traffic.
    let request = resume_after.request(pb::Filter {
        levels: [pb::Level::Rack, pb::Level::Cabinet, pb::Level::Site]
            .map(|l| l as i32)
            .to_vec(),
        path_prefix: String::new(),
    });
    let mut stream = VerdictsClient::new(channel)
        .max_decoding_message_size(MAX_SNAPSHOT)
        .watch(request)
        .await?
        .into_inner();
    while let Some(message) = stream.message().await? {
        *backoff = BACKOFF_FIRST;
        resume_after.note(&message);
        let event = match message.event {
            Some(Event::Snapshot(s)) => FeedEvent::Snapshot(s.verdicts),
            Some(Event::Change(c)) => {
                let resumed = message.resumed;
                if resumed {
                    send(tx, agent, FeedEvent::Resumed).await?;
                }
                match c.verdict {
                    Some(v) => FeedEvent::Change(Box::new(v)),
                    None => continue,
                }
            }
            None if message.resumed => FeedEvent::Resumed,
            None => continue,
        };
        send(tx, agent, event).await?;
    }
    Ok(())
}

async fn send(
    tx: &mpsc::Sender<FeedUpdate>,
    agent: usize,
    event: FeedEvent,
) -> Result<(), tonic::Status> {
    tx.send(FeedUpdate {
        agent,
        at: Instant::now(),
        event,
    })
    .await
    .map_err(|_| tonic::Status::cancelled("announcer stopped"))
}
