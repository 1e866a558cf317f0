//! Validation errors that name the field path and the bad value, e.g.
//! `routes[2].rules[0].destinations[1].weight: 0 must be at least 1`.

use std::fmt;

/// Longest name: a DNS name (RFC 1035), and so a Kubernetes object name.
/// Applies to every resource name and namespace, service hosts, the node's
/// id and workload, gateway hostnames.
pub const MAX_NAME_BYTES: usize = 253;
/// Longest HTTP header name, method, retry condition or status name a
/// config may hold.
pub const MAX_TOKEN_BYTES: usize = 256;
/// Longest other string a config may hold: paths and path patterns,
/// regexes, header values, addresses and URLs, file names, labels,
/// principals.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Longest validation message: a message quoting a long value is cut.
const MAX_MESSAGE_BYTES: usize = 512;

/// A dotted path to a field inside a resource, built while validating.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(String);

/// One invalid field: where it is and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `services[0].ports[1].port`.
    pub path: String,
    /// What is wrong, including the offending value.
    pub message: String,
}

/// Every invalid field found in one validation pass (never empty).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

// === impl FieldPath ===

impl FieldPath {
    /// The root path (empty).
    pub fn root() -> Self {
        Self(String::new())
    }

    /// A path starting at `name`.
    pub fn new(name: &str) -> Self {
        Self(name.to_string())
    }

    /// `self.name`
    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_string())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    /// `self[i]`
    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    /// `self.name[i]`
    pub fn item(&self, name: &str, i: usize) -> Self {
        self.field(name).index(i)
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl FieldError ===

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

// === impl ValidationErrors ===

impl ValidationErrors {
    /// Turns a list of errors into a result: `Ok` when it is empty.
    pub fn into_result(errors: Vec<FieldError>) -> Result<(), ValidationErrors> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errors))
        }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects field errors during one validation pass.
#[derive(Debug, Default)]
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, path: &FieldPath, message: impl Into<String>) {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE_BYTES {
            // A message quoting a value too long to repeat.
            let total = message.len();
            let mut end = MAX_MESSAGE_BYTES / 2;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str(&format!("… (message of {total} bytes cut)"));
        }
        self.0.push(FieldError {
            path: path.as_str().to_string(),
            message,
        });
    }

    /// Checks that a string is at most `max` bytes (it is not quoted in the
    /// error); returns false if it is longer.
    pub(crate) fn length(&mut self, path: &FieldPath, value: &str, max: usize) -> bool {
        if value.len() > max {
            self.push(
                path,
                format!("{} bytes is above the maximum of {max}", value.len()),
            );
            return false;
        }
        true
    }

    /// Checks a DNS-label-like name: lowercase letters, digits, `-` and `.`,
    /// at most [`MAX_NAME_BYTES`].
    pub(crate) fn name(&mut self, path: &FieldPath, value: &str) {
        if !self.length(path, value, MAX_NAME_BYTES) {
            return;
        }
        if value.is_empty() {
            self.push(path, "must not be empty");
        } else if !value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            || value.starts_with(['-', '.'])
        {
            self.push(
                path,
                format!("{value:?} is not a valid name (lowercase letters, digits, '-', '.')"),
            );
        }
    }

    pub(crate) fn port(&mut self, path: &FieldPath, value: u32, allow_zero: bool) {
        if value > 65535 || (!allow_zero && value == 0) {
            self.push(path, format!("{value} is not a valid port (1-65535)"));
        }
    }

    pub(crate) fn enum_value<E: TryFrom<i32>>(&mut self, path: &FieldPath, value: i32) {
        if E::try_from(value).is_err() {
            self.push(path, format!("{value} is not a known value"));
        }
    }

    /// Checks a percentage: a finite number from 0 to 100.
    pub(crate) fn percent(&mut self, path: &FieldPath, value: f64) {
        if !value.is_finite() || !(0.0..=100.0).contains(&value) {
            self.push(path, format!("{value} is not a percentage (0-100)"));
        }
    }

    /// Checks a duration in milliseconds against an upper bound.
    pub(crate) fn duration_at_most(&mut self, path: &FieldPath, ms: u64, max_ms: u64) {
        if ms > max_ms {
            self.push(
                path,
                format!(
                    "{} is above the maximum of {}",
                    human_ms(ms),
                    human_ms(max_ms)
                ),
            );
        }
    }

    /// Checks a count against an upper bound.
    pub(crate) fn at_most(&mut self, path: &FieldPath, value: u64, max: u64) {
        if value > max {
            self.push(path, format!("{value} is above the maximum of {max}"));
        }
    }

    /// Checks an HTTP header name (a token; compared case-insensitively).
    pub(crate) fn header_name(&mut self, path: &FieldPath, name: &str) {
        if !self.length(path, name, MAX_TOKEN_BYTES) {
            return;
        }
        if crate::route::http_token(name).is_none() || name.is_empty() {
            self.push(path, format!("{name:?} is not a valid header name"));
        }
    }

    pub(crate) fn finish(self) -> Result<(), ValidationErrors> {
        ValidationErrors::into_result(self.0)
    }
}

