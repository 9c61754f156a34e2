//! Translation of ragd's filter language and scoping rules into Qdrant
//! server filters: the same conditions as the Edge backend builds, in the
//! gRPC types.

use qdrant_client::qdrant::{Condition as QCondition, Filter as QFilter, Range};
use ragd_core::{Condition, DocumentId, FilterValue, HybridQuery};

use crate::error::{Error, Result};
use crate::schema;

/// Everything a search must satisfy: the tenant and collection scope, the
/// metadata conditions and, when principals are given, the ACL.
pub fn search_filter(query: &HybridQuery) -> Result<QFilter> {
    let mut must = vec![
        QCondition::matches(schema::TENANT, query.tenant.as_str().to_owned()),
        QCondition::matches(schema::COLLECTION, query.target.collection.to_string()),
    ];
    for condition in &query.filter.must {
        must.push(metadata_condition(condition)?);
    }
    if let Some(principals) = &query.principals {
        must.push(acl_condition(principals));
    }
    Ok(QFilter::must(must))
}

/// The points of one document, except those of `keep_version`.
pub fn document_filter(document: DocumentId, keep_version: Option<i64>) -> QFilter {
    let mut filter = QFilter::must([QCondition::matches(schema::DOCUMENT, document.to_string())]);
    if let Some(version) = keep_version {
        filter.must_not = vec![QCondition::matches(schema::VERSION, version)];
    }
    filter
}

/// The given chunks of one document version.
pub fn chunks_filter(document: DocumentId, version: i64, indices: &[u32]) -> QFilter {
    let indices = indices.iter().map(|&index| i64::from(index)).collect::<Vec<_>>();
    QFilter::must([
        QCondition::matches(schema::DOCUMENT, document.to_string()),
        QCondition::matches(schema::VERSION, version),
        QCondition::matches(schema::CHUNK_INDEX, indices),
    ])
}

fn metadata_condition(condition: &Condition) -> Result<QCondition> {
    match condition {
        Condition::Equals { key, value } => {
            let field = schema::metadata_path(key)?;
            Ok(match value.clone() {
                FilterValue::Text(text) => QCondition::matches(field, text),
                FilterValue::Integer(integer) => QCondition::matches(field, integer),
                FilterValue::Bool(flag) => QCondition::matches(field, flag),
            })
        }
        Condition::AnyOf { key, values } => any_of(&schema::metadata_path(key)?, values),
        Condition::Range { key, gte, lte } => {
            if gte.is_none() && lte.is_none() {
                return Err(Error::InvalidQuery(format!("filter {key:?}: a range needs gte or lte")));
            }
            let range = Range { gte: *gte, lte: *lte, ..Range::default() };
            Ok(QCondition::range(schema::metadata_path(key)?, range))
        }
    }
}

/// Qdrant matches any-of within one value type only, so mixed lists become
/// one condition per type, any of which may match.
fn any_of(field: &str, values: &[FilterValue]) -> Result<QCondition> {
    let groups = schema::AnyOfByType::group(field, values)?;
    let mut alternatives: Vec<QCondition> =
        groups.flags.iter().map(|flag| QCondition::matches(field, *flag)).collect();
    if !groups.texts.is_empty() {
        alternatives.push(QCondition::matches(field, groups.texts));
    }
    if !groups.integers.is_empty() {
        alternatives.push(QCondition::matches(field, groups.integers));
    }
    Ok(match <[QCondition; 1]>::try_from(alternatives) {
        Ok([single]) => single,
        Err(alternatives) => QFilter::should(alternatives).into(),
    })
}

/// A chunk with an empty ACL is visible to the whole tenant; otherwise one
/// of its principals must be among the caller's.
fn acl_condition(principals: &[String]) -> QCondition {
    let mut visible = vec![QCondition::is_empty(schema::ACL)];
    if !principals.is_empty() {
        visible.push(QCondition::matches(schema::ACL, principals.to_vec()));
    }
    QFilter::should(visible).into()
}
