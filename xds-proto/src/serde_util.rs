//! Serde helpers so one struct reads well in YAML/JSON and stays compact on
//! the protobuf wire: durations are integers of milliseconds on the wire and
//! `"1.5s"`/`"250ms"` strings (or plain integers of milliseconds) in text;
//! enumerations are `i32` on the wire and their lowercase names in text.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// Serde for a `u64` field holding milliseconds, written as a duration string.
pub mod duration_ms {
    use super::*;

    /// Writes `1500` as `"1.5s"`; `0` (unset) as `"0s"`.
    pub fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
        let text = humantime::format_duration(Duration::from_millis(*ms)).to_string();
        s.serialize_str(&text)
    }

    /// Reads `"1.5s"`, `"250ms"`, `"2m"` or a plain integer of milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Millis(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Millis(ms) => Ok(ms),
            Raw::Text(t) => humantime::parse_duration(t.trim())
                .map(|d| d.as_millis() as u64)
                .map_err(|e| de::Error::custom(format!("invalid duration {t:?}: {e}"))),
        }
    }
}

/// Writes an `i32` enumeration field as its name (or the number if unknown).
pub fn enum_ser<E, S>(v: &i32, s: S) -> Result<S::Ok, S::Error>
where
    E: TryFrom<i32> + Serialize,
    S: Serializer,
{
    match E::try_from(*v) {
        Ok(e) => e.serialize(s),
        Err(_) => s.serialize_i32(*v),
    }
}

/// Reads an `i32` enumeration field from its name.
pub fn enum_de<'de, E, D>(d: D) -> Result<i32, D::Error>
where
    E: Deserialize<'de> + Into<i32>,
    D: Deserializer<'de>,
{
    E::deserialize(d).map(Into::into)
}
