//! Link options for the release build of `sane-proxy` on x86_64 Linux
//! (rustc links with its own LLD there):
//!
//! * the code is laid out by `text-order.txt` (`--symbol-ordering-file`):
//!   the functions a sidecar runs per request first, hottest first, then
//!   those it runs at startup, then everything else. An idle sidecar's RSS
//!   is mostly the binary's text, mapped in 64 KiB windows around every
//!   page that runs; packed together, the code that runs maps in little
//!   else, and a request's code shares cache lines and pages. The file is
//!   written by `ORDER=proxy/text-order.txt bench/callgrind.sh`; a symbol
//!   it names that the build does not have is skipped, a function it does
//!   not name goes after the listed ones.
//!   The names carry hashes of the dependencies' build metadata, features
//!   included: the file matches a build of `sane-proxy` on its own
//!   (`cargo build --release -p sane-proxy --bin sane-proxy`); a build that
//!   also selects other packages unifies their features and finds about
//!   half of the names (`bench/text-layout.sh` checks a binary).
//! * relative relocations are packed (`DT_RELR`, glibc 2.36 or later):
//!   the loader reads a few KiB instead of ≈ 0.8 MiB of `.rela.dyn`.
//!
//! Debug builds and other targets link as before.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=text-order.txt");
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = env::var("TARGET").unwrap_or_default();
    if !release || target != "x86_64-unknown-linux-gnu" {
        return;
    }
    let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let order = Path::new(&dir).join("text-order.txt");
    if order.exists() {
        let arg = format!("-Wl,--symbol-ordering-file={}", order.display());
        println!("cargo:rustc-link-arg-bin=sane-proxy={arg}");
        println!("cargo:rustc-link-arg-bin=sane-proxy=-Wl,--no-warn-symbol-ordering");
    }
    println!("cargo:rustc-link-arg-bin=sane-proxy=-Wl,-z,pack-relative-relocs");
}
