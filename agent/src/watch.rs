//! `faultline watch`: a live view of an agent's verdict feed for operators. Text
//! mode prints the snapshot as a table, then one line per change; JSON mode prints one
//! object per verdict. It reconnects with backoff and resumes where it left off.
use std::{fmt::Write as _, time::Duration};

use faultline_proto::v1::{self as pb, verdicts_client::VerdictsClient, watch_event::Event};
use serde_json::json;

use crate::{feed::convert, topology::Level};

/// The largest feed message a client accepts: a snapshot of a whole fleet's verdicts
/// (100k hosts with evidence) is tens of MB, far above tonic's 4 MiB default, which
/// left `watch` unable to start on a large fleet.
pub(crate) const MAX_SNAPSHOT: usize = 256 << 20;

/// What to watch and how to print it.
pub struct WatchOptions {
    pub endpoint: String,
    /// The CA that signed the agent's certificate, for an `https://` endpoint.
    pub tls_ca: Option<std::path::PathBuf>,
    pub levels: Vec<Level>,
    pub path_prefix: String,
    pub json: bool,
}

/// Runs until the process is interrupted; returns an error only for a request the
/// agent refuses (a bad filter), which retrying cannot fix.
pub async fn watch(
    options: &WatchOptions,
    mut out: impl std::io::Write,
) -> Result<(), tonic::Status> {
    let mut resume_after = Resume::default();
    let mut backoff = Duration::from_millis(200);
    loop {
        match stream_once(options, &mut resume_after, &mut out).await {
            Err(status) if status.code() == tonic::Code::InvalidArgument => return Err(status),
            Err(status) => eprintln!(
                "faultline watch: {}: {}; retrying in {backoff:?}",
                options.endpoint,
                status.message()
            ),
            Ok(()) => eprintln!(
                "faultline watch: {}: stream ended; reconnecting",
                options.endpoint
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Where a stream left off: the last sequence number seen, and the agent run it
/// belongs to.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Resume {
    after: Option<u64>,
    incarnation: Option<u64>,
}

impl Resume {
    /// The Watch request that picks up where the last stream left off.
    pub(crate) fn request(&self, filter: pb::Filter) -> pb::WatchRequest {
        pb::WatchRequest {
            filter: Some(filter),
            resume_after: self.after,
            incarnation: self.incarnation,
        }
    }

    /// Notes where `event` leaves the stream.
    pub(crate) fn note(&mut self, event: &pb::WatchEvent) {
        self.incarnation = Some(event.incarnation);
        match &event.event {
            Some(Event::Snapshot(s)) => self.after = Some(s.sequence),
            Some(Event::Change(c)) => self.after = Some(c.sequence),
            None => {}
        }
    }
}

async fn stream_once(
    options: &WatchOptions,
    resume_after: &mut Resume,
    out: &mut impl std::io::Write,
) -> Result<(), tonic::Status> {
    let channel = crate::tls::endpoint_trusting(&options.endpoint, options.tls_ca.as_deref())
        .map_err(tonic::Status::invalid_argument)?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let request = resume_after.request(pb::Filter {
        levels: options
            .levels
            .iter()
            .map(|l| convert::level(*l) as i32)
            .collect(),
        path_prefix: options.path_prefix.clone(),
    });
    let mut stream = VerdictsClient::new(channel)
        .max_decoding_message_size(MAX_SNAPSHOT)
        .watch(request)
        .await?
        .into_inner();
    while let Some(event) = stream.message().await? {
        resume_after.note(&event);
        let text = match event.event {
            Some(Event::Snapshot(s)) => render_snapshot(&s, options.json),
            Some(Event::Change(c)) => c
                .verdict
                .map(|v| render_change(c.sequence, &v, options.json))
                .unwrap_or_default(),
            None => String::new(),
        };
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            // stdout closed (e.g. piped into `head`): nothing left to do.
            return Ok(());
        }
    }
    Ok(())
}

fn state_name(v: &pb::Verdict) -> &'static str {
    match v.state() {
        pb::State::Unspecified | pb::State::Unknown => "UNKNOWN",
        pb::State::Healthy => "HEALTHY",
        pb::State::Degraded => "DEGRADED",
        pb::State::Failed => "FAILED",
    }
}

fn level_name(e: Option<&pb::Entity>) -> &'static str {
    e.and_then(|e| pb::Level::try_from(e.level).ok())
        .and_then(convert::level_from)
        .map_or("?", Level::as_str)
}

/// One verdict as JSON: what scripts and dashboards consume.
pub(crate) fn verdict_json(sequence: u64, v: &pb::Verdict) -> serde_json::Value {
    let entity = v.entity.as_ref();
    json!({
        "sequence": sequence,
        "level": level_name(entity),
        "path": entity.map_or("", |e| e.path.as_str()),
        "state": state_name(v),
        "since": v.since.map(|t| t.seconds),
        "confidence": v.confidence,
        "reason": v.reason,
        "cause": v.cause.as_ref().map(|c| format!("{}/{}", level_name(Some(c)), c.path)),
        "observers": v.observers,
        "local_fault": v.local_fault,
        "evidence": v.evidence.as_ref().map(|e| json!({
            "failed_children": e.failed_children,
            "observed_children": e.observed_children,
            "links": e.links.iter().map(|l| json!({
                "observer": l.observer, "local": l.local_address, "remote": l.remote_address,
                "rto": l.rto_timeouts, "retrans": l.retrans_segs, "progress": l.progress_segs,
                "acked": l.acked_segs,
            })).collect::<Vec<_>>(),
        })),
    })
}

fn render_change(sequence: u64, v: &pb::Verdict, json: bool) -> String {
    if json {
        return format!("{}\n", verdict_json(sequence, v));
    }
    let entity = v.entity.as_ref();
    let cause = v.cause.as_ref().map_or(String::new(), |c| {
        format!(" (because of {} {})", level_name(Some(c)), c.path)
    });
    format!(
        "#{sequence:<6} {:<8} {:<40} {:<9} {:.2}  {}{cause}\n",
        level_name(entity),
        entity.map_or("", |e| e.path.as_str()),
        state_name(v),
        v.confidence,
        v.reason
    )
}

fn render_snapshot(s: &pb::VerdictSnapshot, json: bool) -> String {
    let mut text = String::new();
    if json {
        for v in &s.verdicts {
            let _ = writeln!(text, "{}", verdict_json(s.sequence, v));
        }
        return text;
    }
    let _ = writeln!(
        text,
        "snapshot as of #{}: {} verdict(s)",
        s.sequence,
        s.verdicts.len()
    );
    let _ = writeln!(
        text,
        "{:<7} {:<8} {:<40} {:<9} CONF  REASON",
        "SEQ", "LEVEL", "PATH", "STATE"
    );
    let mut rows: Vec<&pb::Verdict> = s.verdicts.iter().collect();
    // Worst first, then by path, so a failure is on the first screen.
    rows.sort_by_key(|v| {
        (
            std::cmp::Reverse(v.state),
            v.entity.as_ref().map(|e| e.path.clone()),
        )
    });
    for v in rows {
        text.push_str(&render_change(s.sequence, v, false));
    }
    text
}
