//! One document revision as a `multipart/related` body (its JSON, then each attachment's
//! stored bytes) read while it is sent: attachments come chunk by chunk from the shard
//! file, so a revision with a gigabyte of attachments costs a chunk of memory, not a
//! gigabyte. gzip-encoded attachments go encoded, as CouchDB stores them (the replicator's
//! way), and are inflated on the side only to check the length they record.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;

use super::couchfile::{AttChunks, AttInfo, CouchFile};

/// The body; `len` is known before it is read (it is what the attachments record, and
/// reading fails when the file holds anything else).
pub struct MultipartBody {
    pending: Vec<u8>,
    at: usize,
    parts: VecDeque<Part>,
    len: u64,
}

enum Part {
    Bytes(Vec<u8>),
    Att(Box<AttStream>),
}

struct AttStream {
    chunks: AttChunks<Arc<CouchFile>>,
    /// For a gzip attachment: its inflated bytes counted, to check its recorded length.
    inflate: Option<flate2::write::GzDecoder<Counter>>,
    att_len: u64,
    name: String,
}

impl MultipartBody {
    /// `json` is the revision with each of `atts` as `"follows": true`, in that order
    /// (see [`follows_json`]).
    pub fn new(
        boundary: &str,
        json: String,
        file: &Arc<CouchFile>,
        atts: &[AttInfo],
    ) -> MultipartBody {
        let mut parts = VecDeque::new();
        let mut head = format!("--{boundary}\r\nContent-Type: application/json\r\n\r\n");
        head.push_str(&json);
        parts.push_back(Part::Bytes(head.into_bytes()));
        for att in atts {
            parts.push_back(Part::Bytes(
                format!("\r\n--{boundary}\r\n\r\n").into_bytes(),
            ));
            parts.push_back(Part::Att(Box::new(AttStream {
                chunks: AttChunks::new(Arc::clone(file), att.clone()),
                inflate: (att.encoding == "gzip").then(|| {
                    flate2::write::GzDecoder::new(Counter {
                        n: 0,
                        most: att.att_len,
                    })
                }),
                att_len: att.att_len,
                name: att.name.clone(),
            })));
        }
        parts.push_back(Part::Bytes(format!("\r\n--{boundary}--").into_bytes()));
        let len = parts
            .iter()
            .map(|p| match p {
                Part::Bytes(b) => b.len() as u64,
                Part::Att(a) => a.chunks.stored_len(),
            })
            .sum();
        MultipartBody {
            pending: Vec::new(),
            at: 0,
            parts,
            len,
        }
    }

    pub fn content_length(&self) -> u64 {
        self.len
    }
}

/// The JSON of an attachment sent as a part: its lengths and encoding as stored.
pub fn follows_json(att: &AttInfo, out: &mut String) {
    out.push_str(&format!(r#","length":{},"follows":true"#, att.att_len));
    if att.encoding == "gzip" {
        out.push_str(&format!(
            r#","encoding":"gzip","encoded_length":{}"#,
            att.disk_len
        ));
    }
}

impl AttStream {
    /// The next stored chunk; `None` at the end, once everything checked out.
    fn next(&mut self) -> io::Result<Option<Vec<u8>>> {
        match self.chunks.next() {
            Some(Ok(bytes)) => {
                if let Some(d) = self.inflate.as_mut() {
                    d.write_all(&bytes).map_err(|e| self.bad(e))?;
                }
                Ok(Some(bytes))
            }
            Some(Err(e)) => Err(io::Error::other(e.to_string())),
            None => {
                if let Some(d) = self.inflate.take() {
                    let counted = d.finish().map_err(|e| self.bad(e))?.n;
                    if counted != self.att_len {
                        return Err(self.bad(format!(
                            "inflates to {counted} bytes, it records {}",
                            self.att_len
                        )));
                    }
                }
                Ok(None)
            }
        }
    }

    fn bad(&self, why: impl std::fmt::Display) -> io::Error {
        io::Error::other(format!("attachment '{}': {why}", self.name))
    }
}

impl Read for MultipartBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.pending.len() {
            let next = match self.parts.front_mut() {
                None => return Ok(0),
                Some(Part::Bytes(b)) => {
                    let b = std::mem::take(b);
                    self.parts.pop_front();
                    b
                }
                Some(Part::Att(a)) => match a.next()? {
                    Some(b) => b,
                    None => {
                        self.parts.pop_front();
                        continue;
                    }
                },
            };
            self.pending = next;
            self.at = 0;
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Counts inflated bytes, refusing more than an attachment records (a gzip bomb stops
/// there).
struct Counter {
    n: u64,
    most: u64,
}

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.n += buf.len() as u64;
        if self.n > self.most {
            return Err(io::Error::other(format!(
                "inflates to more than the {} bytes it records",
                self.most
            )));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_stops_past_the_recorded_length() {
        let mut c = Counter { n: 0, most: 4 };
        assert!(c.write(b"abcd").is_ok());
        assert!(c.write(b"e").is_err());
    }
}
