//! Reading YAML config with bounded cost: the size, nesting depth and alias
//! expansion of a document are checked *before* `serde_yaml` loads it.
//!
//! `serde_yaml` alone accepts a 0.8 MB document whose aliases repeat a large
//! scalar thousands of times (gigabytes once deserialized), and its parser
//! (libyaml) takes time quadratic in the nesting depth before serde_yaml's
//! own recursion limit is reached (12 s at 50 000 levels). [`check`] walks
//! libyaml's events first and stops at the first one past a limit, so a bad
//! document costs at most linear time in its size; [`from_str`] then loads
//! a document that passed.

#[allow(unsafe_code)]
mod libyaml;

use self::libyaml::{Event, Events, Mark};
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};

/// Default largest config document: 16 MiB.
pub const DEFAULT_MAX_YAML_BYTES: usize = 16 * 1024 * 1024;
/// Default deepest nesting of sequences and mappings. The deepest resource
/// (an authorization policy's condition values) sits about ten levels down.
pub const DEFAULT_MAX_YAML_DEPTH: usize = 64;

/// What a YAML document may cost to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct YamlLimits {
    /// Largest document in bytes; also the most its aliases may repeat
    /// (each repeated scalar's bytes plus one per repeated node), so a
    /// document loads at most twice this much. Default: 16 MiB.
    pub max_bytes: usize,
    /// Deepest nesting of sequences and mappings, aliases expanded.
    /// Default: 64.
    pub max_depth: usize,
}

/// Why a YAML document was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    /// The document is larger than [`YamlLimits::max_bytes`].
    #[error("{size} bytes is above the maximum of {max} bytes")]
    TooLarge {
        /// The document's size.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// Sequences and mappings nest deeper than [`YamlLimits::max_depth`].
    #[error("line {line} column {column}: nesting is deeper than the maximum of {max} levels")]
    TooDeep {
        /// 1-based line of the node past the limit.
        line: u64,
        /// 1-based column.
        column: u64,
        /// The limit.
        max: usize,
    },
    /// Aliases repeat more than [`YamlLimits::max_bytes`] of content.
    #[error(
        "line {line} column {column}: aliases repeat more than the maximum of {max} bytes \
         of the document"
    )]
    AliasExpansion {
        /// 1-based line of the alias past the limit.
        line: u64,
        /// 1-based column.
        column: u64,
        /// The limit.
        max: usize,
    },
    /// An alias names an anchor not defined before it, or one whose node
    /// contains the alias (a cycle).
    #[error(
        "line {line} column {column}: alias *{name} does not refer to an anchor defined \
         before it{cycle}",
        cycle = if *.cyclic { " (it is inside the node it refers to)" } else { "" }
    )]
    Alias {
        /// The anchor's name (at most 64 characters of it).
        name: String,
        /// True if the alias sits inside its anchor's node.
        cyclic: bool,
        /// 1-based line of the alias.
        line: u64,
        /// 1-based column.
        column: u64,
    },
    /// Not valid YAML, or not the expected fields and types.
    #[error("{0}")]
    Parse(#[from] serde_yaml::Error),
}

/// One open sequence or mapping during [`check`].
struct Open {
    anchor: Option<Vec<u8>>,
    /// Nodes below and scalar bytes, aliases expanded.
    size: u64,
    /// Deepest nesting below this one, aliases expanded.
    height: usize,
}

/// An anchored node, for the aliases that repeat it.
#[derive(Clone, Copy)]
struct Anchored {
    size: u64,
    height: usize,
}

// === impl YamlLimits ===

impl Default for YamlLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_YAML_BYTES,
            max_depth: DEFAULT_MAX_YAML_DEPTH,
        }
    }
}

impl YamlLimits {
    /// The default limits with `max_bytes` as the largest document.
    pub fn with_max_bytes(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            ..Self::default()
        }
    }
}

/// Checks `text` against `limits` and deserializes it.
pub fn from_str<T: DeserializeOwned>(text: &str, limits: &YamlLimits) -> Result<T, YamlError> {
    check(text, limits)?;
    Ok(serde_yaml::from_str(text)?)
}

/// Checks `text` (one document or a `---`-separated stream of them; the
/// limits apply to the whole stream) against `limits` without building
/// anything, in time linear in its length. A syntax error is left for
/// `serde_yaml` to describe: it stops at the same place.
pub fn check(text: &str, limits: &YamlLimits) -> Result<(), YamlError> {
    if text.len() > limits.max_bytes {
        return Err(YamlError::TooLarge {
            size: text.len() as u64,
            max: limits.max_bytes,
        });
    }
    let max_size = limits.max_bytes as u64;
    let mut events = Events::new(text.as_bytes());
    let mut open: Vec<Open> = Vec::new();
    let mut anchors: HashMap<Vec<u8>, Anchored> = HashMap::new();
    let mut open_anchors: HashSet<Vec<u8>> = HashSet::new();
    // What aliases repeat, in the units of `Open::size`.
    let mut repeated: u64 = 0;
    loop {
        let Ok((event, at)) = events.next_event() else {
            return Ok(());
        };
        // What this event adds where it stands: (size, nesting).
        let (size, height) = match event {
            Event::End => return Ok(()),
            Event::Other => continue,
            Event::DocumentStart => {
                anchors.clear();
                continue;
            }
            Event::CollectionStart { anchor } => {
                if open.len() >= limits.max_depth {
                    return Err(too_deep(at, limits));
                }
                if let Some(a) = &anchor {
                    // A later definition replaces an earlier one.
                    anchors.remove(a);
                    open_anchors.insert(a.clone());
                }
                open.push(Open {
                    anchor,
                    size: 1,
                    height: 0,
                });
                continue;
            }
            Event::CollectionEnd => {
                let Some(done) = open.pop() else { continue };
                let node = Anchored {
                    size: done.size,
                    height: done.height + 1,
                };
                if let Some(a) = done.anchor {
                    open_anchors.remove(&a);
                    anchors.insert(a, node);
                }
                if let Some(parent) = open.last_mut() {
                    parent.size = parent.size.saturating_add(node.size);
                    parent.height = parent.height.max(node.height);
                }
                continue;
            }
            Event::Scalar { anchor, len } => {
                let size = len.saturating_add(1);
                if let Some(a) = anchor {
                    open_anchors.remove(&a);
                    anchors.insert(a, Anchored { size, height: 0 });
                }
                (size, 0)
            }
            Event::Alias { anchor } => {
                let Some(node) = anchors.get(&anchor).copied() else {
                    return Err(YamlError::Alias {
                        name: String::from_utf8_lossy(&anchor).chars().take(64).collect(),
                        cyclic: open_anchors.contains(&anchor),
                        line: at.line,
                        column: at.column,
                    });
                };
                if open.len() + node.height > limits.max_depth {
                    return Err(too_deep(at, limits));
                }
                repeated = repeated.saturating_add(node.size);
                if repeated > max_size {
                    return Err(YamlError::AliasExpansion {
                        line: at.line,
                        column: at.column,
                        max: limits.max_bytes,
                    });
                }
                (node.size, node.height)
            }
        };
        if let Some(parent) = open.last_mut() {
            parent.size = parent.size.saturating_add(size);
            parent.height = parent.height.max(height);
        }
    }
}

fn too_deep(at: Mark, limits: &YamlLimits) -> YamlError {
    YamlError::TooDeep {
        line: at.line,
        column: at.column,
        max: limits.max_depth,
    }
}

#[cfg(test)]
mod tests;
