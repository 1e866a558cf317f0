//! Building the workspace binaries, once per test process.
//!
//! Tests run the real `sane-proxy`, `sane-echo` and `sane-control-plane`, so
//! they must be built with the same profile and into the same target
//! directory as the running test. Both are derived from the test's own path
//! (`<target>/<profile>/deps/<test>`), which also follows `CARGO_TARGET_DIR`
//! and `--release`.
//!
//! The build is `cargo test --workspace --no-run`: exactly the compile step
//! of the README's test command, so under `cargo test --workspace` it is a
//! no-op. A narrower `cargo build -p …` would resolve features differently
//! (dev-dependency features such as tokio's `test-util` drop out), rebuild
//! most dependencies a second time and overwrite the binaries.
//!
//! The demo (`sane-demo`, the README's first command) needs only the
//! binaries, so it asks for [`BuildMode::Binaries`]: `cargo build --bins` of
//! the three packages, minutes faster on a fresh machine. The environment
//! variable `SANE_E2E_BUILD` (`tests` or `bins`) overrides the choice; the
//! demo's own test sets `tests` so it shares the test build.
//!
//! A copied or installed `sane-demo` is not in a cargo target directory and
//! has no source tree to build: [`use_prebuilt`] points the harness at a
//! directory of release binaries instead, and nothing is built.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock, PoisonError};

/// Packages whose binaries the tests use (all are built by one workspace build).
pub const PACKAGES: &[&str] = &["sane-proxy", "sane-e2e", "sane-control-plane"];

/// What the harness builds before running binaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildMode {
    /// `cargo test --workspace --no-run` (tests; the default).
    Tests,
    /// `cargo build --bins` of [`PACKAGES`] (the demo).
    Binaries,
}

static PREFER_BINARIES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes [`BuildMode::Binaries`] this process's default (call before the
/// first build).
pub fn prefer_binaries_only() {
    PREFER_BINARIES.store(true, std::sync::atomic::Ordering::Relaxed);
}

static PREBUILT: OnceLock<PathBuf> = OnceLock::new();

/// Uses the binaries in `dir` as they are: no cargo build at all. Fails,
/// naming the missing files, unless `dir` holds `sane-proxy`,
/// `sane-control-plane`, `sanectl` and `sane-echo`. Call before the first
/// build.
pub fn use_prebuilt(dir: &Path) -> Result<(), String> {
    let missing: Vec<String> = PREBUILT_NAMES
        .iter()
        .map(|n| dir.join(format!("{n}{}", std::env::consts::EXE_SUFFIX)))
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} does not hold the mesh binaries: missing {}",
            dir.display(),
            missing.join(", ")
        ));
    }
    PREBUILT
        .set(dir.to_path_buf())
        .map_err(|_| "the binary directory is already chosen".to_string())
}

/// The binaries a prebuilt directory must hold.
pub const PREBUILT_NAMES: &[&str] = &["sane-proxy", "sane-control-plane", "sanectl", "sane-echo"];

/// Where the binaries are: the prebuilt directory, or this build's profile
/// directory.
fn bin_dir() -> &'static Path {
    match PREBUILT.get() {
        Some(dir) => dir,
        None => &layout().profile_dir,
    }
}

fn build_mode() -> BuildMode {
    match std::env::var("SANE_E2E_BUILD").as_deref() {
        Ok("bins") => BuildMode::Binaries,
        Ok("tests") => BuildMode::Tests,
        _ if PREFER_BINARIES.load(std::sync::atomic::Ordering::Relaxed) => BuildMode::Binaries,
        _ => BuildMode::Tests,
    }
}

/// Paths of the binaries every mesh test needs.
#[derive(Clone, Debug)]
pub struct Bins {
    /// `sane-proxy`.
    pub proxy: PathBuf,
    /// `sane-echo`.
    pub echo: PathBuf,
}

/// Where the running executable's build lives.
#[derive(Debug)]
struct Layout {
    /// `<target>[/<triple>]/<profile>`: where binaries land.
    profile_dir: PathBuf,
    /// The `--target-dir`.
    target_dir: PathBuf,
    /// `--target`, when the build is for an explicit triple.
    triple: Option<OsString>,
    /// The profile's directory name (`debug`, `release`, or a custom one).
    profile: OsString,
}

