use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ragd_core::ContentHash;

use crate::error::{Error, Result};

/// Original document bytes on the local filesystem, addressed by their
/// sha256: `root/sha256/ab/cdef…`. Equal content is stored once.
///
/// A blob is written to a temporary file in its final directory, synced,
/// then renamed, so a crash never leaves a partial blob under its final
/// name (only a stray `.tmp-*` file).
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Creates the directory layout under `root` when missing.
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root.join("sha256"))?;
        Ok(Self { root: root.to_owned() })
    }

    /// Stores `bytes` (a no-op when they are already stored) and returns
    /// their hash.
    #[tracing::instrument(name = "blob.put", skip_all, fields(size = bytes.len()))]
    pub async fn put(&self, bytes: &[u8]) -> Result<ContentHash> {
        // Hashing and fsync block: run them off the async threads.
        let bytes = bytes.to_vec();
        let root = self.root.clone();
        blocking(move || {
            let hash = ContentHash::of(&bytes);
            let path = blob_path(&root, &hash);
            if !path.exists() {
                write_durably(&path, &bytes)?;
                tracing::debug!(%hash, "blob stored");
            }
            Ok(hash)
        })
        .await
    }

    /// Fails with NotFound when absent, and with Corrupt when the stored
    /// bytes no longer match their hash.
    #[tracing::instrument(name = "blob.get", skip_all, fields(%hash))]
    pub async fn get(&self, hash: &ContentHash) -> Result<Vec<u8>> {
        let path = blob_path(&self.root, hash);
        let hash = hash.clone();
        blocking(move || {
            let bytes = fs::read(&path).map_err(|err| match err.kind() {
                io::ErrorKind::NotFound => Error::NotFound(format!("blob {hash}")),
                _ => Error::Io(err),
            })?;
            if ContentHash::of(&bytes) != hash {
                return Err(Error::corrupt(format_args!("blob {hash} does not match its hash")));
            }
            Ok(bytes)
        })
        .await
    }

    /// An unnamed file beside the blobs for spooling an upload; it is gone
    /// once closed, even after a crash.
    pub async fn scratch_file(&self) -> Result<std::fs::File> {
        let root = self.root.clone();
        blocking(move || Ok(tempfile::tempfile_in(root)?)).await
    }

    /// Removes the blob; removing an absent blob succeeds.
    #[tracing::instrument(name = "blob.delete", skip_all, fields(%hash))]
    pub async fn delete(&self, hash: &ContentHash) -> Result<()> {
        match tokio::fs::remove_file(blob_path(&self.root, hash)).await {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(Error::Io(err)),
            _ => Ok(()),
        }
    }
}

fn blob_path(root: &Path, hash: &ContentHash) -> PathBuf {
    // A hash is 64 ASCII hex digits, so both slices are in bounds.
    let hex = hash.as_str();
    root.join("sha256").join(&hex[..2]).join(&hex[2..])
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other("blob path has no parent"))?;
    if !dir.exists() {
        fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
    }
    let mut file = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|err| err.error)?;
    // The rename is durable only once the directory entry is.
    File::open(dir)?.sync_all()?;
    Ok(())
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|err| Error::Io(io::Error::other(err)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_fan_out_by_the_first_two_digits() {
        let hash = ContentHash::of(b"hello");
        let path = blob_path(Path::new("/blobs"), &hash);
        let hex = hash.as_str();
        assert_eq!(path, Path::new("/blobs/sha256").join(&hex[..2]).join(&hex[2..]));
    }
}
