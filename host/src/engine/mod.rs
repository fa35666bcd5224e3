//! The streaming pipeline: backup (files → tar → zstd → AES-256-GCM STREAM → store) and its
//! exact inverse for verify and restore. Stages run on threads of their own (a backup: the tar
//! writer, `zstd_workers` compression threads, the sealer), joined by bounded channels of
//! recycled buffers, so the stages share the cores and memory stays flat whatever the size.

pub mod backup;
mod frames;
pub mod restore;

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

pub use backup::{backup, BackupOptions};
pub use restore::{
    inspect, restore, restore_with, verify, OnWhole, RestoreOptions, RestoreReport, VerifyReport,
};

/// Blocks of plaintext in flight between the two pipeline threads.
pub const QUEUE_BLOCKS: usize = 2;

/// Counters a progress display can poll from another thread.
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
    /// Shared so that work outside the pipeline (a policy evaluation) can watch it.
    cancelled: std::sync::Arc<AtomicBool>,
}

impl Progress {
    /// Asks the pipeline to stop at its next block; it fails with [`crate::Error::Cancelled`]
    /// and cleans up as after any failure.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn cancel_flag(&self) -> std::sync::Arc<AtomicBool> {
        self.cancelled.clone()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Counts bytes through the pipeline; the error stops it once cancelled.
    fn add_bytes(&self, n: u64) -> io::Result<()> {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
        if self.is_cancelled() {
            return Err(io::Error::other("cancelled"));
        }
        Ok(())
    }

    /// Replaces an error caused by cancelling with `Cancelled`.
    fn explain(&self, e: crate::Error) -> crate::Error {
        if self.is_cancelled() {
            crate::Error::Cancelled
        } else {
            e
        }
    }
    fn file_done(&self) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
    }
}

/// A return path for spent buffers: the consumer hands them back to the producer, so a
/// steady stream allocates nothing and memory stays flat whatever the data size.
fn recycler() -> (SyncSender<Vec<u8>>, Receiver<Vec<u8>>) {
    sync_channel(QUEUE_BLOCKS + 2)
}

/// A spent buffer from `free`, emptied, or a new one.
fn reuse(free: &Receiver<Vec<u8>>, capacity: usize) -> Vec<u8> {
    match free.try_recv() {
        Ok(mut v) => {
            v.clear();
            v
        }
        Err(_) => Vec::with_capacity(capacity),
    }
}

enum Block {
    Data(Vec<u8>),
    End,
}

/// The producer end: cuts what is written into blocks of exactly `block` bytes (the last
/// may be shorter) and sends them; `finish` sends the rest and the end marker.
struct BlockWriter {
    tx: SyncSender<Block>,
    free: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    block: usize,
    spare: usize,
}

impl BlockWriter {
    /// Blocks get `spare` bytes of extra capacity (room for the tag sealed in place).
    fn new(tx: SyncSender<Block>, free: Receiver<Vec<u8>>, block: usize, spare: usize) -> Self {
        BlockWriter {
            tx,
            free,
            buf: Vec::with_capacity(block + spare),
            block,
            spare,
        }
    }

    fn send(&mut self, b: Block) -> io::Result<()> {
        self.tx
            .send(b)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "pipeline consumer stopped"))
    }

    fn flush_block(&mut self) -> io::Result<()> {
        let next = reuse(&self.free, self.block + self.spare);
        let full = std::mem::replace(&mut self.buf, next);
        self.send(Block::Data(full))
    }

    fn finish(mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.flush_block()?;
        }
        self.send(Block::End)
    }
}

impl Write for BlockWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (self.block - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.block {
            self.flush_block()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The consumer end on the restore side: reads blocks as one byte stream. A stream that
/// ends without its end marker is an error (the producer failed).
struct BlockReader {
    rx: Receiver<Block>,
    spent: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl BlockReader {
    fn new(rx: Receiver<Block>, spent: SyncSender<Vec<u8>>) -> Self {
        BlockReader {
            rx,
            spent,
            current: Vec::new(),
            pos: 0,
            ended: false,
        }
    }
}

impl Read for BlockReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Block::Data(v)) => {
                    let spent = std::mem::replace(&mut self.current, v);
                    let _ = self.spent.try_send(spent);
                    self.pos = 0;
                }
                Ok(Block::End) => self.ended = true,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the decryption stage stopped",
                    ))
                }
            }
        }
        let n = (self.current.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads until `buf` is full or the reader ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Joins the two ends of a pipeline. An end that only saw the other one stop (a broken
/// pipe) reports the other end's error, which is the cause.
fn pick_error(producer: crate::Result<()>, consumer: crate::Result<()>) -> crate::Result<()> {
    fn is_consequence(e: &crate::Error) -> bool {
        match e {
            crate::Error::PipelineAborted => true,
            crate::Error::Io { source, .. } => source.kind() == io::ErrorKind::BrokenPipe,
            _ => false,
        }
    }
    match (producer, consumer) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(p), Err(c)) => Err(if is_consequence(&p) { c } else { p }),
    }
}

/// Named points of the pipelines (`after-first-file`, `mid-stream`, `before-commit`,
/// `restore-staged`, `restore-moved-aside`, `restore-swapped`; the daemon's `job-recorded`),
/// reported to an observer
/// the process may install once: the seam crash tests use to stop a run at an exact step
/// (the CLI installs one only for `COUCHVAULT_TEST_PAUSE`). Nothing observes by default.
static CHECKPOINT: std::sync::OnceLock<fn(&str)> = std::sync::OnceLock::new();

pub fn set_checkpoint_observer(observer: fn(&str)) {
    let _ = CHECKPOINT.set(observer);
}

pub(crate) fn checkpoint(point: &str) {
    if let Some(observe) = CHECKPOINT.get() {
        observe(point);
    }
}
