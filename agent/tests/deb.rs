//! The Debian package (`cargo xtask package`): lintian finds no error in it; installed,
//! its config passes `faultline check`, its man page and unit are found and the unit
//! is enabled; `dpkg -r` masks the unit and keeps the conffile, and `dpkg --purge`
//! leaves nothing of it behind.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use faultline_integration::require_root;

const PACKAGE: &str = "faultline";
const CONFIG: &str = "/etc/faultline/faultline.toml";
/// /lib is /usr/lib on Debian 12 (merged /usr), where cargo-deb puts the unit.
const UNIT: &str = "/lib/systemd/system/faultline.service";
/// Where `deb-systemd-helper` enables the unit, and masks it on `dpkg -r`.
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/faultline.service";
const MASK: &str = "/etc/systemd/system/faultline.service";

/// Runs `cmd`; panics unless it exits 0, with everything it printed. Returns stdout.
fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `${db:Status-Status}` of the package: `installed`, `config-files`, …; None if dpkg
/// does not know it.
fn package_status() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["--show", "--showformat=${db:Status-Status}", PACKAGE])
        .output()
        .expect("dpkg-query");
    let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !status.is_empty() && status != "not-installed").then_some(status)
}

/// Present while this test has the package installed: a leftover of a test that was
/// killed may be purged, anything else is someone's install.
fn marker() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("deb-test-installed")
}

/// `dpkg --purge`, then drops the marker if that worked.
fn purge() {
    let _ = Command::new("dpkg").args(["--purge", PACKAGE]).output();
    if package_status().is_none() {
        let _ = std::fs::remove_file(marker());
    }
}

/// Purges the package when the test ends, passed or failed.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        purge();
    }
}

/// `cargo xtask package` (reusing target/); the .deb's path.
fn build_package() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut cmd = Command::new(cargo);
    cmd.args(["xtask", "package"]).current_dir(root);
    // What cargo set for this test: ring's build script reruns when OUT_DIR or
    // CARGO_MANIFEST_DIR differ, and with it half the tree (minutes) each run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "OUT_DIR",
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_CRATE_NAME",
        ]
        .contains(&name.as_ref())
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
        {
            cmd.env_remove(name.as_ref());
        }
    }
    let out = ok(&mut cmd);
    let deb = out
        .lines()
        .find_map(|l| l.strip_prefix("packaged "))
        .unwrap_or_else(|| panic!("`cargo xtask package` named no .deb:\n{out}"));
    PathBuf::from(deb)
}

/// Every path in the package, absolute (`./usr/bin/` → `/usr/bin`).
fn contents(deb: &Path) -> Vec<PathBuf> {
    ok(Command::new("dpkg-deb").arg("--contents").arg(deb))
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| PathBuf::from(p.trim_start_matches('.').trim_end_matches('/')))
        .filter(|p| p.as_os_str().len() > 1)
        .collect()
}

fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

#[test]
fn the_package_installs_works_and_purges_without_a_trace() {
    require_root();
    if let Some(status) = package_status() {
        if !marker().exists() {
            println!(
                "skipped: a `{PACKAGE}` package this test did not install is on this machine \
                 ({status}); `dpkg --purge {PACKAGE}` to run this test"
            );
            return;
        }
        // Our own leftover: this test was killed before its guard ran.
        purge();
    }
    let deb = build_package();
    let size = std::fs::metadata(&deb).unwrap().len();
    println!("{}: {size} bytes", deb.display());

    let lintian = Command::new("lintian")
        .arg(&deb)
        .output()
        .expect("lintian (cargo xtask setup installs it)");
    let said = String::from_utf8_lossy(&lintian.stdout);
    println!("lintian:\n{said}");
    let errors: Vec<_> = said.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(
        lintian.status.success() && errors.is_empty(),
        "lintian ({}): {errors:#?}\n{}",
        lintian.status,
        String::from_utf8_lossy(&lintian.stderr)
    );

    // Files that are there already are someone else's: never overwrite (nor purge) them.
    let before: BTreeSet<PathBuf> = contents(&deb).into_iter().filter(|p| exists(p)).collect();
    let clobbered: Vec<&Path> = before
        .iter()
        .map(PathBuf::as_path)
        .filter(|p| !p.is_dir())
        .chain([WANTS, MASK, "/etc/faultline"].map(Path::new))
        .filter(|p| exists(p))
        .collect();
    assert!(
        clobbered.is_empty(),
        "refusing to install over what no package owns: {clobbered:?}"
    );

    std::fs::write(marker(), "").unwrap();
    let _purge = Purge;
    ok(Command::new("dpkg").arg("--install").arg(&deb));
    let installed: Vec<PathBuf> = ok(Command::new("dpkg").args(["--listfiles", PACKAGE]))
        .lines()
        .map(PathBuf::from)
        .collect();
    assert!(installed.contains(&PathBuf::from("/usr/bin/faultline")));
    let conffiles =
        ok(Command::new("dpkg-query").args(["--show", "--showformat=${Conffiles}", PACKAGE]));
    assert!(conffiles.contains(CONFIG), "conffiles: {conffiles}");

    ok(Command::new("/usr/bin/faultline").args(["check", "--config", CONFIG]));
    let page = ok(Command::new("man").args(["-w", PACKAGE]));
    assert_eq!(page.trim(), "/usr/share/man/man1/faultline.1.gz");
    // With the man page installed, its Documentation= link is checked too.
    let verify = Command::new("systemd-analyze")
        .args(["verify", UNIT])
        .output()
        .expect("systemd-analyze (cargo xtask setup installs systemd)");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "{said}");
    assert!(exists(Path::new(WANTS)), "the unit is not enabled");

    ok(Command::new("dpkg").args(["--remove", PACKAGE]));
    assert!(!exists(Path::new("/usr/bin/faultline")));
    assert!(exists(Path::new(CONFIG)), "dpkg -r removed the conffile");
    assert_eq!(
        std::fs::read_link(MASK).ok(),
        Some(PathBuf::from("/dev/null")),
        "dpkg -r did not mask (disable) the unit"
    );

    ok(Command::new("dpkg").args(["--purge", PACKAGE]));
    assert_eq!(package_status(), None);
    let mut left: Vec<PathBuf> = installed
        .into_iter()
        .filter(|p| !before.contains(p) && exists(p))
        .collect();
    left.extend(
        [WANTS, MASK, "/etc/faultline"]
            .map(PathBuf::from)
            .into_iter()
            .filter(|p| exists(p)),
    );
    assert!(left.is_empty(), "left behind after purge: {left:?}");
}
