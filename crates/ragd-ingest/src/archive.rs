//! Archive uploads: a ZIP or tar archive (tar optionally gzipped) is a bag
//! of documents. Unpacking is bounded so that a hostile archive cannot
//! exhaust memory or escape its folder: each entry's name must be a relative
//! path inside the archive, and every entry and the archive as a whole have a
//! limit on the bytes they expand to, enforced while reading rather than
//! trusted from the archive's own size fields. Entries are handed over one
//! at a time, so an archive never has to be in memory as a whole.

use std::io::{Cursor, Read, Seek};
use std::ops::ControlFlow;
use std::path::{Component, Path};

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

/// One step of unpacking: a file taken, or a file refused with the reason.
#[derive(Debug)]
pub enum Unpacked {
    Entry(ArchiveEntry),
    Rejected(RejectedEntry),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Zip,
    Tar,
    /// A tar stream compressed with gzip (`.tar.gz`, `.tgz`).
    TarGz,
}

impl ArchiveKind {
    /// The kind a request's media type names, if it names an archive.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            "application/zip" | "application/x-zip-compressed" => Some(Self::Zip),
            "application/x-tar" => Some(Self::Tar),
            "application/gzip"
            | "application/x-gzip"
            | "application/x-gtar"
            | "application/x-compressed-tar" => Some(Self::TarGz),
            _ => None,
        }
    }
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

/// The kind of archive an uploaded file is, judged by its content (and, for
/// gzip, which may wrap anything, by its name too); None for a document.
pub fn archive_kind(file_name: Option<&str>, bytes: &[u8]) -> Option<ArchiveKind> {
    if is_zip_archive(bytes) {
        return Some(ArchiveKind::Zip);
    }
    // POSIX and GNU tar headers both carry `ustar` at offset 257.
    if bytes.get(257..262) == Some(b"ustar") {
        return Some(ArchiveKind::Tar);
    }
    let name = file_name.unwrap_or_default().to_ascii_lowercase();
    let gzipped_tar = name.ends_with(".tar.gz") || name.ends_with(".tgz");
    (gzipped_tar && bytes.starts_with(&[0x1f, 0x8b])).then_some(ArchiveKind::TarGz)
}

/// The archive's files, each read up to the limits; what breaks a rule is
/// rejected with the reason, and the rest is still returned.
pub fn unpack_zip(
    bytes: &[u8],
    limits: &ArchiveLimits,
) -> crate::Result<(Vec<ArchiveEntry>, Vec<RejectedEntry>)> {
    let mut entries = Vec::new();
    let mut rejected = Vec::new();
    unpack(ArchiveKind::Zip, Cursor::new(bytes), limits, |item| {
        match item {
            Unpacked::Entry(entry) => entries.push(entry),
            Unpacked::Rejected(entry) => rejected.push(entry),
        }
        ControlFlow::Continue(())
    })?;
    Ok((entries, rejected))
}

/// Reads an archive of `kind` entry by entry, handing each file (or the
/// reason it was refused) to `sink`, which may stop the reading early. An
/// error means the archive itself is unreadable; entries handed over before
/// it stand.
pub fn unpack<R: Read + Seek>(
    kind: ArchiveKind,
    reader: R,
    limits: &ArchiveLimits,
    sink: impl FnMut(Unpacked) -> ControlFlow<()>,
) -> crate::Result<()> {
    match kind {
        ArchiveKind::Zip => {
            unpack_zip_entries(reader, &mut Rules { limits: *limits, taken: 0, total: 0, sink })
        }
        ArchiveKind::Tar | ArchiveKind::TarGz => unpack_stream(kind, reader, limits, sink),
    }
}

/// Reads a tar stream (gzipped or not) entry by entry; unlike a ZIP it needs
/// no seeking, so it can be read straight off a request body.
pub fn unpack_stream<R: Read>(
    kind: ArchiveKind,
    reader: R,
    limits: &ArchiveLimits,
    sink: impl FnMut(Unpacked) -> ControlFlow<()>,
) -> crate::Result<()> {
    let mut rules = Rules { limits: *limits, taken: 0, total: 0, sink };
    match kind {
        ArchiveKind::Zip => Err(crate::Error::corrupt("ZIP", "a ZIP archive cannot be read as a stream")),
        ArchiveKind::Tar => unpack_tar_entries(reader, &mut rules),
        ArchiveKind::TarGz => {
            let expanded = Expansion::new(flate2::read::GzDecoder::new(reader), limits);
            unpack_tar_entries(expanded, &mut rules)
        }
    }
}

/// Room, beyond twice the files' limit, for tar headers and skipped entries.
const SKIPPED_ALLOWANCE: u64 = 16 * 1024 * 1024;

/// Caps what a compressed tar stream may expand to, skipped entries
/// included: tar skips an entry by reading through it, so the per-file
/// limits alone would let a small upload decompress for hours.
struct Expansion<R> {
    inner: R,
    limit: u64,
    left: u64,
}

