//! zstd frames on worker threads of the pipeline's own, both ways. A backup cuts the tar
//! stream into pieces of [`FRAME_INPUT`] bytes; whichever worker is free compresses the next
//! one into an independent zstd frame, and the sealer puts the frames back in order
//! ([`InOrder`]). A restore of such a backup cuts the decrypted stream at frame boundaries
//! ([`Framer`]) and decompresses frames the same way. Concatenated zstd frames are one zstd
//! stream (RFC 8878, section 3.1): older couchvault versions and the `zstd` command read it as
//! they read one frame.
//!
//! Why not zstd's multithreaded mode: its jobs are 8 MiB at level 3 with several in flight per
//! worker, most of a backup's memory (99 MiB peak RSS against 27 MiB here), and on data that is
//! mostly compressed already (CouchDB attachments) it kept fewer cores busy. Measured in
//! docs/PERFORMANCE.md.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use super::{Block, BlockReader};
use crate::error::{Error, Result};

/// Bytes of tar stream per zstd frame. Frames are compressed independently, so a match cannot
/// reach back into the previous frame: against one long frame this stores 0.5-3% more
/// (real CouchDB data / synthetic JSON) and keeps each worker's input, output and tables small.
pub(super) const FRAME_INPUT: usize = 512 << 10;

/// The largest frame content a restore decompresses on its workers (more than any backup
/// writes, fewer than would let a damaged header ask for much memory).
pub(super) const MAX_FRAME_CONTENT: usize = 8 << 20;

/// What the workers send on: a frame and its place in the stream, or the number of frames
/// once the input has ended.
pub(super) enum Sequenced {
    Frame(u64, Vec<u8>),
    End(u64),
}

/// One worker's half of the work: where inputs come from (shared, read under a lock, in
/// stream order) and what turns an input into an output.
pub(super) trait Job: Send {
    type Source: Send;
    /// The next input; None at the end.
    fn next(source: &mut Self::Source) -> Result<Option<Vec<u8>>>;
    /// Fills `out` (empty) from `input`.
    fn run(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<()>;
    /// Hands a spent input back for reuse.
    fn spent(&self, input: Vec<u8>);
}

/// The inputs the workers take turns reading, numbered as they are taken.
struct Input<S> {
    source: S,
    next: u64,
    /// The end was read, or a worker failed: the others stop.
    done: bool,
}

/// Spent frame buffers, handed back by whoever used the frame for the workers to fill again.
#[derive(Default)]
pub(super) struct FramePool(Mutex<Vec<Vec<u8>>>);

impl FramePool {
    fn take(&self) -> Vec<u8> {
        let spare = self.0.lock().ok().and_then(|mut free| free.pop());
        let mut v = spare.unwrap_or_default();
        v.clear();
        v
    }

