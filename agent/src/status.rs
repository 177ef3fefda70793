//! `faultline status [ENTITY]`: one line and an exit code, for the checks that run a
//! command and read its exit status (node-problem-detector plugins, Consul and Nomad
//! script checks, keepalived's `MISC_CHECK` in front of LVS).
//!
//! Exit codes: 0 healthy, 1 degraded, 2 failed, 3 unknown (no verdict yet, or an
//! entity the agent does not know), 4 the agent could not be asked. Without an
//! entity, the agent itself: 0 while it serves, 2 while it shuts down.
use std::{path::PathBuf, time::Duration};

use faultline_proto::{
    health::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    },
    v1::{self as pb, verdicts_client::VerdictsClient},
};

use crate::{feed::convert, topology::Level};

/// What to ask, and where.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    pub endpoint: String,
    pub tls_ca: Option<PathBuf>,
    /// `rack/dc-a/c1/r1` (a health service name) or a bare path `dc-a/c1/r1`; None:
    /// the agent itself.
    pub entity: Option<String>,
    pub timeout: Duration,
}

/// The answer: the line to print and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub line: String,
    pub code: u8,
}

pub(crate) const HEALTHY: u8 = 0;
pub(crate) const DEGRADED: u8 = 1;
pub(crate) const FAILED: u8 = 2;
pub(crate) const UNKNOWN: u8 = 3;
pub(crate) const UNREACHABLE: u8 = 4;

/// Asks the agent; never fails: an agent that cannot be asked is [`UNREACHABLE`].
pub async fn status(options: &StatusOptions) -> Status {
    match tokio::time::timeout(options.timeout, ask(options)).await {
        Ok(Ok(status)) => status,
        Ok(Err(why)) => unreachable(options, &why),
        Err(_) => unreachable(
            options,
            &format!(
                "no answer within {}",
                humantime::format_duration(options.timeout)
            ),
        ),
    }
}

fn unreachable(options: &StatusOptions, why: &str) -> Status {
    Status {
        line: format!("agent unreachable at {}: {why}", options.endpoint),
        code: UNREACHABLE,
    }
}

async fn ask(options: &StatusOptions) -> Result<Status, String> {
    let channel = crate::tls::endpoint_trusting(&options.endpoint, options.tls_ca.as_deref())?
        .connect_timeout(options.timeout)
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Some(entity) = &options.entity else {
        let served = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map_err(|s| s.message().to_owned())?
            .into_inner()
            .status();
        return Ok(match served {
            ServingStatus::Serving => Status {
                line: "agent SERVING".into(),
                code: HEALTHY,
            },
            other => Status {
                line: format!("agent {}", other.as_str_name()),
                code: FAILED,
            },
        });
    };
    let (level, path) = parse_entity(entity)?;
    let snapshot = VerdictsClient::new(channel)
        .snapshot(pb::SnapshotRequest {
            filter: Some(pb::Filter {
                levels: level
                    .map(|l| vec![convert::level(l) as i32])
                    .unwrap_or_default(),
                path_prefix: path.clone(),
            }),
        })
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    let found = snapshot
        .verdicts
        .iter()
        .find(|v| v.entity.as_ref().is_some_and(|e| e.path == path));
    Ok(match found {
        None => Status {
            line: format!(
                "{entity} UNKNOWN: no verdict (not observed yet, or not an entity this agent knows)"
            ),
            code: UNKNOWN,
        },
        Some(v) => line_of(v),
    })
}

/// `LEVEL/PATH` or a bare `PATH`.
fn parse_entity(text: &str) -> Result<(Option<Level>, String), String> {
    let text = text.trim_matches('/');
    if text.is_empty() {
        return Err("the entity is empty: give a path like dc-a/c1/r1 or rack/dc-a/c1/r1".into());
    }
    Ok(match text.split_once('/') {
        Some((level, path)) if Level::parse(level).is_some() => {
            (Level::parse(level), path.to_owned())
        }
        _ => (None, text.to_owned()),
    })
}

fn line_of(v: &pb::Verdict) -> Status {
    let state = v.state();
    let code = match state {
        pb::State::Healthy => HEALTHY,
        pb::State::Degraded => DEGRADED,
        pb::State::Failed => FAILED,
        pb::State::Unknown | pb::State::Unspecified => UNKNOWN,
    };
    let entity = v.entity.as_ref().map_or_else(String::new, |e| {
        let level =
            convert::level_from(e.level()).map_or_else(|| "?".to_owned(), |l| l.to_string());
        format!("{level}/{}", e.path)
    });
    let name = state.as_str_name().trim_start_matches("STATE_");
    Status {
        line: format!("{entity} {name} {:.2} {}", v.confidence, v.reason),
        code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_are_a_health_name_or_a_bare_path() {
        assert_eq!(
            parse_entity("rack/dc-a/c1/r1").unwrap(),
            (Some(Level::Rack), "dc-a/c1/r1".to_owned())
        );
        assert_eq!(
            parse_entity("dc-a/c1").unwrap(),
            (None, "dc-a/c1".to_owned())
        );
        assert_eq!(parse_entity("/dc-a/").unwrap(), (None, "dc-a".to_owned()));
        assert!(parse_entity("/").is_err());
    }
}
