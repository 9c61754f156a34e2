//! Whole numbers as JSON may spell them: JSON Schema, and so OpenAPI and
//! the clients generated from it, counts `10.0` as the integer 10, while
//! serde's integer types refuse it.

use serde::de::{Deserializer, Error as _};
use serde::Deserialize;

/// Reads an optional integer that may be written with a zero fraction;
/// use as `#[serde(default, deserialize_with = "ragd_core::numbers::whole")]`.
pub fn whole<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let value = number.as_u64().or_else(|| {
        number.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64).map(|f| f as u64)
    });
    value
        .and_then(|v| T::try_from(v).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("invalid value: {number}, expected a whole number in range")))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Limits {
        #[serde(default, deserialize_with = "super::whole")]
        k: Option<u32>,
    }

    #[test]
    fn whole_numbers_may_have_a_zero_fraction() {
        let parse = |json: &str| serde_json::from_str::<Limits>(json).map(|l| l.k).map_err(|e| e.to_string());
        assert_eq!(parse(r#"{"k": 7}"#), Ok(Some(7)));
        assert_eq!(parse(r#"{"k": 7.0}"#), Ok(Some(7)));
        assert_eq!(parse(r#"{"k": null}"#), Ok(None));
        assert_eq!(parse(r#"{}"#), Ok(None));
        for bad in [r#"{"k": 7.5}"#, r#"{"k": -1}"#, r#"{"k": 5e9}"#, r#"{"k": "7"}"#, r#"{"k": 1e300}"#] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
