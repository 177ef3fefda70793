//! The mount table, `/proc/self/mounts`: the one place that reads and parses it.
//!
//! `faultline check` asks whether bpffs is mounted and what filesystem a configured
//! cgroup directory is on; the probe asks for the first cgroup2 mount. Each line is
//! `source mountpoint fstype options dump pass`, with spaces, tabs, newlines and
//! backslashes in paths written as octal escapes (`\040`).
use std::path::{Path, PathBuf};

const MOUNTS: &str = "/proc/self/mounts";

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// This process's mount table, in mount order; empty if it cannot be read.
pub(crate) fn read() -> Vec<Mount> {
    std::fs::read_to_string(MOUNTS)
        .map(|text| parse(&text))
        .unwrap_or_default()
}

/// Parses mount-table text; malformed lines are skipped.
pub(crate) fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_source, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            Some(Mount {
                mount_point: PathBuf::from(unescape(dir)),
                fstype: fstype.to_owned(),
            })
        })
        .collect()
}

/// The first mount of `fstype` (the root of the cgroup v2 hierarchy, say).
pub(crate) fn first_of_type<'a>(mounts: &'a [Mount], fstype: &str) -> Option<&'a Mount> {
    mounts.iter().find(|m| m.fstype == fstype)
}

/// True when `path` itself is a mount point of `fstype`.
pub(crate) fn is_mount_of(mounts: &[Mount], path: &Path, fstype: &str) -> bool {
    mounts
        .iter()
        .any(|m| m.mount_point == path && m.fstype == fstype)
}

/// The mount `path` lives on: the longest mount point that contains it (the latest
/// such mount when several share a mount point, as the kernel shows the top one).
/// `path` should be absolute and canonical.
pub(crate) fn containing<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
}

/// `\040` → space, and the other octal escapes the kernel writes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            d.iter()
                .all(|b| (b'0'..=b'7').contains(b))
                .then(|| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok())
                .flatten()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
bpf /sys/fs/bpf bpf rw,relatime 0 0
cgroup2 /mnt/second cgroup2 rw 0 0
tmpfs /mnt/with\\040space tmpfs rw 0 0
garbage
";

    #[test]
    fn lines_parse_with_escapes_and_garbage_is_skipped() {
        let mounts = parse(TABLE);
        assert_eq!(mounts.len(), 5);
        assert_eq!(mounts[4].mount_point, Path::new("/mnt/with space"));
        assert_eq!(mounts[4].fstype, "tmpfs");
    }

    #[test]
    fn the_first_cgroup2_mount_is_the_hierarchy_root() {
        let mounts = parse(TABLE);
        assert_eq!(
            first_of_type(&mounts, "cgroup2").map(|m| m.mount_point.as_path()),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(first_of_type(&mounts, "tracefs"), None);
    }

    #[test]
    fn a_path_is_on_the_longest_mount_point_containing_it() {
        let mounts = parse(TABLE);
        let on = |p: &str| containing(&mounts, Path::new(p)).map(|m| m.fstype.as_str());
        assert_eq!(on("/sys/fs/cgroup/unified/system.slice"), Some("cgroup2"));
        assert_eq!(on("/sys/fs/cgroup"), Some("sysfs"));
        assert_eq!(
            on("/sys/fs/cgroup/unifiedx"),
            Some("sysfs"),
            "whole components only"
        );
        assert_eq!(on("/home"), None);
    }

    #[test]
    fn is_mount_of_needs_the_mount_point_itself_and_the_type() {
        let mounts = parse(TABLE);
        assert!(is_mount_of(&mounts, Path::new("/sys/fs/bpf"), "bpf"));
        assert!(!is_mount_of(&mounts, Path::new("/sys/fs/bpf/x"), "bpf"));
        assert!(!is_mount_of(&mounts, Path::new("/sys"), "bpf"));
    }
}
