//! The topology file: its TOML schema and the errors that point into it.
//!
//! The file is flat lists with parent references, so that one wrong parent is one
//! clear error, rather than nesting where a typo silently creates a new branch:
//!
//! ```toml
//! [[site]]
//! name = "dc-a"
//! [[cabinet]]
//! name = "c1"
//! site = "dc-a"
//! [[rack]]
//! name = "r1"
//! cabinet = "dc-a/c1"
//! prefixes = ["10.1.1.0/24", "fd00:1:1::/64"]
//! [[host]]
//! name = "web-1"
//! rack = "dc-a/c1/r1"
//! addresses = ["10.1.1.10"]
//! ```
use std::{
    cell::OnceCell,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

/// Why a topology file was refused. Every variant names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_TOPOLOGY_BYTES`](super::MAX_TOPOLOGY_BYTES).
    #[error("read {path}: larger than the {} limit for topology files", crate::capped_read::human_bytes(*cap))]
    TooLarge { path: PathBuf, cap: u64 },
    /// Malformed TOML, an unknown key, a missing key or a wrongly typed value.
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A well-formed value that breaks a rule (unknown parent, duplicate, bad address).
    #[error("{path}:{line}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        field: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TopologyFile {
    #[serde(default)]
    pub(super) site: Vec<SiteDef>,
    #[serde(default)]
    pub(super) cabinet: Vec<CabinetDef>,
    #[serde(default)]
    pub(super) rack: Vec<RackDef>,
    #[serde(default)]
    pub(super) host: Vec<HostDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SiteDef {
    pub(super) name: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CabinetDef {
    pub(super) name: Spanned<String>,
    /// The site's name.
    pub(super) site: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RackDef {
    pub(super) name: Spanned<String>,
    /// The cabinet's path, `site/cabinet`.
    pub(super) cabinet: Spanned<String>,
    /// Address prefixes of the rack, IPv4 and IPv6 (`10.1.1.0/24`).
    #[serde(default)]
    pub(super) prefixes: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HostDef {
    pub(super) name: Spanned<String>,
    /// The rack's path, `site/cabinet/rack`.
    pub(super) rack: Spanned<String>,
    #[serde(default)]
    pub(super) addresses: Vec<Spanned<String>>,
}

/// Turns byte offsets into 1-based line numbers for one file's text.
///
/// The offsets of the line starts are found once, on the first question, and each
/// question is then a binary search: rescanning the text per offset made a
/// 100,000-host file quadratic. A file that parses cleanly asks no question at all.
pub(super) struct Source<'a> {
    pub(super) path: &'a Path,
    text: &'a str,
    line_starts: OnceCell<Vec<usize>>,
}

impl<'a> Source<'a> {
    pub(super) fn new(path: &'a Path, text: &'a str) -> Self {
        Self {
            path,
            text,
            line_starts: OnceCell::new(),
        }
    }

    pub(super) fn line_of(&self, offset: usize) -> usize {
        let starts = self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(
                    self.text
                        .bytes()
                        .enumerate()
                        .filter(|(_, b)| *b == b'\n')
                        .map(|(i, _)| i + 1),
                )
                .collect()
        });
        // The number of line starts at or before the offset is its 1-based line.
        starts.partition_point(|&start| start <= offset)
    }

    pub(super) fn parse(&self) -> Result<TopologyFile, TopologyError> {
        toml::from_str(self.text).map_err(|e| TopologyError::Syntax {
            path: self.path.to_owned(),
            line: e.span().map_or(1, |s| self.line_of(s.start)),
            message: e.message().to_owned(),
        })
    }

    /// An error about the value at `span`.
    pub(super) fn invalid<T>(
        &self,
        value: &Spanned<T>,
        field: String,
        message: impl Into<String>,
    ) -> TopologyError {
        TopologyError::Invalid {
            path: self.path.to_owned(),
            line: self.line_of(value.span().start),
            field,
            message: message.into(),
        }
    }
}
