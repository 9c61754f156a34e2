//! Identifiers and validated values ("parse, don't validate"): a value of
//! these types is known to be well formed, so APIs taking them need no checks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::Error;

macro_rules! uuid_id {
    ($name:ident, $what:literal) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new time-ordered id, so that listing by id is listing by age.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| Error::invalid(format!("{s:?} is not a valid {} id", $what)))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(CollectionId, "collection");
uuid_id!(DocumentId, "document");
uuid_id!(JobId, "job");

/// The id of the index point that holds chunk `index` of `version` of a
/// document. Derived, never random, so a retried ingest job overwrites its
/// own points instead of adding duplicates.
pub fn point_id(document: DocumentId, version: i64, index: u32) -> Uuid {
    let name = format!("{}/{version}/{index}", document.0);
    Uuid::new_v5(&document.0, name.as_bytes())
}

/// The tenant that owns collections. An API key belongs to one tenant;
/// operator keys (of the whole server) act for [`TenantId::default_tenant`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub fn default_tenant() -> Self {
        Self("default".to_owned())
    }

    pub fn parse(raw: &str) -> Result<Self, Error> {
        if is_slug(raw, 64) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(Error::invalid(format!(
                "tenant {raw:?} must be 1-64 characters of letters, digits, '-' or '_'"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A collection's human name, unique per tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CollectionName(String);

impl CollectionName {
    pub fn parse(raw: &str) -> Result<Self, Error> {
        if is_slug(raw, 64) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(Error::invalid(format!(
                "collection name {raw:?} must be 1-64 characters of letters, digits, '-' or '_'"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CollectionName {
    type Error = Error;
    fn try_from(raw: String) -> Result<Self, Error> {
        Self::parse(&raw)
    }
}

impl From<CollectionName> for String {
    fn from(name: CollectionName) -> String {
        name.0
    }
}

impl fmt::Display for CollectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_slug(raw: &str, max: usize) -> bool {
    !raw.is_empty()
        && raw.len() <= max
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// How many results to return: at least 1, at most [`TopK::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopK(usize);

impl TopK {
    pub const MAX: usize = 1000;

    pub fn new(k: usize) -> Result<Self, Error> {
        if (1..=Self::MAX).contains(&k) {
            Ok(Self(k))
        } else {
            Err(Error::invalid(format!("top_k must be between 1 and {}, got {k}", Self::MAX)))
        }
    }

    pub fn get(&self) -> usize {
        self.0
    }
}

/// The sha256 of a document's original bytes, hex encoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContentHash(String);

impl ContentHash {
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }

    pub fn parse(raw: &str) -> Result<Self, Error> {
        if raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(raw.to_ascii_lowercase()))
        } else {
            Err(Error::invalid(format!("{raw:?} is not a sha256 hex digest")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_ids_are_stable_and_distinct() {
        let doc = DocumentId::new();
        assert_eq!(point_id(doc, 1, 0), point_id(doc, 1, 0));
        assert_ne!(point_id(doc, 1, 0), point_id(doc, 1, 1));
        assert_ne!(point_id(doc, 1, 0), point_id(doc, 2, 0));
        assert_ne!(point_id(doc, 1, 0), point_id(DocumentId::new(), 1, 0));
    }

    #[test]
    fn names_are_validated() {
        assert!(CollectionName::parse("docs_v2-en").is_ok());
        for bad in ["", "a b", "../x", &"x".repeat(65)] {
            assert!(CollectionName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn top_k_bounds() {
        assert!(TopK::new(0).is_err());
        assert!(TopK::new(1).is_ok());
        assert!(TopK::new(TopK::MAX + 1).is_err());
    }
}
