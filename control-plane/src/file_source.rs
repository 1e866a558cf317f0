//! `--config-dir`: YAML files of `MeshResources` documents (one or several
//! per file, `---`-separated), kept in the registry as the files change.
//!
//! Every second the directory is listed and each `*.yaml`/`*.yml` file read;
//! a file whose content changed is parsed and applied as one write owned by
//! that file: its new resources are put, the ones it no longer declares are
//! deleted, and a removed file deletes everything it declared. Changed files
//! are first applied together (so files may reference each other in any
//! order); if that fails, one by one until no more progress, and each file
//! still failing is logged with its path and error. A rejected file keeps its
//! last good content in the registry; it is retried on every poll (the same
//! error is logged once). Listeners in files are ignored: they are per proxy.
//! Polling (rather than inotify) keeps this portable and dependency-free.

use crate::error::Error;
use crate::registry::{Change, Op, Origin, Registry};
use crate::resource::{Kind, Resource};
use sane_xds_proto::yaml::{self, YamlLimits};
use sane_xds_proto::MeshResources;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Keeps the registry in step with a directory of YAML files.
#[derive(Debug)]
pub struct FileSource {
    dir: PathBuf,
    registry: Arc<Registry>,
    files: BTreeMap<PathBuf, FileState>,
}

#[derive(Debug, Default)]
struct FileState {
    /// Hash of the content last applied.
    applied: Option<[u8; 32]>,
    /// Last error and the content it was for, to log each error once.
    last_error: Option<([u8; 32], String)>,
    /// What the applied content declared.
    owned: BTreeSet<(Kind, String)>,
}

/// What one poll did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Files whose new content (or removal) was applied.
    pub applied: Vec<PathBuf>,
    /// Files rejected, with the reason.
    pub rejected: Vec<(PathBuf, String)>,
}

struct Candidate {
    path: PathBuf,
    hash: Option<[u8; 32]>,
    keys: BTreeSet<(Kind, String)>,
    change: Change,
}

// === impl FileSource ===

impl FileSource {
    /// A source for `dir`, aware of what its files wrote before a restart.
    pub fn new(dir: &Path, registry: Arc<Registry>) -> FileSource {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let mut files: BTreeMap<PathBuf, FileState> = BTreeMap::new();
        for (kind, key, entry) in registry.snapshot().iter() {
            if let Some(p) = entry
                .origin
                .file()
                .filter(|p| p.parent() == Some(dir.as_path()))
            {
                files
                    .entry(p.to_path_buf())
                    .or_default()
                    .owned
                    .insert((kind, key.to_string()));
            }
        }
        FileSource {
            dir,
            registry,
            files,
        }
    }