    pub(super) fn give(&self, v: Vec<u8>) {
        if let Ok(mut free) = self.0.lock() {
            // Only as many as there can be frames in flight: the rest are freed.
            if free.len() < 4 {
                free.push(v);
            }
        }
    }
}

/// Runs one thread per job in `scope` over the inputs of `source`, sending outputs to `out`.
/// Returns their handles; each ends with the first error it met. When the last one ends,
/// `source` is dropped, so a producer still writing into it sees a broken pipe instead of
/// waiting forever.
pub(super) fn spawn_workers<'scope, J: Job + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    jobs: Vec<J>,
    source: J::Source,
    pool: &'scope FramePool,
    out: SyncSender<Sequenced>,
) -> Vec<std::thread::ScopedJoinHandle<'scope, Result<()>>> {
    let input = Arc::new(Mutex::new(Input {
        source,
        next: 0,
        done: false,
    }));
    jobs.into_iter()
        .map(|mut job| {
            let (input, out) = (input.clone(), out.clone());
            scope.spawn(move || {
                let result = work(&mut job, &input, pool, &out);
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

/// Joins every worker; the error kept is a cause, not a worker that only saw another stop.
pub(super) fn join_workers(
    workers: Vec<std::thread::ScopedJoinHandle<'_, Result<()>>>,
) -> Result<()> {
    let mut result = Ok(());
    for w in workers {
        let joined = w.join().unwrap_or(Err(Error::PipelineAborted));
        result = super::pick_error(result, joined);
    }
    result
}

fn work<J: Job>(
    job: &mut J,
    input: &Mutex<Input<J::Source>>,
    pool: &FramePool,
    out: &SyncSender<Sequenced>,
) -> Result<()> {
    let aborted = |_| Error::PipelineAborted;
    loop {
        let (seq, piece) = {
            let mut i = input.lock().map_err(|_| Error::PipelineAborted)?;
            if i.done {
                return Ok(());
            }
            match J::next(&mut i.source)? {
                Some(piece) => {
                    i.next += 1;
                    (i.next - 1, piece)
                }
                None => {
                    i.done = true;
                    return out.send(Sequenced::End(i.next)).map_err(aborted);
                }
            }
        };
        let mut frame = pool.take();
        job.run(&piece, &mut frame)?;
        job.spent(piece);
        out.send(Sequenced::Frame(seq, frame)).map_err(aborted)?;
    }
}

/// Compresses tar blocks into independent zstd frames.
pub(super) struct Compress {
    zstd: zstd::bulk::Compressor<'static>,
    spent: SyncSender<Vec<u8>>,
}

impl Compress {
    pub(super) fn new(level: i32, spent: SyncSender<Vec<u8>>) -> Result<Self> {
        let zstd = zstd::bulk::Compressor::new(level).map_err(|e| Error::io("starting zstd", e))?;
        Ok(Compress { zstd, spent })
    }
}

impl Job for Compress {
    type Source = Receiver<Block>;

    fn next(source: &mut Self::Source) -> Result<Option<Vec<u8>>> {
        match source.recv() {
            Ok(Block::Data(block)) => Ok(Some(block)),
            Ok(Block::End) => Ok(None),
            Err(_) => Err(Error::PipelineAborted),
        }
    }

    fn run(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<()> {
        out.reserve(zstd::zstd_safe::compress_bound(input.len()));
        self.zstd
            .compress_to_buffer(input, out)
            .map_err(|e| Error::io("compressing", e))?;
        Ok(())
    }

    fn spent(&self, input: Vec<u8>) {
        let _ = self.spent.try_send(input);
    }
}

/// Decompresses the frames a [`Framer`] cuts, each into the size its header declares.
pub(super) struct Decompress<'p> {
    zstd: zstd::bulk::Decompressor<'static>,
    pool: &'p FramePool,
}

impl<'p> Decompress<'p> {
    pub(super) fn new(pool: &'p FramePool) -> Result<Self> {
        let zstd = zstd::bulk::Decompressor::new().map_err(|e| Error::io("starting zstd", e))?;
        Ok(Decompress { zstd, pool })
    }
}

impl<'p> Job for Decompress<'p> {
    type Source = Framer<'p>;

    fn next(source: &mut Framer<'p>) -> Result<Option<Vec<u8>>> {
        source.next_frame().map_err(|e| {
            if e.kind() == io::ErrorKind::BrokenPipe {
                Error::PipelineAborted
            } else {
                Error::io("decompressing the archive", e)
            }
        })
    }

    fn run(&mut self, frame: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let bad = |why: String| Error::io("decompressing the archive", invalid(why));
        let declared = match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(n)) if n <= MAX_FRAME_CONTENT as u64 => n as usize,
            _ => {
                return Err(bad(
                    "a frame does not declare a size this restore allows".into()
                ))
            }
        };
        out.reserve(declared);
        let n = self
            .zstd
            .decompress_to_buffer(frame, out)
            .map_err(|e| Error::io("decompressing the archive", e))?;
        if n != declared {
            return Err(bad(format!(
                "a frame holds {n} bytes where its header says {declared}"
            )));
        }
        Ok(())
    }

    fn spent(&self, frame: Vec<u8>) {
        self.pool.give(frame);
    }
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Cuts a zstd stream into whole frames by walking frame and block headers (RFC 8878,
/// section 3.1.1), without decompressing. Each frame must declare its content size, at most
/// [`MAX_FRAME_CONTENT`]: a frame that does not was not written by [`Compress`].
pub(super) struct Framer<'p> {
    stream: BlockReader,
    pool: &'p FramePool,
}

const FRAME_MAGIC: u32 = 0xFD2F_B528;
/// RFC 8878, 3.1.1.2: no block is larger than 128 KiB.
const MAX_BLOCK: usize = 128 << 10;

impl<'p> Framer<'p> {
    pub(super) fn new(stream: BlockReader, pool: &'p FramePool) -> Self {
        Framer { stream, pool }
    }

    /// The next whole frame; None at the end of the stream.
    fn next_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut frame = self.pool.take();
        let mut magic = [0u8; 4];
        match super::read_full(&mut self.stream, &mut magic)? {
            0 => return Ok(None),
            4 => {}
            _ => return Err(invalid("the stream ends inside a frame header".into())),
        }
        if u32::from_le_bytes(magic) != FRAME_MAGIC {
            return Err(invalid("a zstd frame does not start where one ends".into()));
        }
        frame.extend_from_slice(&magic);
        let descriptor = self.read_into(&mut frame, 1)?[0];
        let single_segment = descriptor & 0x20 != 0;
        let fcs_len = match descriptor >> 6 {
            0 if single_segment => 1,
            0 => 0,
            1 => 2,
            2 => 4,
            _ => 8,
        };
        let dict_len = [0, 1, 2, 4][(descriptor & 3) as usize];
        let window_len = usize::from(!single_segment);
        let rest = window_len + dict_len + fcs_len;
        let fcs = self.read_into(&mut frame, rest)?[window_len + dict_len..].to_vec();
        let mut content = fcs.iter().rev().fold(0u64, |n, b| (n << 8) | u64::from(*b));
        if fcs_len == 2 {
            content += 256;
        }
        if fcs_len == 0 || content > MAX_FRAME_CONTENT as u64 {
            return Err(invalid(
                "a zstd frame does not declare a content size this restore allows".into(),
            ));
        }
        frame.reserve(zstd::zstd_safe::compress_bound(content as usize));
        loop {
            let h = self.read_into(&mut frame, 3)?;
            let header = u32::from(h[0]) | u32::from(h[1]) << 8 | u32::from(h[2]) << 16;
            let last = header & 1 != 0;
            let size = (header >> 3) as usize;
            let body = match (header >> 1) & 3 {
                0 | 2 if size <= MAX_BLOCK => size,
                1 => 1,
                _ => return Err(invalid("a zstd block header is damaged".into())),
            };
            self.read_into(&mut frame, body)?;
            if frame.len() > zstd::zstd_safe::compress_bound(MAX_FRAME_CONTENT) {
                return Err(invalid("a zstd frame is larger than it may be".into()));
            }
            if last {
                break;
            }
        }
        if descriptor & 4 != 0 {
            self.read_into(&mut frame, 4)?;
        }
        Ok(Some(frame))
    }

    /// Appends exactly `n` bytes of the stream to `frame` and returns them.
    fn read_into<'f>(&mut self, frame: &'f mut Vec<u8>, n: usize) -> io::Result<&'f [u8]> {
        let start = frame.len();
        frame.resize(start + n, 0);
        if super::read_full(&mut self.stream, &mut frame[start..])? < n {
            return Err(invalid("the stream ends inside a zstd frame".into()));
        }
        Ok(&frame[start..])
    }
}

