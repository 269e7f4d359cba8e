//! The content-addressed blob cache: verified app files by SHA-256, capped in size, LRU.
//!
//! A blob is fetched once: the bytes stream through SHA-256 into a temporary file (no second
//! pass, no buffering of the whole file) and are renamed into place only when the digest
//! matches, so a reader never sees a torn or unverified blob. Concurrent requests for the same
//! digest in this process wait for the one download. Use refreshes a blob's mtime; when the cache
//! grows past its cap the least recently used blobs are removed (never ones used in the last
//! minute, which a run may be about to link).
//!
//! **Tenant isolation.** Knowing a digest is not proof of owning its bytes: an app's file row
//! could carry the checksum of another app's secret. So a blob is served to an owner (an app)
//! only after that owner's own object was downloaded and verified to have that digest once; the
//! proof is an empty marker file `<blob>.owners/<owner>`, removed with the blob. The bytes are
//! stored once however many owners proved them, so sharing saves disk but never lets one app
//! read what only another app stored.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::digest::Sha256;
use crate::ops::metrics;

/// Bytes read from the download before a chunk is handed to the hashing and writing threads.
const CHUNK_BYTES: usize = 256 * 1024;
/// Chunks queued for each of those threads (bounds the memory a download holds: 2 MiB).
const CHUNKS_AHEAD: usize = 8;

/// Blobs used this recently are never evicted.
const EVICTION_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("checksum mismatch: expected sha256:{expected}, got sha256:{actual} ({bytes} bytes)")]
    ChecksumMismatch {
        expected: String,
        actual: String,
        bytes: u64,
    },
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("{0}")]
    Fetch(String),
    #[error("blob cache I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a blob is, and whether this call downloaded it.
#[derive(Debug, Clone)]
pub struct Blob {
    pub path: PathBuf,
    /// Bytes downloaded by this call (0 on a cache hit).
    pub downloaded: u64,
}

