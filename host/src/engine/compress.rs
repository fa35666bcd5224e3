//! Compression on worker threads of the pipeline's own. The tar stream is cut into frames of
//! [`FRAME_INPUT`] bytes; whichever worker is free compresses the next one into an independent
//! zstd frame, and the sealer puts the frames back in order ([`InOrder`]). Concatenated zstd
//! frames are one zstd stream (RFC 8878, section 3.1): restore, older couchvault versions and
//! the `zstd` command read it as they read one frame.
//!
//! Why not zstd's multithreaded mode: its jobs are 8 MiB at level 3 with several in flight per
//! worker, most of a backup's memory (99 MiB peak RSS against 32 MiB here), and on data that is
//! mostly compressed already (CouchDB attachments) it kept fewer cores busy. Measured in
//! docs/PERFORMANCE.md.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use super::Block;
use crate::error::{Error, Result};

/// Bytes of tar stream per zstd frame. Frames are compressed independently, so a match cannot
/// reach back into the previous frame: 1 MiB costs about 1% of the ratio of one long frame on
/// CouchDB's JSON and keeps each worker's input, output and window at 1 MiB.
pub const FRAME_INPUT: usize = 512 << 10;

/// What the workers send the sealer: a compressed frame and its place in the stream, or the
/// number of frames once the tar stream has ended.
pub enum Compressed {
    Frame(u64, Vec<u8>),
    End(u64),
}

/// The tar blocks the workers take turns reading, numbered as they are taken.
struct Input {
    rx: Receiver<Block>,
    next: u64,
    /// The end was read, or a worker failed: the others stop.
    done: bool,
}

/// Spent frame buffers, handed back by the sealer for the workers to fill again.
#[derive(Default)]
pub struct FramePool(Mutex<Vec<Vec<u8>>>);

impl FramePool {
    fn take(&self, capacity: usize) -> Vec<u8> {
        let spare = self.0.lock().ok().and_then(|mut free| free.pop());
        match spare {
            Some(mut v) if v.capacity() >= capacity => {
                v.clear();
                v
            }
            _ => Vec::with_capacity(capacity),
        }
    }

    pub fn give(&self, v: Vec<u8>) {
        if let Ok(mut free) = self.0.lock() {
            // Only as many as there can be frames in flight: the rest are freed.
            if free.len() < 8 {
                free.push(v);
            }
        }
    }
}

/// Runs `workers` compression threads in `scope` over the tar blocks of `rx` (handing spent
/// blocks back on `spent`), sending frames to `out`. Returns their handles; each ends with
/// the first error it met. When the last one ends, `rx` is dropped, so a producer still
/// writing sees a broken pipe instead of waiting forever.
pub fn spawn_workers<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    workers: usize,
    level: i32,
    rx: Receiver<Block>,
    spent: SyncSender<Vec<u8>>,
    pool: &'scope FramePool,
    out: SyncSender<Compressed>,
) -> Vec<std::thread::ScopedJoinHandle<'scope, Result<()>>> {
    let input = Arc::new(Mutex::new(Input {
        rx,
        next: 0,
        done: false,
    }));
    (0..workers.max(1))
        .map(|_| {
            let (input, spent, out) = (input.clone(), spent.clone(), out.clone());
            scope.spawn(move || {
                let result = work(&input, level, &spent, pool, &out);
                if result.is_err() {
                    if let Ok(mut i) = input.lock() {
                        i.done = true;
                    }
                }
                result
            })
        })
        .collect()
}

fn work(
    input: &Mutex<Input>,
    level: i32,
    spent: &SyncSender<Vec<u8>>,
    pool: &FramePool,
    out: &SyncSender<Compressed>,
) -> Result<()> {
    let mut zstd = zstd::bulk::Compressor::new(level).map_err(|e| Error::io("starting zstd", e))?;
    let aborted = |_| Error::PipelineAborted;
    loop {
        let (seq, block) = {
            let mut i = input.lock().map_err(|_| Error::PipelineAborted)?;
            if i.done {
                return Ok(());
            }
            match i.rx.recv() {
                Ok(Block::Data(block)) => {
                    i.next += 1;
                    (i.next - 1, block)
                }
                Ok(Block::End) => {
                    i.done = true;
                    return out.send(Compressed::End(i.next)).map_err(aborted);
                }
                Err(_) => return Err(Error::PipelineAborted),
            }
        };
        let mut frame = pool.take(zstd::zstd_safe::compress_bound(FRAME_INPUT));
        zstd.compress_to_buffer(&block, &mut frame)
            .map_err(|e| Error::io("compressing", e))?;
        let _ = spent.try_send(block);
        out.send(Compressed::Frame(seq, frame)).map_err(aborted)?;
    }
}

