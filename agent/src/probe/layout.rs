//! Tracepoint record layouts, read from tracefs at start-up.
//!
//! The kernel programs read raw tracepoint records, whose field offsets change between
//! kernel versions. Instead of hard-coding them we parse
//! `<tracefs>/events/<group>/<event>/format`, check each field's size, and hand the
//! offsets to the programs as load-time globals. A missing or odd field refuses the
//! start, naming the file and the field.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use faultline_ebpf::{
    AddrLayout, ProbeLayout, RECORD_COPY_MAX, ResetLayout, RetransmitLayout, StateChangeLayout,
};

/// Why a tracepoint layout could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The format file could not be read (tracefs not mounted, or the tracepoint is missing).
    #[error("read {path} (is tracefs mounted? try `faultline check`)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A field the programs need is not in the format file.
    #[error("{path}: tracepoint has no field `{field}`; this kernel's layout is not supported")]
    MissingField { path: PathBuf, field: String },
    /// A field exists but with a size the programs cannot read.
    #[error("{path}:{line}: field `{field}` has size {size}, expected {expected}")]
    BadSize {
        path: PathBuf,
        line: usize,
        field: String,
        size: usize,
        expected: usize,
    },
    /// A line that names a field but cannot be parsed.
    #[error("{path}:{line}: cannot parse field description: {text}")]
    Malformed {
        path: PathBuf,
        line: usize,
        text: String,
    },
}

/// One `field:` line of a format file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    pub offset: usize,
    pub size: usize,
    /// 1-based line in the format file, for error messages.
    pub line: usize,
}

/// The parsed fields of one tracepoint.
#[derive(Debug)]
pub(crate) struct Format {
    path: PathBuf,
    fields: HashMap<String, Field>,
}

impl Format {
    /// Reads and parses `<tracefs>/events/<group>/<event>/format`.
    pub(crate) fn read(tracefs: &Path, group: &str, event: &str) -> Result<Self, LayoutError> {
        let path = tracefs
            .join("events")
            .join(group)
            .join(event)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| LayoutError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses the text of a format file; `path` is only used in errors.
    pub(crate) fn parse(path: PathBuf, text: &str) -> Result<Self, LayoutError> {
        let mut fields = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let trimmed = line.trim();
            let Some(rest) = trimmed.strip_prefix("field:") else {
                continue;
            };
            let malformed = || LayoutError::Malformed {
                path: path.clone(),
                line: line_no,
                text: trimmed.to_owned(),
            };
            // "field:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;"
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next().ok_or_else(malformed)?;
            let name = field_name(decl).ok_or_else(malformed)?;
            let mut offset = None;
            let mut size = None;
            for part in parts {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = Some(v.parse::<usize>().map_err(|_| malformed())?);
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = Some(v.parse::<usize>().map_err(|_| malformed())?);
                }
            }
            let (Some(offset), Some(size)) = (offset, size) else {
                return Err(malformed());
            };
            fields.insert(
                name.to_owned(),
                Field {
                    offset,
                    size,
                    line: line_no,
                },
            );
        }
        Ok(Self { path, fields })
    }

    /// The offset of `name`, checked to be `size` bytes and addressable by the programs.
    pub(crate) fn offset(&self, name: &str, size: usize) -> Result<u16, LayoutError> {
        let field = self
            .fields
            .get(name)
            .ok_or_else(|| LayoutError::MissingField {
                path: self.path.clone(),
                field: name.to_owned(),
            })?;
        if field.size != size {
            return Err(LayoutError::BadSize {
                path: self.path.clone(),
                line: field.line,
                field: name.to_owned(),
                size: field.size,
                expected: size,
            });
        }
        u16::try_from(field.offset).map_err(|_| LayoutError::Malformed {
            path: self.path.clone(),
            line: field.line,
            text: format!("offset {} of `{name}` is out of range", field.offset),
        })
    }

    /// The common address fields: `family`, `saddr`/`daddr` (4) and `saddr_v6`/`daddr_v6` (16).
    fn addr_layout(&self) -> Result<AddrLayout, LayoutError> {
        Ok(AddrLayout {
            family: self.offset("family", 2)?,
            saddr4: self.offset("saddr", 4)?,
            daddr4: self.offset("daddr", 4)?,
            saddr6: self.offset("saddr_v6", 16)?,
            daddr6: self.offset("daddr_v6", 16)?,
            record_len: 0,
        })
    }
}

