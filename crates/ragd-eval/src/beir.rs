//! Datasets in the BEIR layout: `corpus.jsonl`, `queries.jsonl` and
//! `qrels/<split>.tsv` in one directory.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Relevance judgements: query id -> document id -> grade (0 = judged not
/// relevant).
pub type Qrels = HashMap<String, HashMap<String, u32>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusDoc {
    pub id: String,
    pub title: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: String,
    pub text: String,
}

/// One split of a BEIR dataset: the whole corpus, and only the queries that
/// have judgements in the split.
#[derive(Debug, Clone)]
pub struct BeirDataset {
    pub corpus: Vec<CorpusDoc>,
    pub queries: Vec<Query>,
    pub qrels: Qrels,
}

#[derive(Deserialize)]
struct RawDoc {
    #[serde(rename = "_id")]
    id: String,
    // Some BEIR corpora write `null` or omit the title.
    #[serde(default)]
    title: Option<String>,
    text: String,
}

#[derive(Deserialize)]
struct RawQuery {
    #[serde(rename = "_id")]
    id: String,
    text: String,
}

const QRELS_HEADER: [&str; 3] = ["query-id", "corpus-id", "score"];

/// Loads `dir/corpus.jsonl`, `dir/queries.jsonl` and `dir/qrels/<split>.tsv`.
///
/// As in BEIR, queries without a judgement in the split are dropped and a
/// repeated (query, document) judgement keeps the last grade. Unlike BEIR,
/// repeated corpus or query ids and judgements naming an unknown query are
/// errors, since they would silently skew the scores. Corpus and query order
/// follow the files.
pub fn load(dir: &Path, split: &str) -> Result<BeirDataset> {
    let qrels_path = dir.join("qrels").join(format!("{split}.tsv"));
    let (qrels, first_line) = read_qrels(&qrels_path)?;

    let queries_path = dir.join("queries.jsonl");
    let mut query_ids = HashSet::new();
    let mut queries = Vec::new();
    read_lines(&queries_path, |line_no, line| {
        let raw: RawQuery = parse_json(&queries_path, line_no, line)?;
        check_id(&queries_path, line_no, &raw.id)?;
        if !query_ids.insert(raw.id.clone()) {
            return Err(Error::malformed(&queries_path, line_no, format!("duplicate query id {:?}", raw.id)));
        }
        if qrels.contains_key(&raw.id) {
            queries.push(Query { id: raw.id, text: raw.text });
        }
        Ok(())
    })?;
    if let Some((id, line_no)) =
        first_line.iter().filter(|(id, _)| !query_ids.contains(*id)).min_by_key(|(_, line_no)| **line_no)
    {
        return Err(Error::malformed(
            &qrels_path,
            *line_no,
            format!("query id {id:?} is not in {}", queries_path.display()),
        ));
    }

    let corpus = load_corpus(&dir.join("corpus.jsonl"))?;
    Ok(BeirDataset { corpus, queries, qrels })
}

/// Loads a BEIR `corpus.jsonl` alone, in file order; repeated ids are
/// errors.
pub fn load_corpus(path: &Path) -> Result<Vec<CorpusDoc>> {
    let mut doc_ids = HashSet::new();
    let mut corpus = Vec::new();
    read_lines(path, |line_no, line| {
        let raw: RawDoc = parse_json(path, line_no, line)?;
        check_id(path, line_no, &raw.id)?;
        if !doc_ids.insert(raw.id.clone()) {
            return Err(Error::malformed(path, line_no, format!("duplicate document id {:?}", raw.id)));
        }
        corpus.push(CorpusDoc { id: raw.id, title: raw.title.unwrap_or_default(), text: raw.text });
        Ok(())
    })?;
    Ok(corpus)
}

