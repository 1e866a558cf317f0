//! Certificate serial numbers.
//!
//! A leaf of the crate: the error type names serials, so [`Serial`] imports
//! nothing from it. The CA mints random ones (`ca`), `x509` reads them from
//! certificates.

use std::fmt;

use rcgen::SerialNumber;

/// A certificate serial number; displayed as lowercase hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

// === impl Serial ===

impl Serial {
    pub(crate) fn from_bytes(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    pub(crate) fn to_rcgen(&self) -> SerialNumber {
        SerialNumber::from_slice(&self.0)
    }

    /// The big-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}
