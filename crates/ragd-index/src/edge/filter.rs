//! Translation of ragd's filter language and scoping rules into Qdrant Edge
//! filters.

use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    Condition as QCondition, FieldCondition, Filter as QFilter, IsEmptyCondition, JsonPath, Match, Range,
};
use ragd_core::{Condition, DocumentId, FilterValue, HybridQuery};

use crate::error::{Error, Result};
use crate::schema;

/// Everything a search must satisfy: the tenant and collection scope, the
/// metadata conditions and, when principals are given, the ACL.
pub fn search_filter(query: &HybridQuery) -> Result<QFilter> {
    let mut must = vec![
        keyword(schema::TENANT, query.tenant.as_str())?,
        keyword(schema::COLLECTION, &query.target.collection.to_string())?,
    ];
    for condition in &query.filter.must {
        must.push(metadata_condition(condition)?);
    }
    if let Some(principals) = &query.principals {
        must.push(acl_condition(principals)?);
    }
    Ok(all_of(must))
}

/// The points of one document, except those of `keep_version`.
pub fn document_filter(document: DocumentId, keep_version: Option<i64>) -> Result<QFilter> {
    let mut filter = all_of(vec![keyword(schema::DOCUMENT, &document.to_string())?]);
    if let Some(version) = keep_version {
        filter.must_not = Some(vec![field_match(schema::VERSION, Match::from(version))?]);
    }
    Ok(filter)
}

/// The given chunks of one document version.
pub fn chunks_filter(document: DocumentId, version: i64, indices: &[u32]) -> Result<QFilter> {
    let indices = indices.iter().map(|&index| i64::from(index)).collect::<Vec<_>>();
    Ok(all_of(vec![
        keyword(schema::DOCUMENT, &document.to_string())?,
        field_match(schema::VERSION, Match::from(version))?,
        field_match(schema::CHUNK_INDEX, Match::from(indices))?,
    ]))
}

fn metadata_condition(condition: &Condition) -> Result<QCondition> {
    match condition {
        Condition::Equals { key, value } => {
            field_match(&schema::metadata_path(key)?, match_value(value.clone()))
        }
        Condition::AnyOf { key, values } => any_of(&schema::metadata_path(key)?, values),
        Condition::Range { key, gte, lte } => {
            if gte.is_none() && lte.is_none() {
                return Err(Error::InvalidQuery(format!("filter {key:?}: a range needs gte or lte")));
            }
            let range = Range { lt: None, gt: None, gte: gte.map(OrderedFloat), lte: lte.map(OrderedFloat) };
            Ok(QCondition::Field(FieldCondition::new_range(path(&schema::metadata_path(key)?)?, range)))
        }
    }
}

/// Qdrant matches any-of within one value type only, so mixed lists become
/// one condition per type, any of which may match.
fn any_of(field: &str, values: &[FilterValue]) -> Result<QCondition> {
    let groups = schema::AnyOfByType::group(field, values)?;
    let mut alternatives =
        groups.flags.iter().map(|flag| field_match(field, Match::from(*flag))).collect::<Result<Vec<_>>>()?;
    if !groups.texts.is_empty() {
        alternatives.push(field_match(field, Match::from(groups.texts))?);
    }
    if !groups.integers.is_empty() {
        alternatives.push(field_match(field, Match::from(groups.integers))?);
    }
    Ok(match <[QCondition; 1]>::try_from(alternatives) {
        Ok([single]) => single,
        Err(alternatives) => QCondition::Filter(QFilter { should: Some(alternatives), ..QFilter::new() }),
    })
}

/// A chunk with an empty ACL is visible to the whole tenant; otherwise one
/// of its principals must be among the caller's.
fn acl_condition(principals: &[String]) -> Result<QCondition> {
    let mut visible = vec![QCondition::IsEmpty(IsEmptyCondition::from(path(schema::ACL)?))];
    if !principals.is_empty() {
        visible.push(field_match(schema::ACL, Match::from(principals.to_vec()))?);
    }
    Ok(QCondition::Filter(QFilter { should: Some(visible), ..QFilter::new() }))
}

fn match_value(value: FilterValue) -> Match {
    match value {
        FilterValue::Text(text) => Match::from(text),
        FilterValue::Integer(integer) => Match::from(integer),
        FilterValue::Bool(flag) => Match::from(flag),
    }
}

fn keyword(field: &str, value: &str) -> Result<QCondition> {
    field_match(field, Match::from(value.to_owned()))
}

fn field_match(field: &str, matcher: Match) -> Result<QCondition> {
    Ok(QCondition::Field(FieldCondition::new_match(path(field)?, matcher)))
}

fn all_of(must: Vec<QCondition>) -> QFilter {
    QFilter { must: Some(must), ..QFilter::new() }
}

pub fn path(field: &str) -> Result<JsonPath> {
    field.parse().map_err(|()| Error::InvalidQuery(format!("{field:?} is not a valid payload path")))
}

#[cfg(test)]
mod tests {
    use qdrant_edge::{AnyVariants, MatchAny, MatchValue, ValueVariants};

    use super::*;

    fn alternatives(condition: QCondition) -> Vec<QCondition> {
        match condition {
            QCondition::Filter(QFilter {
                should: Some(should),
                must: None,
                must_not: None,
                min_should: None,
            }) => should,
            other => panic!("expected a should filter, got {other:?}"),
        }
    }

    #[test]
    fn any_of_groups_values_by_type() {
        let values = [FilterValue::Text("a".into()), FilterValue::Integer(2), FilterValue::Text("b".into())];
        let parts = alternatives(any_of("metadata.tag", &values).unwrap());
        assert_eq!(parts.len(), 2);
        let matches: Vec<_> = parts
            .into_iter()
            .map(|part| match part {
                QCondition::Field(field) => field.r#match.unwrap(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert!(matches!(&matches[0], Match::Any(MatchAny { any: AnyVariants::Strings(s) }) if s.len() == 2));
        assert!(
            matches!(&matches[1], Match::Any(MatchAny { any: AnyVariants::Integers(i) }) if i.len() == 1)
        );
    }

    #[test]
    fn single_type_any_of_is_one_condition() {
        let condition = any_of("metadata.year", &[FilterValue::Integer(1), FilterValue::Integer(2)]).unwrap();
        assert!(matches!(condition, QCondition::Field(_)));
        assert!(any_of("metadata.year", &[]).is_err());
    }

    #[test]
    fn empty_principals_see_only_public_chunks() {
        let parts = alternatives(acl_condition(&[]).unwrap());
        assert!(matches!(parts.as_slice(), [QCondition::IsEmpty(_)]));
        let parts = alternatives(acl_condition(&["alice".into()]).unwrap());
        assert!(matches!(parts.as_slice(), [QCondition::IsEmpty(_), QCondition::Field(_)]));
    }

    #[test]
    fn ranges_need_a_bound_and_keys_are_checked() {
        let open = Condition::Range { key: "year".into(), gte: None, lte: None };
        assert!(matches!(metadata_condition(&open), Err(Error::InvalidQuery(_))));
        let escaping = Condition::Equals { key: "a.b".into(), value: FilterValue::Bool(true) };
        assert!(matches!(metadata_condition(&escaping), Err(Error::InvalidQuery(_))));
        let equals = Condition::Equals { key: "draft".into(), value: FilterValue::Bool(true) };
        match metadata_condition(&equals).unwrap() {
            QCondition::Field(field) => {
                assert_eq!(field.key.to_string(), "metadata.draft");
                assert_eq!(
                    field.r#match,
                    Some(Match::Value(MatchValue { value: ValueVariants::Bool(true) }))
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