/// "const void * skbaddr" / "__u8 saddr[4]" → "skbaddr" / "saddr".
fn field_name(decl: &str) -> Option<&str> {
    let last = decl.split_whitespace().last()?;
    let name = last.split('[').next()?.trim_start_matches('*');
    (!name.is_empty()).then_some(name)
}

/// All the layouts the kernel programs need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layouts {
    pub retransmit: RetransmitLayout,
    pub reset: ResetLayout,
    pub state_change: StateChangeLayout,
    pub probe: ProbeLayout,
}

/// `sin_addr` inside `struct sockaddr_in`, `sin6_addr` inside `struct sockaddr_in6`:
/// fixed by the socket ABI, unlike tracepoint layouts.
const SIN_ADDR_OFFSET: u16 = 4;
const SIN6_ADDR_OFFSET: u16 = 8;
const SOCKADDR_IN6_SIZE: usize = 28;

impl Layouts {
    /// Reads every format file the programs depend on from `tracefs`.
    pub(crate) fn read(tracefs: &Path) -> Result<Self, LayoutError> {
        Self::from_formats(
            &Format::read(tracefs, "tcp", "tcp_retransmit_skb")?,
            &Format::read(tracefs, "tcp", "tcp_receive_reset")?,
            &Format::read(tracefs, "sock", "inet_sock_set_state")?,
            &Format::read(tracefs, "tcp", "tcp_probe")?,
        )
    }

    pub(crate) fn from_formats(
        retransmit: &Format,
        reset: &Format,
        state_change: &Format,
        probe: &Format,
    ) -> Result<Self, LayoutError> {
        let mut layouts = Self::offsets(retransmit, reset, state_change, probe)?;
        let r = layouts.retransmit;
        layouts.retransmit.addr.record_len = record_len(
            retransmit,
            &r.addr,
            &[(r.state, 4), (r.sport, 2), (r.dport, 2)],
        )?;
        let x = layouts.reset;
        layouts.reset.addr.record_len = record_len(reset, &x.addr, &[])?;
        let c = layouts.state_change;
        layouts.state_change.addr.record_len = record_len(
            state_change,
            &c.addr,
            &[(c.oldstate, 4), (c.newstate, 4), (c.protocol, 2)],
        )?;
        let p = layouts.probe;
        layouts.probe.addr.record_len =
            record_len(probe, &p.addr, &[(p.srtt, 4), (p.sport, 2), (p.dport, 2)])?;
        Ok(layouts)
    }

    fn offsets(
        retransmit: &Format,
        reset: &Format,
        state_change: &Format,
        probe: &Format,
    ) -> Result<Self, LayoutError> {
        let saddr = probe.offset("saddr", SOCKADDR_IN6_SIZE)?;
        let daddr = probe.offset("daddr", SOCKADDR_IN6_SIZE)?;
        Ok(Self {
            retransmit: RetransmitLayout {
                addr: retransmit.addr_layout()?,
                state: retransmit.offset("state", 4)?,
                sport: retransmit.offset("sport", 2)?,
                dport: retransmit.offset("dport", 2)?,
                _pad: 0,
            },
            reset: ResetLayout {
                addr: reset.addr_layout()?,
            },
            state_change: StateChangeLayout {
                addr: state_change.addr_layout()?,
                oldstate: state_change.offset("oldstate", 4)?,
                newstate: state_change.offset("newstate", 4)?,
                protocol: state_change.offset("protocol", 2)?,
                _pad: 0,
            },
            probe: ProbeLayout {
                addr: AddrLayout {
                    family: probe.offset("family", 2)?,
                    saddr4: saddr + SIN_ADDR_OFFSET,
                    daddr4: daddr + SIN_ADDR_OFFSET,
                    saddr6: saddr + SIN6_ADDR_OFFSET,
                    daddr6: daddr + SIN6_ADDR_OFFSET,
                    record_len: 0,
                },
                srtt: probe.offset("srtt", 4)?,
                sport: probe.offset("sport", 2)?,
                dport: probe.offset("dport", 2)?,
                _pad: 0,
            },
        })
    }
}