pub struct BlobCache {
    root: PathBuf,
    cap_bytes: u64,
    /// One lock per digest being fetched, so concurrent runs of one app download once.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl BlobCache {
    pub fn new(root: PathBuf, cap_bytes: u64) -> Self {
        Self {
            root,
            cap_bytes,
            fetching: Mutex::default(),
        }
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    /// The directory of the owners that proved they hold the blob at `blob`.
    fn owners_dir(blob: &Path) -> PathBuf {
        let mut dir = blob.as_os_str().to_owned();
        dir.push(".owners");
        PathBuf::from(dir)
    }

    /// The marker saying `owner` proved it holds the blob at `blob`.
    fn owner_marker(blob: &Path, owner: &str) -> PathBuf {
        Self::owners_dir(blob).join(owner)
    }

    /// The blob with SHA-256 `expected_hex` for `owner` (a file name: the app's id), fetched
    /// with `fetch` (a reader of the owner's own object) unless this owner already proved it
    /// holds these bytes. `expected_size`, when known, is checked too.
    pub async fn get_or_fetch<F, Fut, R>(
        &self,
        owner: &str,
        expected_hex: &str,
        expected_size: Option<u64>,
        fetch: F,
    ) -> Result<Blob, CacheError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<R, String>>,
        R: AsyncRead + Unpin,
    {
        let path = self.blob_path(expected_hex);
        let lock = self
            .fetching
            .lock()
            .unwrap()
            .entry(expected_hex.to_owned())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        let marker = Self::owner_marker(&path, owner);
        if tokio::fs::try_exists(&marker).await.unwrap_or(false) && touch(&path).await {
            metrics::blob_cache_hit();
            return Ok(Blob {
                path,
                downloaded: 0,
            });
        }
        metrics::blob_cache_miss();
        let result = match fetch().await {
            Ok(reader) => {
                match self
                    .verify_into_place(reader, expected_hex, expected_size, &path)
                    .await
                {
                    // The owner's proof is written before the digest's lock is given up, so a
                    // request arriving after that finds it and downloads nothing.
                    Ok(bytes) => mark_owner(&marker).await.map(|()| bytes),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(CacheError::Fetch(e)),
        };
        self.fetching.lock().unwrap().remove(expected_hex);
        let downloaded = result?;
        metrics::blob_downloaded(downloaded);
        self.evict_over_cap().await;
        Ok(Blob { path, downloaded })
    }

    async fn verify_into_place<R: AsyncRead + Unpin>(
        &self,
        mut reader: R,
        expected_hex: &str,
        expected_size: Option<u64>,
        path: &Path,
    ) -> Result<u64, CacheError> {
        let tmp_dir = self.root.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(io(&tmp_dir))?;
        let tmp = tmp_dir.join(format!("{expected_hex}.{}", uuid::Uuid::new_v4().simple()));
        let result = async {
            // Hashing (no SHA extensions on many servers: ~330 MB/s a core) runs on a blocking
            // thread of its own, and writing the temporary file on another, while this task
            // keeps receiving: download, hash and write overlap instead of taking turns, and
            // hashing, the slowest of the three, never waits for the disk. Chunks are shared
            // (`Bytes`), not copied, between the two threads.
            let (to_hasher, mut hasher_chunks) = tokio::sync::mpsc::channel::<Bytes>(CHUNKS_AHEAD);
            let (to_writer, mut writer_chunks) = tokio::sync::mpsc::channel::<Bytes>(CHUNKS_AHEAD);
            let hashed = tokio::task::spawn_blocking(move || {
                let mut hasher = Sha256::new();
                while let Some(chunk) = hasher_chunks.blocking_recv() {
                    hasher.update(&chunk);
                }
                hasher.finish_hex()
            });
            let tmp_owned = tmp.clone();
            let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                use std::io::Write;
                let mut file = std::fs::File::create(&tmp_owned)?;
                while let Some(chunk) = writer_chunks.blocking_recv() {
                    file.write_all(&chunk)?;
                }
                Ok(())
            });
            let mut bytes = 0u64;
            let fed = async {
                loop {
                    let mut buf = BytesMut::with_capacity(CHUNK_BYTES);
                    while buf.len() < CHUNK_BYTES {
                        let n = reader
                            .read_buf(&mut buf)
                            .await
                            .map_err(|e| CacheError::Fetch(format!("download interrupted: {e}")))?;
                        if n == 0 {
                            break;
                        }
                    }
                    if buf.is_empty() {
                        return Ok(());
                    }
                    bytes += buf.len() as u64;
                    if let Some(expected) = expected_size {
                        if bytes > expected {
                            return Err(CacheError::SizeMismatch {
                                expected,
                                actual: bytes,
                            });
                        }
                    }
                    let chunk = buf.freeze();
                    let sent = to_hasher.send(chunk.clone()).await.is_ok()
                        && to_writer.send(chunk).await.is_ok();
                    if !sent {
                        // The writer stopped (a write failed): its error is reported below.
                        return Ok(());
                    }
                }
            }
            .await;
            drop((to_hasher, to_writer));
            let actual = hashed.await.expect("the hashing thread does not panic");
            let written = written.await.expect("the writing thread does not panic");
            fed?;
            written.map_err(io(&tmp))?;
            if let Some(expected) = expected_size {
                if bytes != expected {
                    return Err(CacheError::SizeMismatch {
                        expected,
                        actual: bytes,
                    });
                }
            }
            if actual != expected_hex {
                return Err(CacheError::ChecksumMismatch {
                    expected: expected_hex.to_owned(),
                    actual,
                    bytes,
                });
            }
            let parent = path.parent().expect("blob paths have a parent");
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io(parent))?;
            tokio::fs::rename(&tmp, path).await.map_err(io(path))?;
            Ok(bytes)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Removes least recently used blobs until the cache is under its cap.
    async fn evict_over_cap(&self) {
        let root = self.root.join("sha256");
        let cap = self.cap_bytes;
        let _ = tokio::task::spawn_blocking(move || {
            let mut blobs: Vec<(SystemTime, u64, PathBuf)> = std::fs::read_dir(&root)
                .into_iter()
                .flatten()
                .flatten()
                .flat_map(|dir| {
                    std::fs::read_dir(dir.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                })
                .filter_map(|entry| {
                    let meta = entry.metadata().ok()?;
                    // `<blob>.owners/` directories go with their blob.
                    if !meta.is_file() {
                        return None;
                    }
                    Some((meta.modified().ok()?, meta.len(), entry.path()))
                })
                .collect();
            let mut total: u64 = blobs.iter().map(|b| b.1).sum();
            blobs.sort();
            let now = SystemTime::now();
            for (used, size, path) in blobs {
                if total <= cap {
                    break;
                }
                let recent = now.duration_since(used).unwrap_or_default() < EVICTION_GRACE;
                if !recent && std::fs::remove_file(&path).is_ok() {
                    total -= size;
                    let _ = std::fs::remove_dir_all(Self::owners_dir(&path));
                }
            }
        })
        .await;
    }
}

/// Writes `owner`'s proof that it holds a blob (the empty marker file).
async fn mark_owner(marker: &Path) -> Result<(), CacheError> {
    let dir = marker.parent().expect("markers have a parent");
    tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
    tokio::fs::write(marker, b"").await.map_err(io(marker))
}

/// Marks a cached blob as just used; `false` when it is not cached.
async fn touch(path: &Path) -> bool {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::File::options()
            .append(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()))
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn sha(bytes: &[u8]) -> String {
        crate::artifact::digest::sha256_hex(bytes)
    }

    #[tokio::test]
    async fn a_second_request_downloads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(dir.path().to_path_buf(), u64::MAX);
        let data = b"console.log('hi')".to_vec();
        let digest = sha(&data);
        let first = cache
            .get_or_fetch("app-a", &digest, Some(data.len() as u64), || async {
                Ok(&data[..])
            })
            .await
            .unwrap();
        assert_eq!(first.downloaded, data.len() as u64);
        let second = cache
            .get_or_fetch("app-a", &digest, None, || async {
                Err::<&[u8], _>("must not fetch".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(second.downloaded, 0);
        assert_eq!(std::fs::read(second.path).unwrap(), data);
    }

    #[tokio::test]
    async fn concurrent_requests_for_one_blob_download_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(BlobCache::new(dir.path().to_path_buf(), u64::MAX));
        let data = vec![7u8; 300_000];
        let digest = sha(&data);
        let fetches = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (cache, data, digest, fetches) =
                    (cache.clone(), data.clone(), digest.clone(), fetches.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_fetch("app-a", &digest, None, || async move {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok(std::io::Cursor::new(data))
                        })
                        .await
                        .unwrap()
                        .downloaded
                })
            })
            .collect();
        let mut downloaded = 0;
        for task in tasks {
            downloaded += task.await.unwrap();
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(downloaded, data.len() as u64);
    }

    #[tokio::test]
    async fn a_mismatching_blob_is_rejected_and_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(dir.path().to_path_buf(), u64::MAX);
        let wanted = sha(b"the real file");
        let err = cache
            .get_or_fetch("app-a", &wanted, None, || async {
                Ok(&b"a tampered file"[..])
            })
            .await
            .unwrap_err();
        match err {
            CacheError::ChecksumMismatch {
                expected, actual, ..
            } => {
                assert_eq!(expected, wanted);
                assert_eq!(actual, sha(b"a tampered file"));
            }
            other => panic!("unexpected {other}"),
        }
        assert!(!cache.blob_path(&wanted).exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn the_least_recently_used_blobs_go_when_over_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(dir.path().to_path_buf(), 250);
        let mut paths = Vec::new();
        for i in 0..3u8 {
            let data = vec![i; 100];
            let blob = cache
                .get_or_fetch("app-a", &sha(&data), None, || async {
                    Ok(std::io::Cursor::new(data.clone()))
                })
                .await
                .unwrap();
            // Age the blob beyond the eviction grace, oldest first.
            let age = Duration::from_secs(3600 - u64::from(i) * 60);
            std::fs::File::options()
                .append(true)
                .open(&blob.path)
                .unwrap()
                .set_modified(SystemTime::now() - age)
                .unwrap();
            paths.push(blob.path);
        }
        cache.evict_over_cap().await;
        assert!(!paths[0].exists(), "the oldest blob survived");
        assert!(
            !BlobCache::owners_dir(&paths[0]).exists(),
            "its owners stayed"
        );
        assert!(paths[1].exists() && paths[2].exists());
    }

    #[tokio::test]
    async fn a_blob_is_served_only_to_owners_that_proved_they_hold_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(dir.path().to_path_buf(), u64::MAX);
        let secret = b"app a's secret".to_vec();
        let digest = sha(&secret);
        cache
            .get_or_fetch("app-a", &digest, None, || async { Ok(&secret[..]) })
            .await
            .unwrap();
        // App b names the digest but its own object holds other bytes: refused, not served.
        let err = cache
            .get_or_fetch("app-b", &digest, None, || async {
                Ok(&b"something else"[..])
            })
            .await
            .unwrap_err();
        assert!(matches!(err, CacheError::ChecksumMismatch { .. }), "{err}");
        // Its own object missing: the fetch error, not a's bytes.
        let err = cache
            .get_or_fetch("app-b", &digest, None, || async {
                Err::<&[u8], _>("object not found".to_owned())
            })
            .await
            .unwrap_err();
        assert!(matches!(err, CacheError::Fetch(_)), "{err}");
        // Once b's own object verifies, b is served from the shared blob without a download.
        let proved = cache
            .get_or_fetch("app-b", &digest, None, || async { Ok(&secret[..]) })
            .await
            .unwrap();
        assert_eq!(proved.downloaded, secret.len() as u64);
        let again = cache
            .get_or_fetch("app-b", &digest, None, || async {
                Err::<&[u8], _>("must not fetch".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(again.downloaded, 0);
        assert_eq!(again.path, proved.path, "the bytes are stored once");
    }
}
