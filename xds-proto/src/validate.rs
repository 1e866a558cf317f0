//! Validation errors that name the field path and the bad value, e.g.
//! `routes[2].rules[0].destinations[1].weight: 0 must be at least 1`.

use std::fmt;

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
        self.0.push(FieldError {
            path: path.as_str().to_string(),
            message: message.into(),
        });
    }

    /// Checks a DNS-label-like name: lowercase letters, digits, `-` and `.`.
    pub(crate) fn name(&mut self, path: &FieldPath, value: &str) {
        if value.is_empty() {
            self.push(path, "must not be empty");
        } else if value.len() > 253
            || !value
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
