//! Capture records into rotating files (gzip JSON Lines, or Parquet), on a
//! thread of their own: a file is written under a `.partial` name and renamed
//! when it is closed (past its size or its age), so a reader only ever sees
//! whole files.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use flate2::write::GzEncoder;

use super::parquet::{Layout, Table};
use super::{Counts, Record};
use crate::core::config::CaptureConfig;
use crate::core::error::{Error, Result};

/// Bytes of records a file takes before it is closed, by default.
const MAX_FILE_BYTES: u64 = 64 << 20;
/// Seconds a file stays open, by default.
const MAX_FILE_SECONDS: u64 = 3600;

pub struct Files {
    dir: PathBuf,
    max_bytes: u64,
    max_age: Duration,
    counts: Arc<Counts>,
    /// Files begun by this writer, and a random tag of it: both in every
    /// name, so writers sharing a folder (replicas whose process ids are all
    /// 1 in their containers, a version reloaded) never pick the same one.
    begun: u64,
    tag: u64,
    /// Parquet's columns; JSON Lines without.
    parquet: Option<Arc<Layout>>,
    /// BYTES inputs written as hashes.
    hash: Arc<[String]>,
    /// The line being written, its room kept from one record to the next.
    line: Vec<u8>,
}

/// What an open file is written through.
enum Body {
    Jsonl(GzEncoder<BufWriter<File>>),
    Parquet(Box<Table>),
}

/// The file being written.
struct Open {
    partial: PathBuf,
    done: PathBuf,
    out: Body,
    bytes: u64,
    records: u64,
    since: Instant,
}

impl Files {
    pub fn new(
        dir: PathBuf,
        config: &CaptureConfig,
        counts: Arc<Counts>,
        parquet: Option<Arc<Layout>>,
        hash: Arc<[String]>,
    ) -> Result<Files> {
        private_dir(&dir)
            .map_err(|e| Error::load(format!("[capture] dir {}: {e}", dir.display())))?;
        Ok(Files {
            dir,
            max_bytes: config.max_file_bytes.unwrap_or(MAX_FILE_BYTES).max(1),
            max_age: Duration::from_secs(
                config.max_file_seconds.unwrap_or(MAX_FILE_SECONDS).max(1),
            ),
            counts,
            begun: 0,
            tag: fastrand::u64(..),
            parquet,
            hash,
            line: Vec::new(),
        })
    }

    /// Writes what arrives until the version (the sender) goes, then closes
    /// the last file.
    pub fn run(mut self, rx: &Receiver<Record>) {
        let mut open: Option<Open> = None;
        loop {
            // An open file is closed at its age even when nothing arrives.
            let wait = open.as_ref().map_or(Duration::from_secs(3600), |o| {
                self.max_age.saturating_sub(o.since.elapsed())
            });
            match rx.recv_timeout(wait) {
                Ok(mut record) => {
                    record.hash(&self.hash);
                    open = self.write(open, &record);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    if let Some(o) = open.take() {
                        self.close(o);
                    }
                    return;
                }
            }
            if let Some(o) = open.take() {
                if o.bytes >= self.max_bytes || o.since.elapsed() >= self.max_age {
                    self.close(o);
                } else {
                    open = Some(o);
                }
            }
        }
    }

    /// Appends one record, beginning a file if none is open; a failed write
    /// (a full disk) gives up that file and counts its records as dropped.
    fn write(&mut self, open: Option<Open>, record: &Record) -> Option<Open> {
        let mut o = match open {
            Some(o) => o,
            None => match self.begin() {
                Ok(o) => o,
                Err(e) => {
                    self.counts.dropped_write.increment(1);
                    tracing::warn!(dir = %self.dir.display(), error = %e, "capture: cannot begin a file; the record is dropped");
                    return None;
                }
            },
        };
        let written = match &mut o.out {
            Body::Jsonl(out) => {
                let mut line = std::mem::take(&mut self.line);
                line.clear();
                let written = serde_json::to_writer(&mut line, record)
                    .map_err(std::io::Error::other)
                    .and_then(|()| {
                        line.push(b'\n');
                        out.write_all(&line)
                    })
                    .map(|()| line.len() as u64);
                self.line = line;
                written
            }
            Body::Parquet(table) => table.push(record),
        };
        match written {
            Ok(bytes) => {
                o.bytes += bytes;
                o.records += 1;
                Some(o)
            }
            Err(e) => {
                self.abandon(o, 1, &e);
                None
            }
        }
    }

    fn begin(&mut self) -> std::io::Result<Open> {
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .replace([':', '-'], "");
        let ext = if self.parquet.is_some() {
            "parquet"
        } else {
            "jsonl.gz"
        };
        let name = format!("{stamp}-{:016x}-{}.{ext}", self.tag, self.begun);
        self.begun += 1;
        // Again here: a retention job may have removed the folder.
        private_dir(&self.dir)?;
        let done = self.dir.join(&name);
        let partial = self.dir.join(format!(".{name}.partial"));
        // Records hold what clients sent: readable by the server's user only,
        // and never a file that exists already.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)?;
        let out = match &self.parquet {
            Some(layout) => match Table::create(file, layout.clone()) {
                Ok(t) => Body::Parquet(Box::new(t)),
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(e);
                }
            },
            None => Body::Jsonl(GzEncoder::new(
                BufWriter::new(file),
                flate2::Compression::fast(),
            )),
        };
        Ok(Open {
            partial,
            done,
            out,
            bytes: 0,
            records: 0,
            since: Instant::now(),
        })
    }

    /// Finishes the gzip stream and gives the file its final name.
    fn close(&mut self, o: Open) {
        let (partial, done, records) = (o.partial.clone(), o.done.clone(), o.records);
        let file = match o.out {
            Body::Jsonl(gz) => gz
                .finish()
                .and_then(|mut w| w.flush().map(|()| w))
                .and_then(|w| w.into_inner().map_err(|e| e.into_error())),
            Body::Parquet(table) => table.finish(),
        };
        let finished = file
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::rename(&partial, &done));
        match finished {
            Ok(()) => self.counts.written.increment(records),
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                self.counts.dropped_write.increment(records);
                tracing::warn!(file = %done.display(), error = %e, records, "capture: a file could not be finished; its records are dropped");
            }
        }
    }

    /// Drops a file a write failed in (it would not read back whole).
    fn abandon(&mut self, o: Open, more: u64, e: &std::io::Error) {
        let _ = std::fs::remove_file(&o.partial);
        self.counts.dropped_write.increment(o.records + more);
        tracing::warn!(file = %o.done.display(), error = %e, records = o.records + more, "capture: a write failed; the file's records are dropped");
    }
}

/// Creates `dir` and its parents, new ones readable by the server's user only.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn folders_are_made_private() {
        let root = std::env::temp_dir().join(format!("sy-private-{}", fastrand::u64(..)));
        super::private_dir(&root.join("a/b")).unwrap();
        for d in [root.join("a"), root.join("a/b")] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{d:?}");
        }
        std::fs::remove_dir_all(root).unwrap();
    }
}
