//! What each followed feed currently says of each served entity.
use std::time::Instant;

use faultline_proto::v1 as pb;

use super::{config::AnnounceConfig, decide::Word, feed::FeedEvent};

/// One entity's latest verdict from one feed: state, confidence, reason, and when it
/// arrived.
#[derive(Debug, Clone)]
struct Heard {
    state: pb::State,
    confidence: f64,
    reason: String,
    at: Instant,
}

#[derive(Debug, Default)]
struct Feed {
    up: bool,
    snapshot_seen: bool,
    /// Per served entity.
    heard: Vec<Option<Heard>>,
}

pub(super) struct Feeds {
    feeds: Vec<Feed>,
    /// Served entities' paths, in config order.
    paths: Vec<String>,
    names: Vec<String>,
}

impl Feeds {
    pub(super) fn new(cfg: &AnnounceConfig) -> Self {
        Self {
            feeds: cfg
                .agents
                .iter()
                .map(|_| Feed {
                    heard: vec![None; cfg.served.len()],
                    ..Feed::default()
                })
                .collect(),
            paths: cfg.served.iter().map(|s| s.entity.clone()).collect(),
            names: cfg
                .agents
                .iter()
                .map(|a| format!("{} ({})", a.endpoint, a.site))
                .collect(),
        }
    }

    pub(super) fn apply(&mut self, agent: usize, event: FeedEvent, at: Instant) {
        let paths = &self.paths;
        let feed = &mut self.feeds[agent];
        let note = |heard: &mut Vec<Option<Heard>>, v: &pb::Verdict| {
            let Some(path) = v.entity.as_ref().map(|e| e.path.as_str()) else {
                return;
            };
            if let Some(e) = paths.iter().position(|p| p == path) {
                heard[e] = Some(Heard {
                    state: v.state(),
                    confidence: v.confidence,
                    reason: v.reason.clone(),
                    at,
                });
            }
        };
        match event {
            FeedEvent::Snapshot(verdicts) => {
                feed.up = true;
                feed.snapshot_seen = true;
                feed.heard.iter_mut().for_each(|h| *h = None);
                for v in &verdicts {
                    note(&mut feed.heard, v);
                }
            }
            FeedEvent::Resumed => feed.up = true,
            FeedEvent::Change(v) => note(&mut feed.heard, &v),
            FeedEvent::Lost(_) => feed.up = false,
        }
    }

    pub(super) fn is_up(&self, agent: usize) -> bool {
        self.feeds[agent].up
    }

    pub(super) fn any_up(&self) -> bool {
        self.feeds.iter().any(|f| f.up)
    }

    pub(super) fn up_flags(&self) -> Vec<bool> {
        self.feeds.iter().map(|f| f.up).collect()
    }

    /// The agents that have not yet delivered a snapshot.
    pub(super) fn without_snapshot(&self) -> Vec<String> {
        self.feeds
            .iter()
            .zip(&self.names)
            .filter(|(f, _)| !f.snapshot_seen)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// `words[agent][entity]`, for [`super::decide`].
    pub(super) fn words(&self) -> Vec<Vec<Word>> {
        self.feeds
            .iter()
            .map(|f| {
                f.heard
                    .iter()
                    .map(|h| match h {
                        _ if !f.up => Word::Silent,
                        None => Word::Unobserved,
                        Some(h) => match h.state {
                            pb::State::Failed => Word::Failed,
                            pb::State::Healthy | pb::State::Degraded => Word::Delivers,
                            pb::State::Unknown | pb::State::Unspecified => Word::Unobserved,
                        },
                    })
                    .collect()
            })
            .collect()
    }

    /// When the latest verdict arrived, from a feed that is up: what decided a change.
    pub(super) fn latest_at(&self) -> Option<Instant> {
        self.feeds
            .iter()
            .filter(|f| f.up)
            .flat_map(|f| f.heard.iter().flatten().map(|h| h.at))
            .max()
    }

    /// What every live feed says of entity `e`, for the log line of an action.
    pub(super) fn evidence(&self, e: usize) -> String {
        let said: Vec<String> = self
            .feeds
            .iter()
            .zip(&self.names)
            .filter(|(f, _)| f.up)
            .map(|(f, name)| match &f.heard[e] {
                Some(h) => format!(
                    "{name}: {} {:.2} \"{}\"",
                    h.state.as_str_name().trim_start_matches("STATE_"),
                    h.confidence,
                    h.reason
                ),
                None => format!("{name}: no verdict"),
            })
            .collect();
        if said.is_empty() {
            "no feed is up".to_owned()
        } else {
            said.join("; ")
        }
    }
}
