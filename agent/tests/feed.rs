//! The gRPC feed in-process on 127.0.0.1:0, driven by scripted verdicts, with real
//! tonic clients: snapshot then ordered changes, resume, slow subscribers, fan-out,
//! bad requests, and grpc.health.v1.
use std::time::Duration;

use faultline::{
    FeedLimits,
    detector::{State, Verdict},
    topology::Level,
};
use faultline_integration::feed::FeedServer;
use faultline_proto::{
    health::{
        HealthCheckRequest, HealthListRequest, health_check_response::ServingStatus,
        health_client::HealthClient,
    },
    v1::{self as pb, verdicts_client::VerdictsClient, watch_event::Event},
};
use tonic::{Code, transport::Channel};

const TOPOLOGY: &str = "[[site]]\nname = \"dc-a\"\n[[cabinet]]\nname = \"c1\"\nsite = \"dc-a\"\n\
    [[rack]]\nname = \"r1\"\ncabinet = \"dc-a/c1\"\n[[rack]]\nname = \"r2\"\ncabinet = \"dc-a/c1\"\n";

fn verdict(level: Level, path: &str, state: State) -> Verdict {
    Verdict::scripted(level, path, state)
}

fn rack(n: u32, state: State) -> Verdict {
    verdict(Level::Rack, &format!("dc-a/c1/r{n}"), state)
}

struct Server(FeedServer);

impl std::ops::Deref for Server {
    type Target = FeedServer;
    fn deref(&self) -> &FeedServer {
        &self.0
    }
}

impl Server {
    async fn start(limits: FeedLimits) -> Self {
        Self(FeedServer::start(TOPOLOGY, limits).await)
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn client(&self) -> VerdictsClient<Channel> {
        VerdictsClient::new(self.channel().await)
    }
}

fn watch(levels: &[pb::Level], prefix: &str, resume_after: Option<u64>) -> pb::WatchRequest {
    pb::WatchRequest {
        filter: Some(pb::Filter {
            levels: levels.iter().map(|l| *l as i32).collect(),
            path_prefix: prefix.into(),
        }),
        resume_after,
        incarnation: None,
    }
}

async fn next(stream: &mut tonic::Streaming<pb::WatchEvent>) -> pb::WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .expect("stream ok")
        .expect("stream open")
}

fn change(e: &pb::WatchEvent) -> (u64, String, pb::State) {
    match &e.event {
        Some(Event::Change(c)) => {
            let v = c.verdict.as_ref().unwrap();
            (
                c.sequence,
                v.entity.as_ref().unwrap().path.clone(),
                v.state(),
            )
        }
        other => panic!("expected a change, got {other:?}"),
    }
}

