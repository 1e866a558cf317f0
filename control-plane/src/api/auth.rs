//! The API token that guards writes.
//!
//! Resolution order: an explicit token (`--api-token` / `SANE_API_TOKEN`), a
//! token file (`--api-token-file`), then `api-token` in the data directory,
//! generated (mode 0600) on first start. The token itself is never logged;
//! only the path of the file holding it.

use crate::error::Error;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name of the generated token inside the data directory.
pub const TOKEN_FILE: &str = "api-token";

/// The bearer token writes must present.
#[derive(Clone)]
pub struct ApiToken {
    token: String,
    /// Where it was read from or written to, if a file.
    path: Option<PathBuf>,
}

/// Why a request is not authorized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <token>`, or the wrong token.
    Invalid,
}

// === impl ApiToken ===

impl ApiToken {
    /// A token given directly.
    pub fn new(token: impl Into<String>) -> ApiToken {
        ApiToken {
            token: token.into(),
            path: None,
        }
    }

    /// Resolves the token as described in the module docs.
    pub fn resolve(
        value: Option<&str>,
        file: Option<&Path>,
        data_dir: Option<&Path>,
    ) -> Result<ApiToken, Error> {
        if let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) {
            return Ok(ApiToken::new(v));
        }
        if let Some(path) = file {
            return read(path);
        }
        let dir = data_dir.ok_or(Error::NoToken)?;
        let path = dir.join(TOKEN_FILE);
        if path.exists() {
            return read(&path);
        }
        generate(&path)
    }

    /// The file the token lives in, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The token, for clients that read it from the same file.
    pub fn secret(&self) -> &str {
        &self.token
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, header: Option<&[u8]>) -> Result<(), AuthFailure> {
        let header = header.ok_or(AuthFailure::Missing)?;
        let presented = header
            .strip_prefix(b"Bearer ")
            .ok_or(AuthFailure::Invalid)?;
        if constant_time_eq(presented, self.token.as_bytes()) {
            Ok(())
        } else {
            Err(AuthFailure::Invalid)
        }
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("token", &"<redacted>")
            .field("path", &self.path)
            .finish()
    }
}

fn read(path: &Path) -> Result<ApiToken, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Token {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::Token {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"),
        });
    }
    Ok(ApiToken {
        token: token.to_string(),
        path: Some(path.to_path_buf()),
    })
}

fn generate(path: &Path) -> Result<ApiToken, Error> {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let err = |source| Error::Token {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(format!("{token}\n").as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    tracing::info!(path = %path.display(), "generated api token");
    Ok(ApiToken {
        token,
        path: Some(path.to_path_buf()),
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_with_mode_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = ApiToken::resolve(None, None, Some(dir.path())).unwrap();
        let b = ApiToken::resolve(None, None, Some(dir.path())).unwrap();
        assert_eq!(a.secret(), b.secret());
        assert_eq!(a.secret().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(a.path().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!format!("{a:?}").contains(a.secret()));
        let bearer = format!("Bearer {}", a.secret());
        assert_eq!(a.check(Some(bearer.as_bytes())), Ok(()));
        assert_eq!(a.check(None), Err(AuthFailure::Missing));
        assert_eq!(a.check(Some(b"Bearer nope")), Err(AuthFailure::Invalid));
        assert!(matches!(
            ApiToken::resolve(None, None, None),
            Err(Error::NoToken)
        ));
        assert_eq!(
            ApiToken::resolve(Some("t"), None, None).unwrap().secret(),
            "t"
        );
    }
}
