//! The one filter language of ragd: conditions on a chunk's document
//! metadata, ANDed together. Backends translate it into their own filters;
//! callers write it as JSON.

use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub must: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Equals { key: String, value: FilterValue },
    AnyOf { key: String, values: Vec<FilterValue> },
    Range { key: String, gte: Option<f64>, lte: Option<f64> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    Text(String),
    Integer(i64),
    Bool(bool),
}

const MAX_CONDITIONS: usize = 32;

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.must.is_empty()
    }

    /// Parses `{"lang": "en", "tag": ["a", "b"], "year": {"gte": 2020}}`:
    /// a scalar is equality, an array is any-of, an object is a numeric range.
    pub fn from_json(value: &Value) -> Result<Self> {
        let object = match value {
            Value::Null => return Ok(Self::default()),
            Value::Object(object) => object,
            _ => return Err(Error::invalid("filter must be a JSON object of metadata keys")),
        };
        if object.len() > MAX_CONDITIONS {
            return Err(Error::invalid(format!("filter has more than {MAX_CONDITIONS} conditions")));
        }
        let mut must = Vec::with_capacity(object.len());
        for (key, condition) in object {
            validate_key(key)?;
            let key = key.clone();
            must.push(match condition {
                Value::Array(items) => {
                    if items.is_empty() {
                        return Err(Error::invalid(format!("filter {key:?}: the list of values is empty")));
                    }
                    let values = items.iter().map(|v| scalar(&key, v)).collect::<Result<_>>()?;
                    Condition::AnyOf { key, values }
                }
                Value::Object(bounds) => range(key, bounds)?,
                scalar_value => Condition::Equals { value: scalar(&key, scalar_value)?, key },
            });
        }
        Ok(Self { must })
    }
}

fn validate_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "filter key {key:?} must be 1-64 characters of letters, digits, '-' or '_'"
        )))
    }
}

fn scalar(key: &str, value: &Value) -> Result<FilterValue> {
    match value {
        Value::String(s) => Ok(FilterValue::Text(s.clone())),
        Value::Bool(b) => Ok(FilterValue::Bool(*b)),
        Value::Number(n) => n.as_i64().map(FilterValue::Integer).ok_or_else(|| {
            Error::invalid(format!("filter {key:?}: match on whole numbers only; use a range for {n}"))
        }),
        _ => Err(Error::invalid(format!("filter {key:?}: expected a string, number or boolean"))),
    }
}

fn range(key: String, bounds: &serde_json::Map<String, Value>) -> Result<Condition> {
    let mut gte = None;
    let mut lte = None;
    for (op, bound) in bounds {
        let bound = bound
            .as_f64()
            .ok_or_else(|| Error::invalid(format!("filter {key:?}: {op} needs a number")))?;
        match op.as_str() {
            "gte" => gte = Some(bound),
            "lte" => lte = Some(bound),
            other => {
                return Err(Error::invalid(format!(
                    "filter {key:?}: unknown operator {other:?} (use gte, lte)"
                )));
            }
        }
    }
    if gte.is_none() && lte.is_none() {
        return Err(Error::invalid(format!("filter {key:?}: a range needs gte or lte")));
    }
    Ok(Condition::Range { key, gte, lte })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_each_condition_shape() {
        let filter = Filter::from_json(&json!({"lang": "en", "tag": ["a", 2], "year": {"gte": 2020}})).unwrap();
        assert_eq!(filter.must.len(), 3);
        assert!(filter.must.contains(&Condition::Equals { key: "lang".into(), value: FilterValue::Text("en".into()) }));
        assert!(filter.must.contains(&Condition::AnyOf {
            key: "tag".into(),
            values: vec![FilterValue::Text("a".into()), FilterValue::Integer(2)]
        }));
        assert!(filter.must.contains(&Condition::Range { key: "year".into(), gte: Some(2020.0), lte: None }));
    }

    #[test]
    fn rejects_bad_filters() {
        for bad in [json!([1]), json!({"a b": 1}), json!({"k": []}), json!({"k": {"gt": 1}}), json!({"k": 1.5}), json!({"k": null})] {
            assert!(Filter::from_json(&bad).is_err(), "{bad} accepted");
        }
        assert!(Filter::from_json(&Value::Null).unwrap().is_empty());
    }
}