    /// Polls every `interval` until `shutdown`.
    pub async fn run(mut self, interval: Duration, shutdown: CancellationToken) {
        loop {
            // Reading files and fsyncing the store block: keep them off the
            // async workers.
            let polled = tokio::task::spawn_blocking(move || {
                let result = self.sync();
                (self, result)
            })
            .await;
            let result;
            (self, result) = match polled {
                Ok(done) => done,
                Err(error) => {
                    tracing::error!(%error, "config dir poll panicked; no longer following it");
                    return;
                }
            };
            if let Err(error) = result {
                tracing::warn!(%error, "config dir not readable; keeping the last good content");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// One poll: applies what changed. Performs blocking file I/O.
    pub fn sync(&mut self) -> Result<SyncReport, Error> {
        let mut report = SyncReport::default();
        let present = self.list()?;
        let mut candidates = Vec::new();
        for path in &present {
            let state = self.files.entry(path.clone()).or_default();
            let content = match read_bounded(path, YamlLimits::default().max_bytes) {
                Ok(c) => c,
                Err(e) => {
                    let msg = format!("reading: {e}");
                    reject(state, path, [0; 32], msg, &mut report);
                    continue;
                }
            };
            let hash: [u8; 32] = Sha256::digest(&content).into();
            if state.applied == Some(hash) {
                continue;
            }
            match parse(path, &content) {
                Ok(resources) => candidates.push(candidate(path, Some(hash), state, resources)),
                Err(msg) => reject(state, path, hash, msg, &mut report),
            }
        }
        let removed: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        for path in removed {
            if self.files[&path].owned.is_empty() {
                self.files.remove(&path);
                continue;
            }
            candidates.push(candidate(&path, None, &self.files[&path], Vec::new()));
        }
        if candidates.is_empty() {
            return Ok(report);
        }
        let all: Vec<Change> = candidates.iter().map(|c| c.change.clone()).collect();
        if self.registry.apply_all(all).is_ok() {
            for c in candidates {
                self.applied(c, &mut report);
            }
            return Ok(report);
        }
        // Find the culprits: apply one by one while that makes progress.
        let mut left = candidates;
        loop {
            let before = left.len();
            let mut failed = Vec::new();
            for c in std::mem::take(&mut left) {
                match self.registry.apply(c.change.clone()) {
                    Ok(_) => self.applied(c, &mut report),
                    Err(e) => failed.push((c, e.to_string())),
                }
            }
            if failed.is_empty() || failed.len() == before {
                for (c, err) in failed {
                    let state = self.files.entry(c.path.clone()).or_default();
                    reject(state, &c.path, c.hash.unwrap_or([0; 32]), err, &mut report);
                }
                return Ok(report);
            }
            left = failed.into_iter().map(|(c, _)| c).collect();
        }
    }

    fn applied(&mut self, c: Candidate, report: &mut SyncReport) {
        match c.hash {
            Some(hash) => {
                let state = self.files.entry(c.path.clone()).or_default();
                state.applied = Some(hash);
                state.last_error = None;
                state.owned = c.keys;
                tracing::info!(path = %c.path.display(), resources = state.owned.len(), "config file applied");
            }
            None => {
                self.files.remove(&c.path);
                tracing::info!(path = %c.path.display(), "config file removed; its resources were deleted");
            }
        }
        report.applied.push(c.path);
    }

    fn list(&self) -> Result<BTreeSet<PathBuf>, Error> {
        let err = |source| Error::ConfigDir {
            path: self.dir.clone(),
            source,
        };
        let mut out = BTreeSet::new();
        for entry in std::fs::read_dir(&self.dir).map_err(err)? {
            let path = entry.map_err(err)?.path();
            let yaml = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            );
            if yaml && path.is_file() {
                out.insert(path);
            }
        }
        Ok(out)
    }
}

fn reject(
    state: &mut FileState,
    path: &Path,
    hash: [u8; 32],
    msg: String,
    report: &mut SyncReport,
) {
    let repeated = state.last_error.as_ref() == Some(&(hash, msg.clone()));
    if !repeated {
        tracing::warn!(path = %path.display(), error = %msg, "config file rejected; keeping its last good content");
        state.last_error = Some((hash, msg.clone()));
    }
    report.rejected.push((path.to_path_buf(), msg));
}

/// The write that brings the registry from what `state` declared to
/// `resources`.
fn candidate(
    path: &Path,
    hash: Option<[u8; 32]>,
    state: &FileState,
    resources: Vec<Resource>,
) -> Candidate {
    let mut resources = resources;
    resources.iter_mut().for_each(Resource::normalize);
    let keys: BTreeSet<(Kind, String)> = resources.iter().map(|r| (r.kind(), r.key())).collect();
    // Deletes first (reverse dependency order), then puts.
    let mut ops: Vec<Op> = state
        .owned
        .iter()
        .rev()
        .filter(|k| !keys.contains(k))
        .map(|(kind, key)| Op::Delete {
            kind: *kind,
            key: key.clone(),
        })
        .collect();
    ops.extend(resources.into_iter().map(|resource| Op::Put {
        resource,
        ttl: None,
    }));
    Candidate {
        path: path.to_path_buf(),
        hash,
        keys,
        change: Change {
            origin: Origin::File(path.to_path_buf()),
            ops,
        },
    }
}

/// Reads at most `max` bytes of `path`: a larger file is an error, and is
/// not read whole.
fn read_bounded(path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut content = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut content)?;
    if content.len() > max {
        return Err(std::io::Error::other(format!(
            "the file is above the maximum of {max} bytes"
        )));
    }
    Ok(content)
}

/// Parses every document of a file; rejects duplicate keys. The file's
/// nesting and aliases are bounded before it is parsed ([`yaml::check`]).
fn parse(path: &Path, content: &[u8]) -> Result<Vec<Resource>, String> {
    let text = std::str::from_utf8(content).map_err(|e| format!("not UTF-8: {e}"))?;
    yaml::check(text, &YamlLimits::default()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut seen: BTreeMap<(Kind, String), String> = BTreeMap::new();
    for (doc_index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| format!("document {}: {e}", doc_index + 1))?;
        if value.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        let mesh: MeshResources = serde_yaml::from_value(value)
            .map_err(|e| format!("document {}: {e}", doc_index + 1))?;
        if !mesh.listeners.is_empty() {
            tracing::warn!(path = %path.display(), "listeners in config files are ignored; they belong in the proxy bootstrap");
        }
        for (item, mut resource) in Resource::from_mesh(mesh) {
            resource.normalize();
            let at = format!("document {}: {item}", doc_index + 1);
            let k = (resource.kind(), resource.key());
            if let Some(first) = seen.get(&k) {
                return Err(format!(
                    "{at}: {} {:?} is declared twice (first at {first})",
                    k.0, k.1
                ));
            }
            seen.insert(k, at);
            out.push(resource);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICES: &str = "services:\n  - { name: echo, ports: [ { port: 80 } ] }\n  - { name: db, ports: [ { port: 5432, protocol: tcp } ] }\n";
    const ROUTE: &str = "routes:\n  - { name: split, service: echo, rules: [ { destinations: [ { service: echo } ] } ] }\n";

    fn setup() -> (tempfile::TempDir, Arc<Registry>, FileSource) {
        let dir = tempfile::tempdir().unwrap();
        let reg = Arc::new(Registry::in_memory());
        let src = FileSource::new(dir.path(), reg.clone());
        (dir, reg, src)
    }

    #[test]
    fn files_load_in_any_order_and_follow_edits_and_removal() {
        let (dir, reg, mut src) = setup();
        // The route file sorts first but depends on the services file.
        std::fs::write(dir.path().join("a-routes.yaml"), ROUTE).unwrap();
        std::fs::write(dir.path().join("b-services.yml"), SERVICES).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let report = src.sync().unwrap();
        assert_eq!(report.applied.len(), 2, "{report:?}");
        assert_eq!(reg.snapshot().len(), 3);
        let rev = reg.revision();

        // Nothing changed: no write.
        assert_eq!(src.sync().unwrap(), SyncReport::default());
        assert_eq!(reg.revision(), rev);

        // Dropping db from the file deletes it.
        std::fs::write(
            dir.path().join("b-services.yml"),
            "services:\n  - { name: echo, ports: [ { port: 80 } ] }\n",
        )
        .unwrap();
        src.sync().unwrap();
        assert!(reg.snapshot().get(Kind::Service, "default/db").is_none());

        // Removing the route file deletes its route.
        std::fs::remove_file(dir.path().join("a-routes.yaml")).unwrap();
        src.sync().unwrap();
        assert!(reg.snapshot().get(Kind::Route, "default/split").is_none());
        assert!(reg.snapshot().get(Kind::Service, "default/echo").is_some());
    }

    #[test]
    fn bad_file_is_rejected_with_its_path_and_last_good_content_stays() {
        let (dir, reg, mut src) = setup();
        let file = dir.path().join("mesh.yaml");
        std::fs::write(&file, format!("{SERVICES}---\n{ROUTE}")).unwrap();
        src.sync().unwrap();
        assert_eq!(reg.snapshot().len(), 3);

        // Unknown field: parse error naming the document and field.
        std::fs::write(&file, format!("{SERVICES}---\n{ROUTE}  - frobnicate: 1\n")).unwrap();
        let report = src.sync().unwrap();
        let (path, err) = &report.rejected[0];
        assert!(path.ends_with("mesh.yaml"));
        assert!(err.contains("document 2"), "{err}");
        assert_eq!(reg.snapshot().len(), 3);

        // Validation error: the route points at a missing service.
        std::fs::write(
            &file,
            format!(
                "{SERVICES}---\n{}",
                ROUTE.replace("service: echo }", "service: nope }")
            ),
        )
        .unwrap();
        let report = src.sync().unwrap();
        let err = &report.rejected[0].1;
        assert!(
            err.contains("routes[default/split].rules[0].destinations[0].service"),
            "{err}"
        );
        let snap = reg.snapshot();
        let Some(Resource::Route(r)) = snap.get(Kind::Route, "default/split").map(|e| &e.resource)
        else {
            panic!("route gone")
        };
        assert_eq!(r.rules[0].destinations[0].service, "echo");

        // Duplicates within a file are rejected.
        std::fs::write(&file, format!("{SERVICES}---\n{SERVICES}")).unwrap();
        let err = &src.sync().unwrap().rejected[0].1;
        assert!(err.contains("declared twice"), "{err}");
    }

    #[test]
    fn hostile_files_are_bounded_before_parsing_and_the_last_good_content_stays() {
        let (dir, reg, mut src) = setup();
        let file = dir.path().join("mesh.yaml");
        std::fs::write(&file, SERVICES).unwrap();
        src.sync().unwrap();
        assert_eq!(reg.snapshot().len(), 2);

        // ~0.8 MB whose aliases repeat a 400 KB name 20 000 times (8 GB).
        let mut bomb = format!(
            "services:\n  - name: &a {}\n    ports: [ {{ port: 80 }} ]\n    hosts: [",
            "a".repeat(400_000)
        );
        for i in 0..20_000 {
            bomb.push_str(if i == 0 { "*a" } else { ",*a" });
        }
        bomb.push_str("]\n");
        let deep = format!("services: {}{}\n", "[".repeat(50_000), "]".repeat(50_000));
        let huge = format!("# {}\n{SERVICES}", "x".repeat(17 * 1024 * 1024));
        for (text, want) in [
            (
                bomb,
                "aliases repeat more than the maximum of 16777216 bytes",
            ),
            (deep, "nesting is deeper than the maximum of 64 levels"),
            (huge, "above the maximum of 16777216 bytes"),
        ] {
            std::fs::write(&file, text).unwrap();
            let start = std::time::Instant::now();
            let report = src.sync().unwrap();
            println!("{want}: rejected in {:?}", start.elapsed());
            let (path, err) = &report.rejected[0];
            assert!(path.ends_with("mesh.yaml"));
            assert!(err.contains(want), "{err}");
            assert_eq!(reg.snapshot().len(), 2, "the last good content stays");
        }
    }

    #[test]
    fn a_file_cannot_take_another_files_resource_or_be_overwritten_by_the_api() {
        let (dir, reg, mut src) = setup();
        std::fs::write(dir.path().join("a.yaml"), SERVICES).unwrap();
        src.sync().unwrap();
        std::fs::write(dir.path().join("b.yaml"), SERVICES).unwrap();
        let report = src.sync().unwrap();
        assert!(
            report.rejected[0].1.contains("is managed by file:"),
            "{report:?}"
        );
        let change = Change {
            origin: Origin::Api,
            ops: vec![Op::Delete {
                kind: Kind::Service,
                key: "default/echo".into(),
            }],
        };
        assert!(matches!(reg.apply(change), Err(Error::Conflict { .. })));
    }
}
