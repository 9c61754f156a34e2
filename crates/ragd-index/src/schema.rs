//! The point schema shared by every backend: vector names, payload field
//! names, and the conversion between `ChunkPayload` and its JSON payload.

use ragd_core::{ChunkPayload, CollectionId, DocumentId, SparseVector, TenantId};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

pub const DENSE_VECTOR: &str = "dense";
pub const SPARSE_VECTOR: &str = "sparse";

pub const TENANT: &str = "tenant";
pub const COLLECTION: &str = "collection";
pub const DOCUMENT: &str = "document";
pub const VERSION: &str = "version";
pub const CHUNK_INDEX: &str = "chunk_index";
pub const TITLE: &str = "title";
pub const HEADING_PATH: &str = "heading_path";
pub const PAGE: &str = "page";
pub const TEXT: &str = "text";
pub const METADATA: &str = "metadata";
pub const ACL: &str = "acl";

/// The payload path of a user metadata key, or why the key cannot be one.
/// The key alphabet is the one `ragd_core::Filter::from_json` accepts, so a
/// key can never address a field outside `metadata`.
pub fn metadata_path(key: &str) -> Result<String> {
    let valid = !key.is_empty()
        && key.len() <= 64
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(format!("{METADATA}.{key}"))
    } else {
        Err(Error::InvalidQuery(format!(
            "filter key {key:?} must be 1-64 characters of letters, digits, '-' or '_'"
        )))
    }
}

/// An any-of filter's values grouped by type: Qdrant matches any-of within
/// one value type only, so each backend makes one condition per non-empty
/// group, any of which may match.
#[derive(Debug, Default)]
pub struct AnyOfByType {
    pub texts: Vec<String>,
    pub integers: Vec<i64>,
    pub flags: Vec<bool>,
}

impl AnyOfByType {
    /// Groups `values` of the filter on `field`; an empty list is an error.
    pub fn group(field: &str, values: &[ragd_core::FilterValue]) -> Result<Self> {
        if values.is_empty() {
            return Err(Error::InvalidQuery(format!("filter on {field:?}: the list of values is empty")));
        }
        let mut groups = Self::default();
        for value in values {
            match value {
                ragd_core::FilterValue::Text(text) => groups.texts.push(text.clone()),
                ragd_core::FilterValue::Integer(integer) => groups.integers.push(*integer),
                ragd_core::FilterValue::Bool(flag) => groups.flags.push(*flag),
            }
        }
        Ok(groups)
    }
}

/// A sparse vector's indices and values sorted by index, or why it cannot
/// be stored: every index once, one value per index.
pub fn checked_sparse(vector: &SparseVector) -> std::result::Result<(Vec<u32>, Vec<f32>), String> {
    if vector.indices.len() != vector.values.len() {
        return Err(format!(
            "invalid sparse vector: {} indices but {} values",
            vector.indices.len(),
            vector.values.len()
        ));
    }
    let mut pairs: Vec<(u32, f32)> = vector.indices.iter().copied().zip(vector.values.iter().copied()).collect();
    pairs.sort_by_key(|(index, _)| *index);
    if let Some(pair) = pairs.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(format!("invalid sparse vector: index {} appears twice", pair[0].0));
    }
    Ok(pairs.into_iter().unzip())
}

pub fn payload_to_json(payload: &ChunkPayload) -> Map<String, Value> {
    let mut json = Map::with_capacity(10);
    json.insert(TENANT.into(), payload.tenant.as_str().into());
    json.insert(COLLECTION.into(), payload.collection.to_string().into());
    json.insert(DOCUMENT.into(), payload.document.to_string().into());
    json.insert(VERSION.into(), payload.version.into());
    json.insert(CHUNK_INDEX.into(), payload.chunk_index.into());
    json.insert(TITLE.into(), payload.title.clone().into());
    json.insert(HEADING_PATH.into(), payload.heading_path.clone().into());
    if let Some(page) = payload.page {
        json.insert(PAGE.into(), page.into());
    }
    json.insert(TEXT.into(), payload.text.clone().into());
    json.insert(METADATA.into(), Value::Object(payload.metadata.clone()));
    json.insert(ACL.into(), payload.acl.clone().into());
    json
}