/// `1500` as `1s 500ms`, the way durations are written in config.
pub(crate) fn human_ms(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_are_rejected_by_length_and_never_quoted() {
        let huge = "w".repeat(100 * 1024 * 1024);
        let b = crate::Bootstrap {
            node: crate::Node {
                workload: huge.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        let start = std::time::Instant::now();
        let err = b.validate().unwrap_err().to_string();
        println!("100 MB node.workload rejected in {:?}", start.elapsed());
        assert_eq!(
            err,
            "node.workload: 104857600 bytes is above the maximum of 253"
        );

        let long = |n: usize| "a".repeat(n);
        let yaml = format!(
            r#"
node: {{ id: {id} }}
resources:
  services:
    - {{ name: {name}, hosts: [ {name} ], ports: [ {{ port: 80 }} ] }}
  endpoints:
    - {{ service: s, address: {addr}, labels: {{ v: {label} }} }}
  routes:
    - name: r
      service: s
      rules:
        - matches: [ {{ path: {{ kind: prefix, value: /{path} }}, headers: [ {{ name: x, value: {value} }} ] }} ]
          request_headers: {{ set: {{ x-a: {value} }} }}
"#,
            id = long(254),
            name = long(254),
            addr = long(5000),
            label = long(4097),
            path = long(4096),
            value = long(4097),
        );
        let b: crate::Bootstrap = serde_yaml::from_str(&yaml).unwrap();
        let err = b.validate().unwrap_err().to_string();
        for want in [
            "node.id: 254 bytes is above the maximum of 253",
            "resources.services[0].name: 254 bytes is above the maximum of 253",
            "resources.services[0].hosts[0]: 254 bytes is above the maximum of 253",
            "resources.endpoints[0].address: 5000 bytes is above the maximum of 4096",
            "resources.endpoints[0].labels.v: 4097 bytes is above the maximum of 4096",
            "resources.routes[0].rules[0].matches[0].path.value: 4097 bytes is above the maximum of 4096",
            "resources.routes[0].rules[0].matches[0].headers[0].value: 4097 bytes is above the maximum of 4096",
            "resources.routes[0].rules[0].request_headers.set.x-a: 4097 bytes is above the maximum of 4096",
        ] {
            assert!(err.contains(want), "{want:?} not in {err}");
        }
        // Other checks of a too-long value may quote it: cut.
        assert!(err.len() < 8 * 1024, "{} bytes of errors", err.len());
    }

    #[test]
    fn paths_and_display() {
        let p = FieldPath::root()
            .item("routes", 2)
            .field("retry")
            .field("attempts");
        assert_eq!(p.as_str(), "routes[2].retry.attempts");
        let mut e = Errors::default();
        e.push(&p, "50 is above the maximum of 10");
        let err = e.finish().unwrap_err();
        assert_eq!(
            err.to_string(),
            "routes[2].retry.attempts: 50 is above the maximum of 10"
        );
    }
}
