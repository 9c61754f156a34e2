//! Tabular uploads: a CSV or JSONL file holds many documents, one per row.
//! One field is the text, one optionally the title; every other field
//! becomes the row's metadata, so it can be filtered on.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFormat {
    Csv,
    Jsonl,
}

/// The row format a file's name announces, if any.
pub fn row_format(file_name: Option<&str>) -> Option<RowFormat> {
    let extension = file_name?.rsplit_once('.')?.1.to_ascii_lowercase();
    match extension.as_str() {
        "csv" => Some(RowFormat::Csv),
        "jsonl" | "ndjson" => Some(RowFormat::Jsonl),
        _ => None,
    }
}

/// Which fields hold the text and the title.
#[derive(Debug, Clone, Copy)]
pub struct RowFields<'a> {
    pub text: &'a str,
    pub title: &'a str,
}

#[derive(Debug, PartialEq)]
pub struct RowDoc {
    /// 1-based row (CSV: data row after the header; JSONL: line).
    pub row: usize,
    pub title: Option<String>,
    pub text: String,
    pub metadata: Map<String, Value>,
}

#[derive(Debug, PartialEq)]
pub struct RejectedRow {
    pub row: usize,
    pub reason: String,
}

/// Splits the file into row documents; a bad row is rejected alone.
pub fn split_rows(format: RowFormat, bytes: &[u8], fields: RowFields<'_>) -> crate::Result<(Vec<RowDoc>, Vec<RejectedRow>)> {
    let text = crate::detect::decode_text(bytes)?;
    match format {
        RowFormat::Csv => split_csv(text, fields),
        RowFormat::Jsonl => Ok(split_jsonl(text, fields)),
    }
}

fn split_csv(text: &str, fields: RowFields<'_>) -> crate::Result<(Vec<RowDoc>, Vec<RejectedRow>)> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|err| crate::Error::corrupt("CSV", err))?.clone();
    if !headers.iter().any(|h| h == fields.text) {
        return Err(crate::Error::corrupt("CSV", format!("the header has no {:?} column for the text", fields.text)));
    }
    let mut docs = Vec::new();
    let mut rejected = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let row = i + 1;
        let record = match record {
            Ok(record) => record,
            Err(err) => {
                rejected.push(RejectedRow { row, reason: format!("unreadable: {err}") });
                continue;
            }
        };
        let mut row_fields = Map::new();
        for (header, value) in headers.iter().zip(record.iter()) {
            row_fields.insert(header.to_owned(), Value::String(value.to_owned()));
        }
        push_row(row, row_fields, fields, &mut docs, &mut rejected);
    }
    Ok((docs, rejected))
}

fn split_jsonl(text: &str, fields: RowFields<'_>) -> (Vec<RowDoc>, Vec<RejectedRow>) {
    let mut docs = Vec::new();
    let mut rejected = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let row = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(object)) => push_row(row, object, fields, &mut docs, &mut rejected),
            Ok(_) => rejected.push(RejectedRow { row, reason: "not a JSON object".to_owned() }),
            Err(err) => rejected.push(RejectedRow { row, reason: format!("invalid JSON: {err}") }),
        }
    }
    (docs, rejected)
}

fn push_row(
    row: usize,
    mut object: Map<String, Value>,
    fields: RowFields<'_>,
    docs: &mut Vec<RowDoc>,
    rejected: &mut Vec<RejectedRow>,
) {
    let text = match object.remove(fields.text) {
        Some(Value::String(text)) if !text.trim().is_empty() => text,
        Some(Value::String(_)) | None => {
            rejected.push(RejectedRow { row, reason: format!("the {:?} field is missing or empty", fields.text) });
            return;
        }
        Some(_) => {
            rejected.push(RejectedRow { row, reason: format!("the {:?} field is not a string", fields.text) });
            return;
        }
    };
    let title = match object.remove(fields.title) {
        Some(Value::String(title)) if !title.trim().is_empty() => Some(title),
        _ => None,
    };
    let metadata = object.into_iter().filter_map(|(key, value)| Some((metadata_key(&key)?, value))).collect();
    docs.push(RowDoc { row, title, text, metadata });
}

/// Column names become filterable metadata keys: letters, digits, `-` and
/// `_`, at most 64 characters; other characters turn into `_`.
fn metadata_key(raw: &str) -> Option<String> {
    let key: String = raw
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(64)
        .collect();
    (!key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const FIELDS: RowFields<'static> = RowFields { text: "text", title: "title" };

    #[test]
    fn csv_rows_become_documents_with_metadata() {
        let csv = "title,text,Year Published\nFirst,\"Alpha, with a comma\",2020\nSecond,,2021\nThird,Gamma,2022\n";
        let (docs, rejected) = split_rows(RowFormat::Csv, csv.as_bytes(), FIELDS).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].text, "Alpha, with a comma");
        assert_eq!(docs[0].title.as_deref(), Some("First"));
        assert_eq!(docs[0].metadata, json!({"Year_Published": "2020"}).as_object().unwrap().clone());
        assert_eq!(docs[1].row, 3);
        assert_eq!(rejected, [RejectedRow { row: 2, reason: "the \"text\" field is missing or empty".into() }]);
    }

    #[test]
    fn csv_without_the_text_column_is_refused() {
        assert!(split_rows(RowFormat::Csv, b"a,b\n1,2\n", FIELDS).is_err());
    }

    #[test]
    fn jsonl_lines_become_documents_and_bad_lines_are_rejected_alone() {
        let jsonl = "{\"text\": \"one\", \"tag\": [\"a\"]}\n\nnot json\n[1]\n{\"text\": 5}\n{\"body\": \"two\", \"title\": \"T\"}\n";
        let fields = RowFields { text: "body", title: "title" };
        let (docs, rejected) = split_rows(RowFormat::Jsonl, jsonl.as_bytes(), fields).unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!((docs[0].row, docs[0].text.as_str(), docs[0].title.as_deref()), (6, "two", Some("T")));
        let rows: Vec<usize> = rejected.iter().map(|r| r.row).collect();
        assert_eq!(rows, [1, 3, 4, 5]);
    }

    #[test]
    fn formats_come_from_the_name() {
        assert_eq!(row_format(Some("data/Export.CSV")), Some(RowFormat::Csv));
        assert_eq!(row_format(Some("x.ndjson")), Some(RowFormat::Jsonl));
        assert_eq!(row_format(Some("notes.txt")), None);
        assert_eq!(row_format(None), None);
    }
}
