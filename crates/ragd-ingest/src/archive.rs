//! ZIP uploads: a plain ZIP archive (not a DOCX or other Office file) is a
//! bag of documents. Unpacking is bounded so that a hostile archive cannot
//! exhaust memory or escape its folder: each entry's name must be a relative
//! path inside the archive, and every entry and the archive as a whole have a
//! limit on the bytes they expand to, enforced while reading rather than
//! trusted from the archive's own size fields.

use std::io::{Cursor, Read};

use crate::detect::DOCX_MAIN_PART;

#[derive(Debug, Clone, Copy)]
pub struct ArchiveLimits {
    pub max_entries: usize,
    pub max_entry_bytes: u64,
    pub max_total_bytes: u64,
}

#[derive(Debug)]
pub struct ArchiveEntry {
    /// The entry's path inside the archive.
    pub name: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, PartialEq)]
pub struct RejectedEntry {
    pub name: String,
    pub reason: String,
}

/// Office formats are ZIP files too; those are documents, not archives.
const OFFICE_PARTS: &[&str] = &[DOCX_MAIN_PART, "xl/workbook.xml", "ppt/presentation.xml", "content.xml"];

/// Whether `bytes` is a ZIP archive of documents rather than one document.
pub fn is_zip_archive(bytes: &[u8]) -> bool {
    if !bytes.starts_with(b"PK\x03\x04") {
        return false;
    }
    match zip::ZipArchive::new(Cursor::new(bytes)) {
        Ok(archive) => OFFICE_PARTS.iter().all(|part| archive.index_for_name(part).is_none()),
        Err(_) => false,
    }
}

/// The archive's files, each read up to the limits; what breaks a rule is
/// rejected with the reason, and the rest is still returned.
pub fn unpack_zip(bytes: &[u8], limits: &ArchiveLimits) -> crate::Result<(Vec<ArchiveEntry>, Vec<RejectedEntry>)> {
    let mut archive =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|err| crate::Error::corrupt("ZIP", err))?;
    let mut entries = Vec::new();
    let mut rejected = Vec::new();
    let mut total: u64 = 0;
    for index in 0..archive.len() {
        let mut entry = match archive.by_index(index) {
            Ok(entry) => entry,
            Err(err) => {
                rejected.push(RejectedEntry { name: format!("entry {index}"), reason: format!("unreadable: {err}") });
                continue;
            }
        };
        let name = match entry.name() {
            Ok(name) => name.into_owned(),
            Err(err) => {
                rejected.push(RejectedEntry { name: format!("entry {index}"), reason: format!("unreadable name: {err}") });
                continue;
            }
        };
        if entry.is_dir() {
            continue;
        }
        let reject = |reason: String| RejectedEntry { name: name.clone(), reason };
        // Checked before the hidden-file rule, which would skip `..` silently.
        if entry.enclosed_name().is_none() || name.starts_with(['/', '\\']) {
            rejected.push(reject("the path leaves the archive (absolute or with ..); not extracted".to_owned()));
            continue;
        }
        if is_hidden(&name) {
            continue;
        }
        if entries.len() >= limits.max_entries {
            rejected.push(reject(format!("the archive has more than {} files", limits.max_entries)));
            continue;
        }
        let room = limits.max_entry_bytes.min(limits.max_total_bytes.saturating_sub(total));
        let mut content = Vec::new();
        // One byte past the limit tells "exactly at the limit" from "over it".
        if let Err(err) = (&mut entry).take(room + 1).read_to_end(&mut content) {
            rejected.push(reject(format!("cannot be decompressed: {err}")));
            continue;
        }
        if content.len() as u64 > room {
            let reason = if room < limits.max_entry_bytes {
                format!("the archive expands to more than {} bytes in all", limits.max_total_bytes)
            } else {
                format!("expands to more than {} bytes", limits.max_entry_bytes)
            };
            rejected.push(reject(reason));
            continue;
        }
        total += content.len() as u64;
        entries.push(ArchiveEntry { name, bytes: content });
    }
    Ok((entries, rejected))
}

/// Hidden files and macOS resource forks are packaging, not documents.
fn is_hidden(name: &str) -> bool {
    name.split('/').any(|part| part.starts_with('.') || part == "__MACOSX")
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use zip::write::SimpleFileOptions;

    use super::*;

    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in files {
            writer.start_file(*name, options).unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    const LIMITS: ArchiveLimits = ArchiveLimits { max_entries: 10, max_entry_bytes: 1000, max_total_bytes: 1500 };

    #[test]
    fn unpacks_documents_and_rejects_what_breaks_the_rules() {
        let bomb = vec![b'a'; 1_000_000];
        let archive = zip_of(&[
            ("notes/a.txt", b"alpha"),
            ("../escape.txt", b"evil"),
            ("/etc/passwd", b"evil"),
            ("bomb.txt", &bomb),
            (".hidden", b"skip"),
            ("__MACOSX/notes/._a.txt", b"skip"),
            ("b.md", b"# B"),
        ]);
        assert!(archive.len() < 10_000, "the bomb compresses well");
        assert!(is_zip_archive(&archive));
        let (entries, rejected) = unpack_zip(&archive, &LIMITS).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["notes/a.txt", "b.md"]);
        assert_eq!(entries[0].bytes, b"alpha");
        let rejected: Vec<&str> = rejected.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(rejected, ["../escape.txt", "/etc/passwd", "bomb.txt"]);
    }

    #[test]
    fn the_total_expansion_is_bounded() {
        let part = vec![b'x'; 800];
        let archive = zip_of(&[("1.txt", &part), ("2.txt", &part), ("3.txt", b"small")]);
        let (entries, rejected) = unpack_zip(&archive, &LIMITS).unwrap();
        assert_eq!(entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["1.txt", "3.txt"]);
        assert!(rejected[0].reason.contains("in all"), "{rejected:?}");
    }

    #[test]
    fn office_files_and_non_zips_are_not_archives() {
        assert!(!is_zip_archive(&zip_of(&[(DOCX_MAIN_PART, b"<w:document/>")])));
        assert!(!is_zip_archive(b"PK\x03\x04 truncated"));
        assert!(!is_zip_archive(b"plain text"));
    }
}