#[tokio::test]
async fn snapshot_first_then_every_change_in_order() {
    let server = Server::start(FeedLimits::default()).await;
    server
        .feed
        .publish(&[rack(1, State::Healthy), rack(2, State::Healthy)]);
    let mut client = server.client().await;
    let mut stream = client
        .watch(watch(&[], "", None))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await;
    let Some(Event::Snapshot(snap)) = first.event else {
        panic!("snapshot first: {first:?}")
    };
    assert_eq!(snap.sequence, 2);
    assert_eq!(snap.verdicts.len(), 2);
    assert!(!first.resumed);

    server.feed.publish(&[rack(1, State::Failed)]);
    server
        .feed
        .publish(&[rack(2, State::Degraded), rack(1, State::Healthy)]);
    let got: Vec<_> = [
        next(&mut stream).await,
        next(&mut stream).await,
        next(&mut stream).await,
    ]
    .iter()
    .map(change)
    .collect();
    assert_eq!(
        got,
        vec![
            (3, "dc-a/c1/r1".into(), pb::State::Failed),
            (4, "dc-a/c1/r2".into(), pb::State::Degraded),
            (5, "dc-a/c1/r1".into(), pb::State::Healthy),
        ]
    );
    // Unary snapshot agrees.
    let snap = client
        .snapshot(pb::SnapshotRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(snap.sequence, 5);
    let r1 = snap
        .verdicts
        .iter()
        .find(|v| v.entity.as_ref().unwrap().path == "dc-a/c1/r1")
        .unwrap();
    assert_eq!(r1.state(), pb::State::Healthy);
    assert_eq!(r1.reason, "scripted dc-a/c1/r1");
    assert!(r1.since.is_some());
}

#[tokio::test]
async fn filters_select_levels_and_path_prefixes() {
    let server = Server::start(FeedLimits::default()).await;
    server.feed.publish(&[
        rack(1, State::Failed),
        verdict(Level::Host, "dc-a/c1/r1/h1", State::Failed),
        verdict(Level::Rack, "dc-a/c10/r1", State::Failed),
    ]);
    let mut client = server.client().await;
    let snap = client
        .snapshot(pb::SnapshotRequest {
            filter: Some(pb::Filter {
                levels: vec![pb::Level::Rack as i32],
                path_prefix: "dc-a/c1".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let paths: Vec<_> = snap
        .verdicts
        .iter()
        .map(|v| v.entity.as_ref().unwrap().path.clone())
        .collect();
    assert_eq!(paths, vec!["dc-a/c1/r1".to_owned()]);
}

#[tokio::test]
async fn resume_gets_only_what_was_missed_or_a_flagged_snapshot() {
    let server = Server::start(FeedLimits {
        history: 3,
        ..FeedLimits::default()
    })
    .await;
    server.feed.publish(&[rack(1, State::Healthy)]);
    let mut client = server.client().await;
    // Missed 2 and 3, both still buffered: no snapshot, just them, flagged resumed.
    server
        .feed
        .publish(&[rack(1, State::Failed), rack(2, State::Failed)]);
    let mut stream = client
        .watch(watch(&[], "", Some(1)))
        .await
        .unwrap()
        .into_inner();
    let e = next(&mut stream).await;
    assert!(e.resumed);
    assert_eq!(change(&e).0, 2);
    assert_eq!(change(&next(&mut stream).await).0, 3);
    // Up to date: a lone `resumed` marker, then live changes.
    let mut stream = client
        .watch(watch(&[], "", Some(3)))
        .await
        .unwrap()
        .into_inner();
    let e = next(&mut stream).await;
    assert!(e.resumed && e.event.is_none(), "{e:?}");
    server.feed.publish(&[rack(2, State::Healthy)]);
    assert_eq!(change(&next(&mut stream).await).0, 4);
    // A gap beyond the history: a fresh snapshot, not flagged resumed.
    for _ in 0..5 {
        server.feed.publish(&[rack(1, State::Degraded)]);
    }
    let mut stream = client
        .watch(watch(&[], "", Some(2)))
        .await
        .unwrap()
        .into_inner();
    let e = next(&mut stream).await;
    assert!(!e.resumed);
    let Some(Event::Snapshot(snap)) = e.event else {
        panic!("{e:?}")
    };
    assert_eq!(snap.sequence, 9);
}

#[tokio::test]
async fn a_sequence_number_from_another_run_of_the_agent_gets_a_snapshot() {
    let server = Server::start(FeedLimits::default()).await;
    server
        .feed
        .publish(&[rack(1, State::Healthy), rack(2, State::Healthy)]);
    let mut client = server.client().await;
    let mut stream = client
        .watch(watch(&[], "", None))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await;
    let run = first.incarnation;
    assert_ne!(run, 0, "every event names the agent run");
    server.feed.publish(&[rack(1, State::Failed)]);
    assert_eq!(next(&mut stream).await.incarnation, run);
    // The same sequence number from this run resumes…
    let resume = |incarnation| pb::WatchRequest {
        incarnation: Some(incarnation),
        ..watch(&[], "", Some(2))
    };
    let mut stream = client.watch(resume(run)).await.unwrap().into_inner();
    let e = next(&mut stream).await;
    assert!(e.resumed && change(&e).0 == 3, "{e:?}");
    // …and from another run (the agent restarted, its numbers started over) it gets
    // the whole current state, not the changes after a number that meant something else.
    let mut stream = client.watch(resume(run + 1)).await.unwrap().into_inner();
    let e = next(&mut stream).await;
    assert!(!e.resumed, "{e:?}");
    let Some(Event::Snapshot(snap)) = e.event else {
        panic!("{e:?}")
    };
    assert_eq!((snap.sequence, snap.verdicts.len()), (3, 2));
}

#[tokio::test]
async fn a_stalled_subscriber_gets_the_latest_state_and_slows_no_one() {
    let server = Server::start(FeedLimits {
        history: 64,
        backlog: 32,
        queue: 4,
        ..FeedLimits::default()
    })
    .await;
    let mut client = server.client().await;
    let mut stalled = client
        .watch(watch(&[], "", None))
        .await
        .unwrap()
        .into_inner();
    let mut fast = client
        .watch(watch(&[], "", None))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        next(&mut stalled).await.event,
        Some(Event::Snapshot(_))
    ));
    assert!(matches!(
        next(&mut fast).await.event,
        Some(Event::Snapshot(_))
    ));

    // 2,000 changes over 100 entities, published in chunks of 16 that the fast reader
    // acknowledges; the stalled one reads nothing, and the publisher never waits for it.
    let (seen_tx, mut seen) = tokio::sync::watch::channel(0u64);
    let reader = tokio::spawn(async move {
        let mut last = 0;
        while last < 2000 {
            let e = next(&mut fast).await;
            let (seq, _, _) = change(&e);
            assert_eq!(
                seq,
                last + 1,
                "the fast subscriber sees every change in order"
            );
            last = seq;
            seen_tx.send_replace(seq);
        }
        last
    });
    // Each change carries ~1 KiB of reason, so 2,000 of them (2 MiB) overflow what the
    // transport buffers for a stream (~0.5 MiB) and the backlog has to be coalesced.
    let padding = "x".repeat(1024);
    for i in 0..2000u64 {
        let state = if i % 2 == 0 {
            State::Failed
        } else {
            State::Healthy
        };
        let mut v = verdict(Level::Host, &format!("dc-a/c1/r1/h{}", i % 100), state);
        v.reason.push_str(&padding);
        server.feed.publish(&[v]);
        if (i + 1) % 16 == 0 {
            seen.wait_for(|n| *n > i).await.unwrap();
        }
    }
    assert_eq!(reader.await.unwrap(), 2000);

    // The stalled one now reads: the changes that were queued (in its task, the HTTP/2
    // windows and the client), in order and without a gap, then a snapshot with the
    // final state of every entity instead of the rest. Replaying all 2,000 changes
    // would end the loop at the last one, without a snapshot.
    let mut snapshot = None;
    let mut queued = 0u64;
    while snapshot.is_none() && queued < 2000 {
        let e = next(&mut stalled).await;
        if let Some(Event::Snapshot(s)) = e.event {
            snapshot = Some(s);
        } else {
            let (seq, _, _) = change(&e);
            assert_eq!(
                seq,
                queued + 1,
                "queued changes arrive in order, without a gap"
            );
            queued = seq;
        }
    }
    let snap = snapshot.unwrap_or_else(|| {
        panic!("all {queued} changes were replayed: the backlog was never coalesced")
    });
    assert!(
        queued > 0,
        "the stalled subscriber had changes queued before it fell behind"
    );
    assert_eq!(snap.sequence, 2000);
    assert_eq!(snap.verdicts.len(), 100);
    // Entity h{k}'s last change was i = 1900 + k: FAILED for even k.
    for v in &snap.verdicts {
        let k: u32 = v
            .entity
            .as_ref()
            .unwrap()
            .path
            .rsplit('h')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let want = if k.is_multiple_of(2) {
            pb::State::Failed
        } else {
            pb::State::Healthy
        };
        assert_eq!(v.state(), want, "{v:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_all_receive_the_final_state() {
    let server = Server::start(FeedLimits::default()).await;
    // Ten connections with a hundred streams each.
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(1000);
    for _ in 0..10 {
        let channel = server.channel().await;
        for _ in 0..100 {
            let mut client = VerdictsClient::new(channel.clone());
            let ready = ready_tx.clone();
            tasks.push(tokio::spawn(async move {
                let mut stream = client
                    .watch(watch(&[], "", None))
                    .await
                    .unwrap()
                    .into_inner();
                assert!(matches!(
                    next(&mut stream).await.event,
                    Some(Event::Snapshot(_))
                ));
                ready.send(()).await.unwrap();
                loop {
                    let e = next(&mut stream).await;
                    if let (50, path, state) = change(&e) {
                        return (path, state);
                    }
                }
            }));
        }
    }
    for _ in 0..1000 {
        ready_rx.recv().await.unwrap();
    }
    for i in 1..=50u32 {
        let state = if i == 50 {
            State::Failed
        } else {
            State::Degraded
        };
        server.feed.publish(&[rack(i % 2 + 1, state)]);
    }
    for t in tasks {
        let (path, state) = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((path.as_str(), state), ("dc-a/c1/r1", pb::State::Failed));
    }
}

#[tokio::test]
async fn bad_requests_get_invalid_argument_naming_the_field() {
    let server = Server::start(FeedLimits::default()).await;
    let mut client = server.client().await;
    let cases = [
        (
            watch(&[pb::Level::Unspecified], "", None),
            "filter.levels[0]",
        ),
        (watch(&[], "/dc-a", None), "filter.path_prefix"),
        (watch(&[], &"x".repeat(5000), None), "at most 1024"),
    ];
    for (request, needle) in cases {
        let err = client.watch(request).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(needle), "{}", err.message());
    }
    let mut raw = watch(&[], "", None);
    raw.filter.as_mut().unwrap().levels.push(17);
    let err = client
        .snapshot(pb::SnapshotRequest { filter: raw.filter })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("17 is not a level"),
        "{}",
        err.message()
    );
}

async fn recv(
    s: &mut tonic::Streaming<faultline_proto::health::HealthCheckResponse>,
) -> ServingStatus {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("a status within 10 s")
        .unwrap()
        .unwrap()
        .status()
}

#[tokio::test]
async fn health_check_watch_and_list_follow_verdicts() {
    let server = Server::start(FeedLimits::default()).await;
    let mut health = HealthClient::new(server.channel().await);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let status =
        |r: tonic::Response<faultline_proto::health::HealthCheckResponse>| r.into_inner().status();

    assert_eq!(
        status(health.check(check("")).await.unwrap()),
        ServingStatus::Serving
    );
    assert_eq!(
        status(health.check(check("rack/dc-a/c1/r1")).await.unwrap()),
        ServingStatus::Serving
    );
    let err = health.check(check("rack/dc-a/c9/r9")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        health
            .check(check("cabinet/dc-a/c1/r1"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound,
        "the level is part of the name"
    );

    let mut watch = health
        .watch(check("rack/dc-a/c1/r2"))
        .await
        .unwrap()
        .into_inner();
    let mut unknown = health
        .watch(check("host/dc-a/c1/r2/10.0.0.9"))
        .await
        .unwrap()
        .into_inner();
    let mut agent = health.watch(check("")).await.unwrap().into_inner();
    assert_eq!(recv(&mut watch).await, ServingStatus::Serving);
    assert_eq!(recv(&mut unknown).await, ServingStatus::ServiceUnknown);
    assert_eq!(recv(&mut agent).await, ServingStatus::Serving);

    server.feed.publish(&[rack(1, State::Failed)]);
    server.feed.publish(&[rack(2, State::Degraded)]);
    server.feed.publish(&[rack(2, State::Failed)]);
    // DEGRADED is still serving: the first change seen is NOT_SERVING.
    assert_eq!(recv(&mut watch).await, ServingStatus::NotServing);
    // The unknown host appears once the agent meets it.
    server
        .feed
        .publish(&[verdict(Level::Host, "dc-a/c1/r2/10.0.0.9", State::Healthy)]);
    assert_eq!(recv(&mut unknown).await, ServingStatus::Serving);

    let list = health
        .list(HealthListRequest {})
        .await
        .unwrap()
        .into_inner()
        .statuses;
    let of = |name: &str| {
        list.get(name)
            .map(faultline_proto::health::HealthCheckResponse::status)
    };
    assert_eq!(of(""), Some(ServingStatus::Serving));
    assert_eq!(of("site/dc-a"), Some(ServingStatus::Serving));
    assert_eq!(of("rack/dc-a/c1/r1"), Some(ServingStatus::NotServing));
    assert_eq!(of("host/dc-a/c1/r2/10.0.0.9"), Some(ServingStatus::Serving));

    server.feed.stop_serving();
    assert_eq!(recv(&mut agent).await, ServingStatus::NotServing);
    assert_eq!(
        status(health.check(check("")).await.unwrap()),
        ServingStatus::NotServing
    );
}

#[tokio::test]
async fn streams_past_the_limit_are_refused_and_freed_when_clients_leave() {
    let server = Server::start(FeedLimits {
        streams: 2,
        ..FeedLimits::default()
    })
    .await;
    let mut client = server.client().await;
    let first = client
        .watch(watch(&[], "", None))
        .await
        .unwrap()
        .into_inner();
    let mut health = HealthClient::new(server.channel().await);
    let second = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let refused = client.watch(watch(&[], "", None)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("listen.max_streams"),
        "{refused:?}"
    );
    // A snapshot is not a stream: still served.
    client
        .snapshot(pb::SnapshotRequest::default())
        .await
        .unwrap();
    drop(first);
    drop(second);
    // The slots come back once the server notices the streams are gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.watch(watch(&[], "", None)).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(std::time::Instant::now() < deadline, "slots never freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_at_once() {
    let server = Server::start(FeedLimits {
        connections: 2,
        ..FeedLimits::default()
    })
    .await;
    let (mut a, mut b) = (server.client().await, server.client().await);
    a.snapshot(pb::SnapshotRequest::default()).await.unwrap();
    b.snapshot(pb::SnapshotRequest::default()).await.unwrap();
    let third = match Channel::from_shared(server.url()).unwrap().connect().await {
        Err(_) => true,
        Ok(ch) => VerdictsClient::new(ch)
            .snapshot(pb::SnapshotRequest::default())
            .await
            .is_err(),
    };
    assert!(third, "a third connection was served");
    // Counted (a client may try again at once, so at least once).
    assert!(server.feed.connections_refused() >= 1);
    drop(a);
    // The freed slot serves a new client.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let served = match Channel::from_shared(server.url()).unwrap().connect().await {
            Ok(ch) => VerdictsClient::new(ch)
                .snapshot(pb::SnapshotRequest::default())
                .await
                .is_ok(),
            Err(_) => false,
        };
        if served {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
