//! The file an export writes: lines are buffered in batches and a batch counts only once it is
//! written *and* fsynced; only then are its messages acked (with `--remove`).
//!
//! A process killed mid-batch leaves at most one unfinished last line (no newline). Its message
//! was not acked, so it is still in the queue; `import` skips such a line with a warning, and
//! `export --append` cuts it off before adding to the file.
//!
//! Writes and fsyncs run on tokio's blocking pool ([`ExportFile::flush`] is async; callers open
//! the file with `spawn_blocking`): an fsync can take long on a busy disk, and on a runtime
//! thread it would stall the broker connection's heartbeats and the confirms of a pass.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the export file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ExportFileError {
    /// The file exists and `--append` was not given.
    #[error("{path} already exists; choose another --out, or pass --append to add to it")]
    Exists {
        /// The file.
        path: String,
    },
    /// Any I/O failure, with the file and the step.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What we were doing.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// An export file open for writing.
pub struct ExportFile {
    path: PathBuf,
    /// Shared with the blocking task that writes and syncs a batch.
    file: Arc<File>,
    /// Lines of the current batch, newline-terminated.
    buf: Vec<u8>,
    /// Delivery tags to ack once the batch is on disk.
    tags: Vec<u64>,
    /// Lines in the current batch.
    pending: u64,
    /// Lines written and synced so far.
    synced: u64,
}

impl ExportFile {
    /// Creates `path` (refused if it exists, unless `append`). With `append`, an unfinished
    /// last line is cut off first.
    ///
    /// # Errors
    /// [`ExportFileError`] naming the file.
    pub fn open(path: &Path, append: bool) -> Result<Self, ExportFileError> {
        let io_err = |what, source| ExportFileError::Io {
            path: path.display().to_string(),
            what,
            source,
        };
        let mut file = if append {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| io_err("cannot open", e))?
        } else {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(ExportFileError::Exists {
                        path: path.display().to_string(),
                    })
                }
                Err(e) => return Err(io_err("cannot create", e)),
            }
        };
        if append {
            let end = complete_length(&mut file).map_err(|e| io_err("cannot read", e))?;
            file.set_len(end)
                .map_err(|e| io_err("cannot cut the unfinished last line", e))?;
            file.seek(SeekFrom::Start(end))
                .map_err(|e| io_err("cannot seek", e))?;
        }
        // Make the file's directory entry durable too, or a crash could lose the whole file
        // even though its contents were synced.
        file.sync_all().map_err(|e| io_err("cannot sync", e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(Self {
            path: path.to_owned(),
            file: Arc::new(file),
            buf: Vec::with_capacity(1 << 20),
            tags: Vec::new(),
            pending: 0,
            synced: 0,
        })
    }

    /// Adds a line to the batch; `tag` is acked once the batch is synced (`None`: nothing to
    /// ack for it, the message stays in the queue anyway).
    pub fn push(&mut self, line: &str, tag: Option<u64>) {
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        self.pending += 1;
        if let Some(t) = tag {
            self.tags.push(t);
        }
    }

    /// Lines waiting in the batch.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Lines on disk.
    pub fn synced(&self) -> u64 {
        self.synced
    }

    /// Writes the batch and fsyncs the file, on the blocking pool; returns the tags that may now
    /// be acked. Nothing is handed back before the sync returned, so "acked" always means
    /// "written and synced".
    ///
    /// # Errors
    /// [`ExportFileError::Io`]; the batch's messages must then not be acked.
    pub async fn flush(&mut self) -> Result<Vec<u64>, ExportFileError> {
        if self.pending == 0 {
            return Ok(std::mem::take(&mut self.tags));
        }
        let io_err = |what, source| ExportFileError::Io {
            path: self.path.display().to_string(),
            what,
            source,
        };
        let file = Arc::clone(&self.file);
        let buf = std::mem::take(&mut self.buf);
        let written = tokio::task::spawn_blocking(move || (write_and_sync(&file, &buf), buf)).await;
        let (done, mut buf) = match written {
            Ok(r) => r,
            Err(e) => {
                // The batch went with the failed task: forget its tags, so that no later flush
                // can hand them out as synced (their messages simply stay in the queue).
                self.tags.clear();
                self.pending = 0;
                return Err(io_err("cannot write", io::Error::other(e)));
            }
        };
        // Back in place either way: after a failure the batch is still whole (as before the
        // flush), after a success its capacity serves the next one.
        if let Err((what, e)) = done {
            self.buf = buf;
            return Err(io_err(what, e));
        }
        buf.clear();
        self.buf = buf;
        self.synced += self.pending;
        self.pending = 0;
        Ok(std::mem::take(&mut self.tags))
    }
}

/// Appends `buf` to `file` and fsyncs it; on failure, the step that failed.
fn write_and_sync(mut file: &File, buf: &[u8]) -> Result<(), (&'static str, io::Error)> {
    file.write_all(buf).map_err(|e| ("cannot write", e))?;
    file.sync_data().map_err(|e| ("cannot fsync", e))
}

/// The length of the file up to and including its last newline.
fn complete_length(file: &mut File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let mut pos = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while pos > 0 {
        let n = chunk.len().min(usize::try_from(pos).unwrap_or(usize::MAX));
        pos -= n as u64;
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(pos + i as u64 + 1);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "courier-dlq-{name}-{}-{}",
            std::process::id(),
            courier::envelope::new_message_id()
        ));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[tokio::test]
    async fn batches_reach_the_disk_and_hand_back_their_tags() {
        let p = temp("batch");
        let mut f = ExportFile::open(&p, false).expect("create");
        f.push("{\"a\":1}", Some(1));
        f.push("{\"a\":2}", None);
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "",
            "nothing before flush"
        );
        assert_eq!(f.flush().await.expect("flush"), vec![1]);
        assert_eq!(f.synced(), 2);
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "{\"a\":1}\n{\"a\":2}\n"
        );
        assert!(matches!(
            ExportFile::open(&p, false),
            Err(ExportFileError::Exists { .. })
        ));
        let _ = std::fs::remove_file(&p);
    }

    #[tokio::test]
    async fn append_cuts_an_unfinished_last_line() {
        let p = temp("append");
        std::fs::write(&p, "one\ntwo\nthr").expect("write");
        let mut f = ExportFile::open(&p, true).expect("append");
        f.push("three", None);
        f.flush().await.expect("flush");
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "one\ntwo\nthree\n"
        );
        std::fs::write(&p, "no newline at all").expect("write");
        drop(ExportFile::open(&p, true).expect("append"));
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "");
        let _ = std::fs::remove_file(&p);
    }
}