/// Builds [`PACKAGES`] (once per process) and returns the binaries' paths.
/// Panics with cargo's output if the build fails.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let dir = bins_for(PACKAGES);
        Bins {
            proxy: existing(dir, "sane-proxy"),
            echo: existing(dir, "sane-echo"),
        }
    })
}

/// Builds [`PACKAGES`] (once per process) and returns the path of binary
/// `name`, e.g. `bin("sane-control-plane")`.
pub fn bin(name: &str) -> PathBuf {
    bins();
    existing(bin_dir(), name)
}

/// `sane-echo`.
pub fn echo_bin() -> PathBuf {
    let dir = bins_for(&["sane-e2e"]);
    existing(dir, "sane-echo")
}

/// Builds the workspace (once per process) and returns the directory the
/// binaries of `packages` are in. Concurrent callers wait for one another
/// rather than race cargo.
pub fn bins_for(packages: &[&str]) -> &'static Path {
    if let Some(dir) = PREBUILT.get() {
        return dir;
    }
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    if !*built {
        cargo_build(packages);
        *built = true;
    }
    &layout().profile_dir
}

/// The workspace root: the parent of this crate.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent directory")
}

fn cargo_build(packages: &[&str]) {
    let layout = layout();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root());
    match build_mode() {
        BuildMode::Tests => {
            cmd.args(["test", "--workspace", "--no-run"]);
        }
        BuildMode::Binaries => {
            cmd.args(["build", "--bins"]);
            for p in PACKAGES {
                cmd.arg("-p").arg(p);
            }
        }
    }
    cmd.arg("--target-dir").arg(&layout.target_dir);
    match layout.profile.to_str() {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        _ => {
            cmd.arg("--profile").arg(&layout.profile);
        }
    }
    if let Some(triple) = &layout.triple {
        cmd.arg("--target").arg(triple);
    }
    eprintln!("sane-e2e: building the workspace for {packages:?} (once per test process): {cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cargo:?} failed: {e}"));
    if !out.status.success() {
        panic!(
            "building {packages:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn existing(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} does not exist; is its package in harness::PACKAGES?",
        path.display()
    );
    path
}

fn layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let exe = std::env::current_exe().expect("the path of the running executable");
        Layout::from_exe(&exe)
            .unwrap_or_else(|| panic!("{} is not inside a cargo target directory", exe.display()))
    })
}

// === impl Layout ===

impl Layout {
    /// `<target>/<profile>/deps/test-hash`, `<target>/<profile>/bin-name` or
    /// `<target>/<triple>/<profile>/...`.
    fn from_exe(exe: &Path) -> Option<Layout> {
        let mut dir = exe.parent()?;
        if matches!(
            dir.file_name().and_then(|n| n.to_str()),
            Some("deps" | "examples")
        ) {
            dir = dir.parent()?;
        }
        let profile = dir.file_name()?.to_os_string();
        let above = dir.parent()?;
        // The target directory holds CACHEDIR.TAG; a triple directory does not.
        let (target_dir, triple) = if !above.join("CACHEDIR.TAG").exists()
            && above.parent()?.join("CACHEDIR.TAG").exists()
        {
            (
                above.parent()?.to_path_buf(),
                Some(above.file_name()?.to_os_string()),
            )
        } else {
            (above.to_path_buf(), None)
        };
        Some(Layout {
            profile_dir: dir.to_path_buf(),
            target_dir,
            triple,
            profile,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_a_test_and_of_a_binary() {
        let l = Layout::from_exe(Path::new("/w/target/debug/deps/echo_app-123")).unwrap();
        assert_eq!(l.profile_dir, Path::new("/w/target/debug"));
        assert_eq!(l.target_dir, Path::new("/w/target"));
        assert_eq!(l.profile, "debug");
        assert!(l.triple.is_none());

        let l = Layout::from_exe(Path::new("/w/target/release/sane-demo")).unwrap();
        assert_eq!(l.profile_dir, Path::new("/w/target/release"));
        assert_eq!(l.profile, "release");
    }
}