impl<R: Read> Expansion<R> {
    fn new(inner: R, limits: &ArchiveLimits) -> Self {
        let limit = limits.max_total_bytes.saturating_mul(2).saturating_add(SKIPPED_ALLOWANCE);
        Self { inner, limit, left: limit }
    }
}

impl<R: Read> Read for Expansion<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // One byte past the limit tells "exactly at the limit" from "over it".
        let room = usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX);
        let end = buf.len().min(room);
        let read = self.inner.read(&mut buf[..end])?;
        if read as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "the archive expands to more than {} bytes, counting the entries it skips",
                self.limit
            )));
        }
        self.left -= read as u64;
        Ok(read)
    }
}

/// The limits and the running totals they are checked against.
struct Rules<F> {
    limits: ArchiveLimits,
    taken: usize,
    total: u64,
    sink: F,
}

impl<F: FnMut(Unpacked) -> ControlFlow<()>> Rules<F> {
    fn reject(&mut self, name: String, reason: impl Into<String>) -> ControlFlow<()> {
        (self.sink)(Unpacked::Rejected(RejectedEntry { name, reason: reason.into() }))
    }

    /// Reads one file entry within the limits and hands it on.
    fn take(&mut self, name: String, content: impl Read) -> ControlFlow<()> {
        if is_hidden(&name) {
            return ControlFlow::Continue(());
        }
        if self.taken >= self.limits.max_entries {
            // Every later file would be refused too; reading on costs time for nothing.
            let reason = format!(
                "the archive has more than {} files; this and the rest were not read",
                self.limits.max_entries
            );
            let _ = self.reject(name, reason);
            return ControlFlow::Break(());
        }
        let room = self.limits.max_entry_bytes.min(self.limits.max_total_bytes.saturating_sub(self.total));
        let mut bytes = Vec::new();
        // One byte past the limit tells "exactly at the limit" from "over it".
        if let Err(err) = content.take(room + 1).read_to_end(&mut bytes) {
            return self.reject(name, format!("cannot be decompressed: {err}"));
        }
        if bytes.len() as u64 > room {
            let reason = if room < self.limits.max_entry_bytes {
                format!("the archive expands to more than {} bytes in all", self.limits.max_total_bytes)
            } else {
                format!("expands to more than {} bytes", self.limits.max_entry_bytes)
            };
            return self.reject(name, reason);
        }
        self.taken += 1;
        self.total += bytes.len() as u64;
        (self.sink)(Unpacked::Entry(ArchiveEntry { name, bytes }))
    }
}

const ESCAPES: &str = "the path leaves the archive (absolute or with ..); not extracted";

fn unpack_zip_entries<R: Read + Seek, F: FnMut(Unpacked) -> ControlFlow<()>>(
    reader: R,
    rules: &mut Rules<F>,
) -> crate::Result<()> {
    let mut archive = zip::ZipArchive::new(reader).map_err(|err| crate::Error::corrupt("ZIP", err))?;
    for index in 0..archive.len() {
        let entry = match archive.by_index(index) {
            Ok(entry) => entry,
            Err(err) => {
                if rules.reject(format!("entry {index}"), format!("unreadable: {err}")).is_break() {
                    break;
                }
                continue;
            }
        };
        let name = match entry.name() {
            Ok(name) => name.into_owned(),
            Err(err) => {
                if rules.reject(format!("entry {index}"), format!("unreadable name: {err}")).is_break() {
                    break;
                }
                continue;
            }
        };
        if entry.is_dir() {
            continue;
        }
        // Checked before the hidden-file rule, which would skip `..` silently;
        // the zip crate counts a NUL as an escape too, which would be the wrong reason.
        let step = if name.contains('\0') {
            rules.reject(name, "the name contains a NUL character (U+0000)")
        } else if entry.enclosed_name().is_none() || name.starts_with(['/', '\\']) {
            rules.reject(name, ESCAPES)
        } else {
            rules.take(name, entry)
        };
        if step.is_break() {
            break;
        }
    }
    Ok(())
}

fn unpack_tar_entries<R: Read, F: FnMut(Unpacked) -> ControlFlow<()>>(
    reader: R,
    rules: &mut Rules<F>,
) -> crate::Result<()> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|err| crate::Error::corrupt("tar", err))?;
    for (index, entry) in entries.enumerate() {
        // A broken header leaves no way to find the next entry.
        let entry = entry.map_err(|err| crate::Error::corrupt("tar", format!("entry {index}: {err}")))?;
        let kind = entry.header().entry_type();
        let name = match entry.path() {
            // `tar -C dir .` names every entry `./…`.
            Ok(path) => path.to_string_lossy().trim_start_matches("./").to_owned(),
            Err(err) => {
                if rules.reject(format!("entry {index}"), format!("unreadable name: {err}")).is_break() {
                    break;
                }
                continue;
            }
        };
        let step = if kind.is_dir() || kind.is_pax_global_extensions() {
            ControlFlow::Continue(())
        } else if !stays_inside(Path::new(&name)) {
            rules.reject(name, ESCAPES)
        } else if kind.is_symlink() || kind.is_hard_link() {
            rules.reject(name, "links are not extracted")
        } else if !kind.is_file() {
            rules.reject(name, "not a regular file")
        } else {
            rules.take(name, entry)
        };
        if step.is_break() {
            break;
        }
    }
    Ok(())
}