/// The end of the last field a program reads: how much of the record it copies.
fn record_len(
    format: &Format,
    addr: &AddrLayout,
    extra: &[(u16, u16)],
) -> Result<u16, LayoutError> {
    let fields = [
        (addr.family, 2),
        (addr.saddr4, 4),
        (addr.daddr4, 4),
        (addr.saddr6, 16),
        (addr.daddr6, 16),
    ];
    let end = fields
        .iter()
        .chain(extra)
        .map(|(off, size)| off + size)
        .max()
        .unwrap_or(0);
    if usize::from(end) > RECORD_COPY_MAX {
        return Err(LayoutError::Malformed {
            path: format.path.clone(),
            line: 0,
            text: format!(
                "fields end at byte {end}, beyond the {RECORD_COPY_MAX} bytes the programs copy"
            ),
        });
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRANSMIT: &str = include_str!("../../tests/fixtures/tcp_retransmit_skb.format");

    #[test]
    fn parses_a_real_format_file() {
        let f = Format::parse("retransmit".into(), RETRANSMIT).unwrap();
        assert_eq!(f.offset("saddr_v6", 16).unwrap(), 42);
        assert_eq!(f.offset("state", 4).unwrap(), 24);
        assert_eq!(f.offset("family", 2).unwrap(), 32);
    }

    #[test]
    fn missing_field_is_named() {
        let text = RETRANSMIT.replace("saddr_v6", "src_v6");
        let f = Format::parse("/x/format".into(), &text).unwrap();
        let err = f.offset("saddr_v6", 16).unwrap_err().to_string();
        assert!(
            err.contains("/x/format") && err.contains("`saddr_v6`"),
            "{err}"
        );
    }

    #[test]
    fn wrong_size_names_line_and_field() {
        let text = RETRANSMIT.replace(
            "__u16 family;\toffset:32;\tsize:2;",
            "__u32 family;\toffset:32;\tsize:4;",
        );
        let f = Format::parse("/x/format".into(), &text).unwrap();
        let err = f.offset("family", 2).unwrap_err().to_string();
        assert!(
            err.contains("/x/format:") && err.contains("`family` has size 4"),
            "{err}"
        );
    }

    #[test]
    fn unparsable_offset_is_refused_with_its_line() {
        let text = RETRANSMIT.replace("offset:24;", "offset:twenty;");
        let err = Format::parse("/x/format".into(), &text)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/x/format:") && err.contains("state"),
            "{err}"
        );
    }

    #[test]
    fn record_lengths_cover_every_field_read() {
        let fixture = |name: &str| {
            let path = format!(
                "{}/tests/fixtures/{name}.format",
                env!("CARGO_MANIFEST_DIR")
            );
            Format::parse(path.clone().into(), &std::fs::read_to_string(path).unwrap()).unwrap()
        };
        let l = Layouts::from_formats(
            &fixture("tcp_retransmit_skb"),
            &fixture("tcp_receive_reset"),
            &fixture("inet_sock_set_state"),
            &fixture("tcp_probe"),
        )
        .unwrap();
        // daddr_v6 ends at 74 in tcp_retransmit_skb; srtt at 104 in tcp_probe.
        assert_eq!(l.retransmit.addr.record_len, 74);
        assert_eq!((l.retransmit.sport, l.retransmit.dport), (28, 30));
        assert_eq!((l.probe.sport, l.probe.dport), (64, 66));
        assert_eq!(l.probe.addr.record_len, 104);
        assert_eq!(l.probe.addr.daddr6, 36 + 8);
    }

    #[test]
    fn field_names_drop_types_arrays_and_pointers() {
        assert_eq!(field_name("const void * skbaddr"), Some("skbaddr"));
        assert_eq!(field_name("__u8 saddr_v6[16]"), Some("saddr_v6"));
        assert_eq!(field_name("char *name"), Some("name"));
        assert_eq!(field_name(""), None);
    }
}