/// The sealer's side: takes frames as the workers finish them and gives them back in stream
/// order. At most one frame per worker plus the queue waits here.
pub struct InOrder {
    rx: Receiver<Compressed>,
    waiting: BTreeMap<u64, Vec<u8>>,
    next: u64,
    end: Option<u64>,
}

impl InOrder {
    pub fn new(rx: Receiver<Compressed>) -> Self {
        InOrder {
            rx,
            waiting: BTreeMap::new(),
            next: 0,
            end: None,
        }
    }

    /// The next frame of the stream; None after the last. A worker that stopped before the
    /// end (it failed) is an aborted pipeline: its own error says why.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if let Some(frame) = self.waiting.remove(&self.next) {
                self.next += 1;
                return Ok(Some(frame));
            }
            if self.end == Some(self.next) {
                return Ok(None);
            }
            match self.rx.recv() {
                Ok(Compressed::Frame(seq, frame)) => {
                    self.waiting.insert(seq, frame);
                }
                Ok(Compressed::End(n)) => self.end = Some(n),
                Err(_) => return Err(Error::PipelineAborted),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    fn collect(mut frames: InOrder) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        while let Some(f) = frames.next_frame()? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn frames_come_back_in_stream_order_whatever_order_they_finish_in() {
        let (tx, rx) = sync_channel(8);
        tx.send(Compressed::End(4)).unwrap();
        for seq in [2u64, 0, 3, 1] {
            tx.send(Compressed::Frame(seq, vec![seq as u8])).unwrap();
        }
        drop(tx);
        let got: Vec<u8> = collect(InOrder::new(rx)).unwrap().concat();
        assert_eq!(got, [0, 1, 2, 3]);
    }

    #[test]
    fn a_frame_that_never_comes_aborts_the_stream() {
        let (tx, rx) = sync_channel(8);
        tx.send(Compressed::Frame(0, vec![0])).unwrap();
        tx.send(Compressed::Frame(2, vec![2])).unwrap();
        tx.send(Compressed::End(3)).unwrap();
        drop(tx);
        assert!(matches!(
            collect(InOrder::new(rx)),
            Err(Error::PipelineAborted)
        ));
    }

    #[test]
    fn workers_compress_every_block_into_frames_that_decode_as_one_stream() {
        let blocks: Vec<Vec<u8>> = (0..40u32)
            .map(|i| {
                let len = if i == 39 { 1000 } else { FRAME_INPUT };
                (0..len)
                    .map(|j| (j as u32 * (i % 7 + 1) / 5) as u8)
                    .collect()
            })
            .collect();
        let pool = FramePool::default();
        let (tar_tx, tar_rx) = sync_channel(3);
        let (spent, _free) = sync_channel(8);
        let (frame_tx, frame_rx) = sync_channel(3);
        let frames = std::thread::scope(|s| {
            let workers = spawn_workers(s, 3, 3, tar_rx, spent, &pool, frame_tx);
            let feeder = s.spawn(|| {
                for b in &blocks {
                    tar_tx.send(Block::Data(b.clone())).unwrap();
                }
                tar_tx.send(Block::End).unwrap();
            });
            let frames = collect(InOrder::new(frame_rx)).unwrap();
            feeder.join().unwrap();
            for w in workers {
                w.join().unwrap().unwrap();
            }
            frames
        });
        assert_eq!(frames.len(), blocks.len());
        let stream = frames.concat();
        assert!(stream.len() < blocks.concat().len() / 4, "compressed");
        assert_eq!(zstd::decode_all(&stream[..]).unwrap(), blocks.concat());
    }
}
