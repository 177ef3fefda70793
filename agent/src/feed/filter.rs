//! Request filters, validated: a bad request is refused with INVALID_ARGUMENT and a
//! message naming the field, before anything is streamed.
use faultline_proto::v1 as pb;
use tonic::Status;

use super::convert;
use crate::{detector::Verdict, topology::Level};

/// Longest accepted `path_prefix`, bytes. Real paths are a few dozen.
pub(crate) const MAX_PATH_PREFIX: usize = 1024;

/// A validated filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    /// Empty: every level.
    levels: Vec<Level>,
    /// Empty: every path.
    path_prefix: String,
}

impl Filter {
    pub(crate) fn parse(f: Option<&pb::Filter>) -> Result<Self, Status> {
        let Some(f) = f else {
            return Ok(Self::default());
        };
        let mut levels = Vec::new();
        for (i, raw) in f.levels.iter().enumerate() {
            let level = pb::Level::try_from(*raw)
                .ok()
                .and_then(convert::level_from)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "filter.levels[{i}]: {raw} is not a level (use LEVEL_HOST, LEVEL_RACK, LEVEL_CABINET or LEVEL_SITE)"
                    ))
                })?;
            if !levels.contains(&level) {
                levels.push(level);
            }
        }
        let path = &f.path_prefix;
        if path.len() > MAX_PATH_PREFIX {
            return Err(Status::invalid_argument(format!(
                "filter.path_prefix: {} bytes, at most {MAX_PATH_PREFIX}",
                path.len()
            )));
        }
        if !path.is_empty()
            && (path.starts_with('/')
                || path.ends_with('/')
                || path.contains("//")
                || path.chars().any(char::is_whitespace))
        {
            return Err(Status::invalid_argument(format!(
                "filter.path_prefix: `{path}` is not an entity path like `dc-a/c1` (no leading, trailing or double `/`, no spaces)"
            )));
        }
        Ok(Self {
            levels,
            path_prefix: path.clone(),
        })
    }

    pub(crate) fn matches(&self, v: &Verdict) -> bool {
        let level_ok = self.levels.is_empty() || self.levels.contains(&v.entity.level);
        let path = v.entity.path.as_ref();
        let path_ok = self.path_prefix.is_empty()
            || path == self.path_prefix
            || (path.starts_with(&self.path_prefix)
                && path.as_bytes().get(self.path_prefix.len()) == Some(&b'/'));
        level_ok && path_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::State;

    fn v(level: Level, path: &str) -> Verdict {
        Verdict::scripted(level, path, State::Failed)
    }

    fn filter(levels: &[i32], prefix: &str) -> Result<Filter, Status> {
        Filter::parse(Some(&pb::Filter {
            levels: levels.to_vec(),
            path_prefix: prefix.into(),
        }))
    }

    #[test]
    fn prefix_matches_whole_path_segments() {
        let f = filter(&[], "dc-a/c1").unwrap();
        assert!(f.matches(&v(Level::Cabinet, "dc-a/c1")));
        assert!(f.matches(&v(Level::Rack, "dc-a/c1/r1")));
        assert!(!f.matches(&v(Level::Rack, "dc-a/c10/r1")));
        assert!(!f.matches(&v(Level::Site, "dc-a")));
    }

    #[test]
    fn levels_filter() {
        let f = filter(&[pb::Level::Rack as i32], "").unwrap();
        assert!(f.matches(&v(Level::Rack, "x/y/z")));
        assert!(!f.matches(&v(Level::Host, "x/y/z/h")));
    }

    #[test]
    fn bad_requests_are_invalid_arguments_naming_the_field() {
        for (levels, prefix, needle) in [
            (vec![0], "", "filter.levels[0]"),
            (vec![2, 42], "", "filter.levels[1]: 42"),
            (vec![], "/dc-a", "filter.path_prefix"),
            (vec![], "dc-a//c1", "filter.path_prefix"),
            (vec![], "dc-a/", "filter.path_prefix"),
        ] {
            let err = filter(&levels, prefix).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().contains(needle), "{}", err.message());
        }
        let err = filter(&[], &"a".repeat(MAX_PATH_PREFIX + 1)).unwrap_err();
        assert!(err.message().contains("at most 1024"), "{}", err.message());
    }
}