/// The consumer's side: takes frames as the workers finish them and gives them back in
/// stream order. At most one frame per worker plus the queue waits here.
pub(super) struct InOrder {
    rx: Receiver<Sequenced>,
    waiting: BTreeMap<u64, Vec<u8>>,
    next: u64,
    end: Option<u64>,
}

impl InOrder {
    pub(super) fn new(rx: Receiver<Sequenced>) -> Self {
        InOrder {
            rx,
            waiting: BTreeMap::new(),
            next: 0,
            end: None,
        }
    }

    /// The next frame of the stream; None after the last. A worker that stopped before the
    /// end (it failed) is an aborted pipeline: its own error says why.
    pub(super) fn next_frame(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if let Some(frame) = self.waiting.remove(&self.next) {
                self.next += 1;
                return Ok(Some(frame));
            }
            if self.end == Some(self.next) {
                return Ok(None);
            }
            match self.rx.recv() {
                Ok(Sequenced::Frame(seq, frame)) => {
                    self.waiting.insert(seq, frame);
                }
                Ok(Sequenced::End(n)) => self.end = Some(n),
                Err(_) => return Err(Error::PipelineAborted),
            }
        }
    }
}

/// The decompressed frames, in order, as one byte stream (the tar stream of a restore).
pub(super) struct FrameReader<'p> {
    frames: InOrder,
    pool: &'p FramePool,
    current: Vec<u8>,
    pos: usize,
}

