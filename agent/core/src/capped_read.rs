//! Reading a file whose size the operator controls, with a cap enforced while reading.
//!
//! A config or topology file is read whole into memory, so without a cap a wrong path
//! (`/dev/zero`, a FIFO fed by something else, a multi-gigabyte log) grows the process
//! until the kernel kills it. The cap is enforced on the bytes actually read, through
//! `take(cap + 1)`, not on the size `stat` reports, which is 0 for those files.
use std::{fs::File, io::Read as _, path::Path};

/// Why a capped read failed.
#[derive(Debug, thiserror::Error)]
pub enum CappedReadError {
    /// Opening or reading failed, or the text is not UTF-8.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The file holds more than `cap` bytes (it was not read past `cap + 1`).
    #[error("larger than the {} limit", human_bytes(*cap))]
    TooLarge { cap: u64 },
}

/// Reads `path` as UTF-8 text, refusing it as soon as more than `cap` bytes arrive.
pub fn read_to_string(path: &Path, cap: u64) -> Result<String, CappedReadError> {
    let file = File::open(path)?;
    let mut text = String::new();
    file.take(cap.saturating_add(1)).read_to_string(&mut text)?;
    if text.len() as u64 > cap {
        return Err(CappedReadError::TooLarge { cap });
    }
    Ok(text)
}

/// `16 MiB`, `1 MiB`, `512 KiB`, `100 bytes`: caps are meant to be read by people.
pub fn human_bytes(n: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, bytes: usize) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("faultline-capped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, "x".repeat(bytes)).unwrap();
        path
    }

    #[test]
    fn a_file_at_the_cap_is_read_and_one_byte_more_is_refused() {
        let at = temp_file("at-cap", 100);
        assert_eq!(read_to_string(&at, 100).unwrap().len(), 100);
        let over = temp_file("over-cap", 101);
        let err = read_to_string(&over, 100).unwrap_err();
        assert!(
            matches!(err, CappedReadError::TooLarge { cap: 100 }),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "larger than the 100 bytes limit");
        // The directory too: every run left one behind in /tmp.
        let _ = std::fs::remove_dir_all(at.parent().unwrap());
    }

    #[test]
    fn an_endless_file_is_refused_after_the_cap() {
        let err = read_to_string(Path::new("/dev/zero"), 4096).unwrap_err();
        assert!(
            matches!(err, CappedReadError::TooLarge { cap: 4096 }),
            "{err:?}"
        );
    }

    #[test]
    fn caps_are_written_for_people() {
        assert_eq!(human_bytes(16 << 20), "16 MiB");
        assert_eq!(human_bytes(512 << 10), "512 KiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }
}
