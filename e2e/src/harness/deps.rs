//! Outside programs a test needs (Prometheus, Chromium, ...): found on
//! `PATH`, or installed by the project's own script for them. Under
//! `CI=true` a program that cannot be had fails the test; elsewhere the test
//! is skipped with a loud message.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

/// `program`, running `script` to install it when it is not on `PATH`.
/// Under `CI=true` a missing, uninstallable program panics naming `test`;
/// otherwise it prints a loud `SKIPPED` (saying `package` is needed) and
/// returns `None`.
pub(crate) fn program_or_skip(
    test: &str,
    program: &str,
    script: &Path,
    package: &str,
) -> Option<PathBuf> {
    if let Some(p) = on_path(program) {
        return Some(p);
    }
    let ran = Command::new("bash")
        .arg(script)
        .stdin(Stdio::null())
        .output();
    let why = match (&ran, on_path(program)) {
        (_, Some(p)) => return Some(p),
        (Ok(out), None) => format!(
            "{program} is not installed and {} failed ({}):\n{}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        (Err(e), None) => format!("running {}: {e}", script.display()),
    };
    fail_or_skip(test, &why, package)
}

/// The program `script` installs (when needed) and names on the last line
/// of its stdout, for programs that live outside `PATH` (a virtualenv's
/// python). A failure is handled as in [`program_or_skip`].
pub(crate) fn installed_or_skip(test: &str, script: &Path, package: &str) -> Option<PathBuf> {
    let ran = Command::new("bash")
        .arg(script)
        .stdin(Stdio::null())
        .output();
    let why = match &ran {
        Ok(out) if out.status.success() => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            match stdout.lines().last().map(str::trim) {
                Some(p) if Path::new(p).is_file() => return Some(PathBuf::from(p)),
                _ => format!("{} printed no program path:\n{stdout}", script.display()),
            }
        }
        Ok(out) => format!(
            "{} failed ({}):\n{}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("running {}: {e}", script.display()),
    };
    fail_or_skip(test, &why, package)
}

/// Under `CI=true` panics naming `test` and `why`; otherwise prints a loud
/// `SKIPPED` and returns `None`.
fn fail_or_skip(test: &str, why: &str, package: &str) -> Option<PathBuf> {
    if required() {
        panic!("{test} must run under CI=true but cannot: {why}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n************************************************************\n\
         SKIPPED: {test}: {why}\n\
         (needs {package}; CI=true makes this a failure)\n\
         ************************************************************\n"
    );
    None
}