impl<'p> FrameReader<'p> {
    pub(super) fn new(frames: InOrder, pool: &'p FramePool) -> Self {
        FrameReader {
            frames,
            pool,
            current: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for FrameReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.frames.next_frame() {
                Ok(Some(frame)) => {
                    let spent = std::mem::replace(&mut self.current, frame);
                    self.pool.give(spent);
                    self.pos = 0;
                }
                Ok(None) => return Ok(0),
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "a decompression thread stopped",
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
        tx.send(Sequenced::End(4)).unwrap();
        for seq in [2u64, 0, 3, 1] {
            tx.send(Sequenced::Frame(seq, vec![seq as u8])).unwrap();
        }
        drop(tx);
        let got: Vec<u8> = collect(InOrder::new(rx)).unwrap().concat();
        assert_eq!(got, [0, 1, 2, 3]);
    }

    #[test]
    fn a_frame_that_never_comes_aborts_the_stream() {
        let (tx, rx) = sync_channel(8);
        tx.send(Sequenced::Frame(0, vec![0])).unwrap();
        tx.send(Sequenced::Frame(2, vec![2])).unwrap();
        tx.send(Sequenced::End(3)).unwrap();
        drop(tx);
        assert!(matches!(
            collect(InOrder::new(rx)),
            Err(Error::PipelineAborted)
        ));
    }

    /// Blocks of every kind zstd emits (compressed, raw for random bytes, RLE for runs),
    /// uneven lengths, the last one short.
    fn blocks() -> Vec<Vec<u8>> {
        let mut seed = 7u64;
        (0..24u32)
            .map(|i| {
                let len = if i == 23 {
                    1000
                } else {
                    FRAME_INPUT - (i as usize * 4099) % 9000
                };
                (0..len)
                    .map(|j| match i % 3 {
                        0 => (j as u32 * (i % 7 + 1) / 5) as u8,
                        1 => {
                            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                            (seed >> 56) as u8
                        }
                        _ => 42,
                    })
                    .collect()
            })
            .collect()
    }

    /// Compresses `blocks` with `workers` threads; returns the frames in order.
    fn compress(blocks: &[Vec<u8>], workers: usize) -> Vec<Vec<u8>> {
        let pool = FramePool::default();
        let (tar_tx, tar_rx) = sync_channel(workers);
        let (spent, _free) = sync_channel(8);
        let (frame_tx, frame_rx) = sync_channel(workers);
        let jobs = (0..workers)
            .map(|_| Compress::new(3, spent.clone()).unwrap())
            .collect();
        std::thread::scope(|s| {
            let handles = spawn_workers(s, jobs, tar_rx, &pool, frame_tx);
            s.spawn(move || {
                for b in blocks {
                    tar_tx.send(Block::Data(b.clone())).unwrap();
                }
                tar_tx.send(Block::End).unwrap();
            });
            let frames = collect(InOrder::new(frame_rx)).unwrap();
            for h in handles {
                h.join().unwrap().unwrap();
            }
            frames
        })
    }

    /// Decompresses `stream`, fed in blocks of `block` bytes, with `workers` threads.
    fn decompress(stream: &[u8], block: usize, workers: usize) -> Result<Vec<u8>> {
        let pool = FramePool::default();
        let (tx, rx) = sync_channel(4);
        let (spent, _free) = sync_channel(8);
        let (frame_tx, frame_rx) = sync_channel(workers);
        let jobs = (0..workers)
            .map(|_| Decompress::new(&pool).unwrap())
            .collect();
        std::thread::scope(|s| {
            let framer = Framer::new(BlockReader::new(rx, spent), &pool);
            let handles = spawn_workers(s, jobs, framer, &pool, frame_tx);
            s.spawn(move || {
                for b in stream.chunks(block) {
                    if tx.send(Block::Data(b.to_vec())).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Block::End);
            });
            let mut out = Vec::new();
            let read = FrameReader::new(InOrder::new(frame_rx), &pool).read_to_end(&mut out);
            join_workers(handles)?;
            read.map_err(|e| Error::io("reading", e))?;
            Ok(out)
        })
    }

    #[test]
    fn frames_from_several_threads_decode_as_one_stream_and_in_parallel() {
        let blocks = blocks();
        let frames = compress(&blocks, 3);
        assert_eq!(frames.len(), blocks.len());
        let stream = frames.concat();
        assert_eq!(zstd::decode_all(&stream[..]).unwrap(), blocks.concat());
        // Blocks of the decrypted stream cut frames anywhere, headers included.
        for (block, workers) in [(65_537, 2), (1 << 20, 3), (4093, 1), (7, 2)] {
            let out = decompress(&stream, block, workers).unwrap();
            assert!(out == blocks.concat(), "{block} {workers}");
        }
    }

    #[test]
    fn a_stream_the_framer_cannot_cut_is_an_error_not_a_hang() {
        let stream = compress(&blocks(), 2).concat();
        // One frame for the whole stream, without a declared size (what zstd's streaming
        // mode writes, as backups before frame_size did): not for the workers.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        std::io::Write::write_all(&mut enc, &blocks().concat()).unwrap();
        let single = enc.finish().unwrap();
        let mut truncated = stream.clone();
        truncated.truncate(stream.len() - 10);
        let mut garbage = stream.clone();
        garbage.splice(0..0, [1, 2, 3, 4]);
        // The first frame's descriptor: an 8-byte content size, far over the limit.
        let mut huge = stream.clone();
        huge.splice(4..6, [0xC0, 0, 0, 0, 0, 0, 0, 0, 1]);
        for (name, bad) in [
            ("single", single),
            ("truncated", truncated),
            ("garbage", garbage),
            ("huge", huge),
        ] {
            let err = decompress(&bad, 4096, 2).unwrap_err();
            assert!(
                err.to_string().contains("decompressing the archive"),
                "{name}: {err}"
            );
        }
    }
}
