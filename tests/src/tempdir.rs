//! A test's own directory (configs, certificates, sockets), removed when the test
//! ends, failed or not.
use std::path::{Path, PathBuf};

pub struct TempDir(PathBuf);

impl TempDir {
    /// `$TMPDIR/faultline-NAME-PID`, created empty.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("faultline-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test's directory");
        Self(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