/// Reads a payload written by [`payload_to_json`]; anything else is an
/// engine error, since only this crate writes payloads.
pub fn payload_from_json(mut json: Map<String, Value>) -> Result<ChunkPayload> {
    let tenant =
        TenantId::parse(&take_string(&mut json, TENANT)?).map_err(|err| corrupt(TENANT, err.message()))?;
    let collection = take_string(&mut json, COLLECTION)?
        .parse::<CollectionId>()
        .map_err(|err| corrupt(COLLECTION, err.message()))?;
    let document = take_string(&mut json, DOCUMENT)?
        .parse::<DocumentId>()
        .map_err(|err| corrupt(DOCUMENT, err.message()))?;
    let version =
        json.get(VERSION).and_then(Value::as_i64).ok_or_else(|| corrupt(VERSION, "not an integer"))?;
    let chunk_index = json
        .get(CHUNK_INDEX)
        .and_then(Value::as_u64)
        .and_then(|index| u32::try_from(index).ok())
        .ok_or_else(|| corrupt(CHUNK_INDEX, "not a chunk index"))?;
    let metadata = match json.remove(METADATA) {
        Some(Value::Object(metadata)) => metadata,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(corrupt(METADATA, "not an object")),
    };
    let acl = match json.remove(ACL) {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(principal) => Ok(principal),
                _ => Err(corrupt(ACL, "holds a non-string principal")),
            })
            .collect::<Result<_>>()?,
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err(corrupt(ACL, "not an array")),
    };
    let page = match json.remove(PAGE) {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(|| corrupt(PAGE, "not a page number"))?,
        ),
    };
    Ok(ChunkPayload {
        tenant,
        collection,
        document,
        version,
        chunk_index,
        title: take_string(&mut json, TITLE)?,
        heading_path: take_string(&mut json, HEADING_PATH)?,
        page,
        text: take_string(&mut json, TEXT)?,
        metadata,
        acl,
    })
}

fn take_string(json: &mut Map<String, Value>, field: &str) -> Result<String> {
    match json.remove(field) {
        Some(Value::String(value)) => Ok(value),
        _ => Err(corrupt(field, "not a string")),
    }
}

fn corrupt(field: &str, problem: &str) -> Error {
    Error::Engine(format!("stored payload field {field:?} is {problem}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn payload() -> ChunkPayload {
        ChunkPayload {
            tenant: TenantId::parse("acme").unwrap(),
            collection: CollectionId::new(),
            document: DocumentId::new(),
            version: 3,
            chunk_index: 7,
            title: "Guide".into(),
            heading_path: "Guide > Install".into(),
            page: Some(3),
            text: "run the installer".into(),
            metadata: json!({"lang": "en", "year": 2024, "nested": {"a": [1, 2]}})
                .as_object()
                .cloned()
                .unwrap(),
            acl: vec!["alice".into(), "group:ops".into()],
        }
    }

    #[test]
    fn payload_round_trips() {
        let original = payload();
        assert_eq!(payload_from_json(payload_to_json(&original)).unwrap(), original);
    }

    #[test]
    fn corrupt_payloads_are_engine_errors() {
        let cases: [(&str, Value); 5] = [
            (TENANT, json!("not a tenant!")),
            (DOCUMENT, json!("not-a-uuid")),
            (VERSION, json!("3")),
            (CHUNK_INDEX, json!(-1)),
            (ACL, json!([1])),
        ];
        for (field, value) in cases {
            let mut json = payload_to_json(&payload());
            json.insert(field.into(), value);
            assert!(matches!(payload_from_json(json), Err(Error::Engine(_))), "{field} accepted");
        }
        let mut json = payload_to_json(&payload());
        json.remove(TEXT);
        assert!(payload_from_json(json).is_err());
    }

    #[test]
    fn metadata_paths_stay_inside_metadata() {
        assert_eq!(metadata_path("lang-code_2").unwrap(), "metadata.lang-code_2");
        for bad in ["", "a.b", "a b", "x\"", "tenant[0]", &"k".repeat(65)] {
            assert!(metadata_path(bad).is_err(), "{bad:?} accepted");
        }
    }
}
