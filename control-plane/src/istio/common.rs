//! What every kind's conversion shares: the report of unsupported fields,
//! field paths, durations and percentages as Istio writes them, host names,
//! and regex escaping.

use super::error::IstioError;
use super::object::Object;
use super::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A field that is not honoured.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Unsupported {
    /// Its path, e.g. `spec.http[0].corsPolicy`.
    pub path: String,
    /// Why, e.g. `not supported: Sane routes have no CORS policy`.
    pub reason: String,
}

/// A field that is honoured, translated where Sane differs on purpose.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Note {
    /// Its path.
    pub path: String,
    /// What it became.
    pub note: String,
}

/// Collects the unsupported fields and notes of one object.
#[derive(Debug, Default)]
pub(crate) struct Report {
    unsupported: Vec<Unsupported>,
    notes: Vec<Note>,
}

/// A field path under construction (`spec.http[0].route[1]`).
#[derive(Clone, Debug)]
pub(crate) struct P(String);

/// Istio's `Percent`: `{value: 50.0}`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Percent {
    #[serde(default)]
    pub(crate) value: f64,
}

// === impl Report ===

impl Report {
    /// `path` is not honoured, because `reason`.
    pub(crate) fn unsupported(&mut self, path: &P, reason: impl Into<String>) {
        self.unsupported.push(Unsupported {
            path: path.0.clone(),
            reason: format!("not supported: {}", reason.into()),
        });
    }

    /// If `value` is set, `path.field` is not honoured.
    pub(crate) fn if_set<T>(&mut self, path: &P, field: &str, value: &Option<T>, reason: &str) {
        if value.is_some() {
            self.unsupported(&path.f(field), reason);
        }
    }

    /// `path` is honoured as `note` says.
    pub(crate) fn note(&mut self, path: &P, note: impl Into<String>) {
        self.notes.push(Note {
            path: path.0.clone(),
            note: note.into(),
        });
    }

    /// The unsupported fields and notes, in path order.
    pub(crate) fn finish(self) -> (Vec<Unsupported>, Vec<Note>) {
        (self.unsupported, self.notes)
    }
}

// === impl P ===

impl P {
    /// The path of an object's `spec`.
    pub(crate) fn spec() -> P {
        P("spec".into())
    }

    /// `self.name`.
    pub(crate) fn f(&self, name: &str) -> P {
        P(format!("{}.{name}", self.0))
    }

    /// `self.name[i]`.
    pub(crate) fn i(&self, name: &str, i: usize) -> P {
        P(format!("{}.{name}[{i}]", self.0))
    }

    /// `self[key]` (a map entry).
    pub(crate) fn k(&self, key: &str) -> P {
        P(format!("{}[{key}]", self.0))
    }

    /// The path as text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// A duration as Istio and the Gateway API write it (`0.5s`, `1m30s`,
/// `250ms`, `1h`), in milliseconds. Sub-millisecond parts round up, so a
/// timeout is never shortened to 0.
pub(crate) fn duration_ms(object: &Object, path: &P, text: &str) -> Result<u64, IstioError> {
    let bad = || IstioError::Malformed {
        object: Box::new(object.reference()),
        message: format!(
            "{}: {text:?} is not a duration (e.g. 0.5s, 250ms, 1m)",
            path.as_str()
        ),
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        nanos += number * scale;
    }
    Ok((nanos / 1e6).ceil() as u64)
}

/// Resolves a host as Istio does: a short name is a service of the object's
/// namespace; `name.ns`, `name.ns.svc` and `name.ns.svc.cluster.local` name
/// a service of `ns`; any other name must be a known service's host (from a
/// ServiceEntry's `hosts`). Returns the qualified `name.namespace`.
pub(crate) fn resolve_host(
    object: &Object,
    path: &P,
    host: &str,
    ctx: &Context,
) -> Result<String, IstioError> {
    let host = host.trim().to_ascii_lowercase();
    let unknown = || IstioError::UnknownHost {
        object: Box::new(object.reference()),
        path: path.as_str().to_string(),
        host: host.clone(),
    };
    if host.is_empty() || host.contains('*') {
        return Err(unknown());
    }
    let ns = &object.namespace;
    let short = if host.contains('.') {
        None
    } else {
        Some(format!("{host}.{ns}"))
    };
    for s in &ctx.services {
        if short.as_deref() == Some(s.key().as_str()) || s.host_names().contains(&host) {
            return Ok(s.key());
        }
    }
    if let Some(short) = short {
        // Not known here; the registry checks it exists when it is applied.
        return Ok(short);
    }
    let cluster = host
        .strip_suffix(".svc.cluster.local")
        .or_else(|| host.strip_suffix(".svc"));
    match cluster.and_then(|h| h.split_once('.')) {
        Some((name, ns)) if !name.is_empty() && !ns.is_empty() && !ns.contains('.') => {
            Ok(format!("{name}.{ns}"))
        }
        _ => Err(unknown()),
    }
}

/// `name.namespace` written relative to `ns`: `name` when it is in `ns`.
pub(crate) fn relative(service: &str, ns: &str) -> String {
    match service.split_once('.') {
        Some((name, s_ns)) if s_ns == ns => name.to_string(),
        _ => service.to_string(),
    }
}

/// A Sane resource name from an object name and a suffix: lowercase, dots
/// and other characters kept only where Sane names allow them.
pub(crate) fn sane_name(base: &str, suffix: Option<&str>) -> String {
    let raw = match suffix {
        Some(s) => format!("{base}.{s}"),
        None => base.to_string(),
    };
    raw.to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Escapes `s` so a regex matches it literally.
pub(crate) fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~ ".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A `Percent` or a deprecated integer percent as a share 0-100.
pub(crate) fn percent(p: Option<Percent>, legacy: Option<u32>) -> Option<f64> {
    p.map(|p| p.value).or(legacy.map(f64::from))
}

/// True when an untyped field holds something (not null, not empty).
pub(crate) fn present(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> Object {
        Object {
            kind: super::super::object::ObjectKind::VirtualService,
            api_version: "networking.istio.io/v1".into(),
            name: "x".into(),
            namespace: "default".into(),
            spec: Value::Null,
            raw: Value::Null,
        }
    }

    #[test]
    fn durations_read_as_istio_writes_them() {
        let o = object();
        let p = P::spec().f("timeout");
        for (text, ms) in [
            ("0.5s", 500),
            ("2s", 2_000),
            ("1m30s", 90_000),
            ("250ms", 250),
            ("1h", 3_600_000),
            ("100us", 1),
        ] {
            assert_eq!(duration_ms(&o, &p, text).unwrap(), ms, "{text}");
        }
        let err = duration_ms(&o, &p, "5 seconds").unwrap_err().to_string();
        assert!(
            err.contains("spec.timeout: \"5 seconds\" is not a duration"),
            "{err}"
        );
    }

    #[test]
    fn hosts_resolve_in_the_objects_namespace() {
        let o = object();
        let p = P::spec().i("hosts", 0);
        let ctx = Context::default();
        assert_eq!(
            resolve_host(&o, &p, "reviews", &ctx).unwrap(),
            "reviews.default"
        );
        assert_eq!(
            resolve_host(&o, &p, "ratings.prod.svc.cluster.local", &ctx).unwrap(),
            "ratings.prod"
        );
        let err = resolve_host(&o, &p, "httpbin.org", &ctx)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.hosts[0]: host \"httpbin.org\" is not a known service"),
            "{err}"
        );
        assert_eq!(relative("reviews.default", "default"), "reviews");
        assert_eq!(regex_escape("/a.b"), "/a\\.b");
    }
}