/// Whether `path` is relative and never climbs above where it starts.
fn stays_inside(path: &Path) -> bool {
    let mut depth = 0usize;
    for component in path.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    depth > 0
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

    const LIMITS: ArchiveLimits =
        ArchiveLimits { max_entries: 10, max_entry_bytes: 1000, max_total_bytes: 1500 };

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
    fn tar_archives_follow_the_same_rules() {
        let bomb = vec![b'a'; 1_000_000];
        let mut builder = tar::Builder::new(Vec::new());
        let mut append = |name: &str, kind: tar::EntryType, bytes: &[u8]| {
            let mut header = tar::Header::new_gnu();
            // set_path refuses `..`, which is exactly what must be tested.
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(kind);
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append(&header, bytes).unwrap();
        };
        append("./notes/", tar::EntryType::Directory, b"");
        append("./notes/a.txt", tar::EntryType::Regular, b"alpha");
        append("notes/../../escape.txt", tar::EntryType::Regular, b"evil");
        append("/etc/passwd", tar::EntryType::Regular, b"evil");
        append("link", tar::EntryType::Symlink, b"");
        append("bomb.txt", tar::EntryType::Regular, &bomb);
        append("./.hidden", tar::EntryType::Regular, b"skip");
        append("b.md", tar::EntryType::Regular, b"# B");
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();

        for (kind, bytes) in [(ArchiveKind::Tar, &tar), (ArchiveKind::TarGz, &gz)] {
            let mut names = Vec::new();
            let mut rejected = Vec::new();
            unpack_stream(kind, bytes.as_slice(), &LIMITS, |item| {
                match item {
                    Unpacked::Entry(entry) => names.push((entry.name, entry.bytes)),
                    Unpacked::Rejected(entry) => rejected.push(entry.name),
                }
                ControlFlow::Continue(())
            })
            .unwrap();
            assert_eq!(
                names,
                [("notes/a.txt".to_owned(), b"alpha".to_vec()), ("b.md".to_owned(), b"# B".to_vec())]
            );
            assert_eq!(rejected, ["notes/../../escape.txt", "/etc/passwd", "link", "bomb.txt"], "{kind:?}");
        }
        assert!(unpack_stream(ArchiveKind::TarGz, &tar[..], &LIMITS, |_| ControlFlow::Continue(())).is_err());
    }

    #[test]
    fn a_gzipped_tar_stops_where_it_expands_past_its_bound() {
        let mut builder =
            tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let mut append = |name: &str, bytes: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_path(name).unwrap();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append(&header, bytes).unwrap();
        };
        append("first.txt", b"taken");
        // Refused as too large, then skipped by reading through it.
        append("zeros.bin", &vec![0; SKIPPED_ALLOWANCE as usize + 4096]);
        append("after.txt", b"never reached");
        let gz = builder.into_inner().unwrap().finish().unwrap();
        let mut seen = Vec::new();
        let error = unpack_stream(ArchiveKind::TarGz, gz.as_slice(), &LIMITS, |item| {
            seen.push(match item {
                Unpacked::Entry(entry) => entry.name,
                Unpacked::Rejected(entry) => entry.name,
            });
            ControlFlow::Continue(())
        })
        .unwrap_err();
        assert_eq!(seen, ["first.txt", "zeros.bin"]);
        assert!(error.to_string().contains("expands to more than"), "{error}");
    }

    #[test]
    fn files_past_the_count_are_not_read() {
        let files: Vec<(String, &[u8])> =
            (0..LIMITS.max_entries + 5).map(|i| (format!("{i}.txt"), &b"x"[..])).collect();
        let files: Vec<(&str, &[u8])> = files.iter().map(|(name, bytes)| (name.as_str(), *bytes)).collect();
        let (entries, rejected) = unpack_zip(&zip_of(&files), &LIMITS).unwrap();
        assert_eq!(entries.len(), LIMITS.max_entries);
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert!(rejected[0].reason.contains("the rest were not read"), "{rejected:?}");
    }

    #[test]
    fn paths_must_stay_inside() {
        for inside in ["a", "a/b", "./a", "a/../b"] {
            assert!(stays_inside(Path::new(inside)), "{inside}");
        }
        for outside in ["/a", "..", "a/../../b", ".", ""] {
            assert!(!stays_inside(Path::new(outside)), "{outside}");
        }
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
