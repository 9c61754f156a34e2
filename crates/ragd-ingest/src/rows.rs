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

/// One row of a file: its document, or why the row was refused.
pub type Row = Result<RowDoc, RejectedRow>;

/// The file's rows, read one at a time so that however many rows a file
/// holds, only the row being taken is parsed; a bad row is refused alone.
pub fn split_rows<'a>(
    format: RowFormat,
    bytes: &'a [u8],
    fields: RowFields<'a>,
) -> crate::Result<Box<dyn Iterator<Item = Row> + Send + 'a>> {
    let text = crate::detect::decode_text(bytes)?;
    match format {
        RowFormat::Csv => csv_rows(text, fields),
        RowFormat::Jsonl => Ok(Box::new(jsonl_rows(text, fields))),
    }
}

fn csv_rows<'a>(
    text: &'a str,
    fields: RowFields<'a>,
) -> crate::Result<Box<dyn Iterator<Item = Row> + Send + 'a>> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|err| crate::Error::corrupt("CSV", err))?.clone();
    if !headers.iter().any(|h| h == fields.text) {
        return Err(crate::Error::corrupt(
            "CSV",
            format!("the header has no {:?} column for the text", fields.text),
        ));
    }
    Ok(Box::new(reader.into_records().enumerate().map(move |(i, record)| {
        let row = i + 1;
        let record = record.map_err(|err| RejectedRow { row, reason: format!("unreadable: {err}") })?;
        let object = headers
            .iter()
            .zip(record.iter())
            .map(|(h, v)| (h.to_owned(), Value::String(v.to_owned())))
            .collect();
        row_doc(row, object, fields)
    })))
}

fn jsonl_rows<'a>(text: &'a str, fields: RowFields<'a>) -> impl Iterator<Item = Row> + Send + 'a {
    text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()).map(move |(i, line)| {
        let row = i + 1;
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(object)) => row_doc(row, object, fields),
            Ok(_) => Err(RejectedRow { row, reason: "not a JSON object".to_owned() }),
            Err(err) => Err(RejectedRow { row, reason: format!("invalid JSON: {err}") }),
        }
    })
}

fn row_doc(row: usize, mut object: Map<String, Value>, fields: RowFields<'_>) -> Row {
    let refuse = |reason: String| Err(RejectedRow { row, reason });
    let text = match object.remove(fields.text) {
        Some(Value::String(text)) if !text.trim().is_empty() => text,
        Some(Value::String(_)) | None => {
            return refuse(format!("the {:?} field is missing or empty", fields.text))
        }
        Some(_) => return refuse(format!("the {:?} field is not a string", fields.text)),
    };
    let title = match object.remove(fields.title) {
        Some(Value::String(title)) if !title.trim().is_empty() => Some(title),
        _ => None,
    };
    let metadata = object.into_iter().filter_map(|(key, value)| Some((metadata_key(&key)?, value))).collect();
    Ok(RowDoc { row, title, text, metadata })
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

    fn split(format: RowFormat, bytes: &[u8], fields: RowFields<'_>) -> (Vec<RowDoc>, Vec<RejectedRow>) {
        let (docs, rejected): (Vec<Row>, Vec<Row>) =
            split_rows(format, bytes, fields).unwrap().partition(Result::is_ok);
        (
            docs.into_iter().map(Result::unwrap).collect(),
            rejected.into_iter().map(Result::unwrap_err).collect(),
        )
    }

    #[test]
    fn csv_rows_become_documents_with_metadata() {
        let csv =
            "title,text,Year Published\nFirst,\"Alpha, with a comma\",2020\nSecond,,2021\nThird,Gamma,2022\n";
        let (docs, rejected) = split(RowFormat::Csv, csv.as_bytes(), FIELDS);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].text, "Alpha, with a comma");
        assert_eq!(docs[0].title.as_deref(), Some("First"));
        assert_eq!(docs[0].metadata, json!({"Year_Published": "2020"}).as_object().unwrap().clone());
        assert_eq!(docs[1].row, 3);
        assert_eq!(
            rejected,
            [RejectedRow { row: 2, reason: "the \"text\" field is missing or empty".into() }]
        );
    }

    #[test]
    fn csv_without_the_text_column_is_refused() {
        assert!(split_rows(RowFormat::Csv, b"a,b\n1,2\n", FIELDS).is_err());
    }

    #[test]
    fn jsonl_lines_become_documents_and_bad_lines_are_rejected_alone() {
        let jsonl = "{\"text\": \"one\", \"tag\": [\"a\"]}\n\nnot json\n[1]\n{\"text\": 5}\n{\"body\": \"two\", \"title\": \"T\"}\n";
        let fields = RowFields { text: "body", title: "title" };
        let (docs, rejected) = split(RowFormat::Jsonl, jsonl.as_bytes(), fields);
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