/// Returns the judgements and, per query, the line of its first judgement
/// (to point at when the query turns out to be unknown).
fn read_qrels(path: &Path) -> Result<(Qrels, HashMap<String, usize>)> {
    let mut qrels = Qrels::new();
    let mut first_line = HashMap::new();
    let mut header_seen = false;
    read_lines(path, |line_no, line| {
        let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
        if !header_seen {
            header_seen = true;
            if fields != QRELS_HEADER {
                return Err(Error::malformed(
                    path,
                    line_no,
                    "expected the header \"query-id<TAB>corpus-id<TAB>score\"",
                ));
            }
            return Ok(());
        }
        let [query_id, doc_id, score] = fields[..] else {
            return Err(Error::malformed(
                path,
                line_no,
                format!(
                    "expected 3 tab-separated fields (query-id, corpus-id, score), found {}",
                    fields.len()
                ),
            ));
        };
        check_id(path, line_no, query_id)?;
        check_id(path, line_no, doc_id)?;
        let grade: u32 = score.parse().map_err(|_| {
            Error::malformed(path, line_no, format!("score {score:?} is not a non-negative integer"))
        })?;
        first_line.entry(query_id.to_owned()).or_insert(line_no);
        qrels.entry(query_id.to_owned()).or_default().insert(doc_id.to_owned(), grade);
        Ok(())
    })?;
    Ok((qrels, first_line))
}

/// Calls `f` with each non-blank line and its 1-based number, streaming so
/// that large corpora are not held twice in memory.
fn read_lines(path: &Path, mut f: impl FnMut(usize, &str) -> Result<()>) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line_no = index + 1;
        let line = line.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => Error::malformed(path, line_no, "not valid UTF-8"),
            _ => Error::io(path, e),
        })?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        f(line_no, line)?;
    }
    Ok(())
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, line_no: usize, line: &str) -> Result<T> {
    serde_json::from_str(line)
        .map_err(|e| Error::malformed(path, line_no, format!("invalid JSON record: {e}")))
}

