//! Keeping a generated CA on disk, so a restarted control plane signs under
//! the same root and running proxies keep trusting it.
//!
//! The key file is created with mode 0600 before any byte is written, and both
//! files are written to a temporary file in the same directory and renamed
//! into place, so a crash never leaves a truncated key or certificate.
//!
//! Every error loading the files names the file at fault (or both, when
//! they do not belong together).
//!
//! One control plane owns a CA directory: two starting together on an empty
//! directory could each generate a CA and interleave their files. The
//! mismatch is then refused at the next load (the key no longer matches the
//! certificate) rather than served.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{CaOptions, CertificateAuthority};
use crate::error::Error;
use crate::identity::TrustDomain;
use crate::x509;

/// File name of the CA certificate chain in a CA directory.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// File name of the CA private key in a CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

// === impl CertificateAuthority ===

impl CertificateAuthority {
    /// Loads the CA kept in `dir` ([`CA_CERT_FILE`], [`CA_KEY_FILE`]), or
    /// generates a root CA and keeps it there if neither file exists.
    ///
    /// `dir` is created (mode 0700) if needed. If only one of the files
    /// exists the CA is refused rather than regenerated: overwriting a key
    /// would orphan every certificate issued under it.
    pub fn load_or_generate(
        dir: &Path,
        trust_domain: &TrustDomain,
        options: CaOptions,
    ) -> Result<Self, Error> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => Self::from_pem_files(trust_domain, &cert_path, &key_path, options),
            (false, false) => {
                let ca = Self::generate(trust_domain, options)?;
                DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(dir)
                    .map_err(io_error("create directory", dir))?;
                write_atomically(&key_path, ca.key_pem().as_bytes(), KEY_MODE)?;
                write_atomically(&cert_path, ca.chain_pem().as_bytes(), CERT_MODE)?;
                Ok(ca)
            }
            (true, false) => Err(Error::IncompleteCaFiles {
                dir: dir.to_owned(),
                present: CA_CERT_FILE,
                missing: CA_KEY_FILE,
            }),
            (false, true) => Err(Error::IncompleteCaFiles {
                dir: dir.to_owned(),
                present: CA_KEY_FILE,
                missing: CA_CERT_FILE,
            }),
        }
    }
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

fn exists(path: &Path) -> Result<bool, Error> {
    path.try_exists().map_err(io_error("stat", path))
}

/// Writes `contents` to `path` through a temporary file created with `mode`
/// in the same directory, then renames it over `path` and syncs the directory.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix: [u8; 8] = x509::random_bytes()?;
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let tmp: PathBuf = dir.join(format!(".{name}.tmp-{suffix}"));

    let written = (|| {
        // The mode is set at creation, so the key is never readable by others,
        // not even for the instant between create and chmod.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_error("create", &tmp))?;
        file.write_all(contents).map_err(io_error("write", &tmp))?;
        file.sync_all().map_err(io_error("sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_error("rename into place", path))
    })();
    if written.is_err() {
        // Best effort: the temporary file holds nothing the caller needs.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync directory", dir))
}