fn check_id(path: &Path, line_no: usize, id: &str) -> Result<()> {
    if id.trim().is_empty() {
        return Err(Error::malformed(path, line_no, "empty id"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, contents: &str) {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create fixture directory");
        }
        std::fs::write(path, contents).expect("write fixture");
    }

    /// Three documents, three queries; q2 has no judgement in `test` and q3
    /// only in `train`.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        write(
            dir.path(),
            "corpus.jsonl",
            concat!(
                r#"{"_id": "d1", "title": "First", "text": "alpha", "metadata": {}}"#,
                "\n",
                r#"{"_id": "d2", "title": null, "text": "beta"}"#,
                "\r\n\n",
                r#"{"_id": "d3", "text": "gamma"}"#,
                "\n",
            ),
        );
        write(
            dir.path(),
            "queries.jsonl",
            concat!(
                r#"{"_id": "q1", "text": "what is alpha", "metadata": {}}"#,
                "\n",
                r#"{"_id": "q2", "text": "unjudged"}"#,
                "\n",
                r#"{"_id": "q3", "text": "train only"}"#,
                "\n",
            ),
        );
        write(dir.path(), "qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td3\t0\n");
        write(dir.path(), "qrels/train.tsv", "query-id\tcorpus-id\tscore\r\nq3\td2\t1\r\n");
        dir
    }

    #[test]
    fn loads_corpus_and_keeps_only_judged_queries() {
        let dir = fixture();
        let data = load(dir.path(), "test").expect("load");
        assert_eq!(
            data.corpus,
            vec![
                CorpusDoc { id: "d1".into(), title: "First".into(), text: "alpha".into() },
                CorpusDoc { id: "d2".into(), title: String::new(), text: "beta".into() },
                CorpusDoc { id: "d3".into(), title: String::new(), text: "gamma".into() },
            ]
        );
        assert_eq!(data.queries, vec![Query { id: "q1".into(), text: "what is alpha".into() }]);
        let expected: Qrels =
            HashMap::from([("q1".into(), HashMap::from([("d1".into(), 2), ("d3".into(), 0)]))]);
        assert_eq!(data.qrels, expected);

        let train = load(dir.path(), "train").expect("load train");
        assert_eq!(train.queries, vec![Query { id: "q3".into(), text: "train only".into() }]);
        assert_eq!(train.qrels["q3"]["d2"], 1);
    }

    #[test]
    fn missing_split_names_the_file() {
        let dir = fixture();
        let err = load(dir.path(), "dev").expect_err("no dev split");
        assert!(matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound));
        assert!(err.to_string().ends_with("qrels/dev.tsv"), "{err}");
        let core: ragd_core::Error = err.into();
        assert_eq!(core.kind(), ragd_core::ErrorKind::NotFound);
    }

    /// Each case overwrites one file of the fixture and expects the error to
    /// name that file, the line, and the reason.
    #[test]
    fn malformed_lines_are_reported_with_file_and_line() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "corpus.jsonl",
                "{\"_id\": \"d1\", \"text\": \"a\"}\n{\"_id\": \"d2\"\n",
                "corpus.jsonl:2: invalid JSON record",
            ),
            (
                "corpus.jsonl",
                "{\"_id\": \"d1\", \"text\": \"a\"}\n\n{\"_id\": \"d1\", \"text\": \"b\"}\n",
                "corpus.jsonl:3: duplicate document id \"d1\"",
            ),
            ("corpus.jsonl", "{\"_id\": 7, \"text\": \"a\"}\n", "corpus.jsonl:1: invalid JSON record"),
            ("queries.jsonl", "{\"_id\": \"\", \"text\": \"a\"}\n", "queries.jsonl:1: empty id"),
            (
                "queries.jsonl",
                "{\"_id\": \"q2\", \"text\": \"a\"}\n",
                "test.tsv:2: query id \"q1\" is not in",
            ),
            ("qrels/test.tsv", "q1\td1\t1\n", "test.tsv:1: expected the header"),
            (
                "qrels/test.tsv",
                "query-id\tcorpus-id\tscore\nq1 d1 1\n",
                "test.tsv:2: expected 3 tab-separated fields",
            ),
            (
                "qrels/test.tsv",
                "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t-1\n",
                "test.tsv:3: score \"-1\" is not a non-negative integer",
            ),
            ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1.0\n", "test.tsv:2: score \"1.0\""),
        ];
        for (file, contents, expected) in cases {
            let dir = fixture();
            write(dir.path(), file, contents);
            let err = load(dir.path(), "test").expect_err(expected);
            assert!(matches!(err, Error::Malformed { .. }), "{file}: {err}");
            assert!(err.to_string().contains(expected), "{file}: got {err}, expected {expected}");
            let core: ragd_core::Error = err.into();
            assert_eq!(core.kind(), ragd_core::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let dir = fixture();
        std::fs::write(dir.path().join("queries.jsonl"), b"{\"_id\": \"q1\", \"text\": \"a\"}\n\xff\xfe\n")
            .expect("write fixture");
        let err = load(dir.path(), "test").expect_err("invalid UTF-8");
        assert!(err.to_string().ends_with("queries.jsonl:2: not valid UTF-8"), "{err}");
    }

    #[test]
    fn loads_scifact() {
        // The product's shared folder sits beside the repository checkout.
        let dir = &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/eval/scifact");
        if !dir.is_dir() {
            eprintln!("skipping: {} is absent", dir.display());
            return;
        }
        let test = load(dir, "test").expect("load scifact test");
        assert_eq!(test.corpus.len(), 5183);
        assert_eq!(test.queries.len(), 300);
        assert_eq!(test.qrels.len(), 300);
        assert_eq!(test.qrels.values().map(HashMap::len).sum::<usize>(), 339);
        assert!(test.queries.iter().all(|q| test.qrels.contains_key(&q.id)));

        let train = load(dir, "train").expect("load scifact train");
        assert_eq!(train.queries.len(), 809);
        assert_eq!(train.qrels.values().map(HashMap::len).sum::<usize>(), 919);
    }
}
