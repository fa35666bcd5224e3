//! Streamed segmented upload to a Static Large Object: the stream is cut into segments,
//! several PUT at once by worker threads (each retried on its own and checked against
//! Swift's ETag), then the SLO manifest (nested past 1,000 segments) is written.
//!
//! Memory: at most (segments in flight + 1) × segment size.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use md5::{Digest, Md5};
use reqwest::blocking::Response;
use reqwest::Method;
use serde::Serialize;

use super::{check, what, Client};
use crate::store::{LargeUpload, StoreError};

/// Swift's limit of segments per manifest.
const MAX_MANIFEST_SEGMENTS: usize = 1000;

pub fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

/// Swift's ETag (quoted for large objects) must be the MD5 we computed.
pub fn check_etag(
    resp: &Response,
    md5: &str,
    container: &str,
    object: &str,
) -> Result<(), StoreError> {
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_matches('"')
        .to_string();
    if etag != md5 {
        return Err(StoreError::Http {
            what: format!("PUT {container}/{object}"),
            status: resp.status().as_u16(),
            detail: format!(
                "Swift stored ETag '{etag}' but the data's MD5 is {md5}: corrupted in transit"
            ),
        });
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
struct ManifestEntry {
    path: String,
    etag: String,
    size_bytes: u64,
}

pub struct SegmentedUpload {
    client: Arc<Client>,
    container: String,
    segments: String,
    object: String,
    headers: Vec<(String, String)>,
    buf: Vec<u8>,
    next: usize,
    tx: Option<SyncSender<(usize, Bytes)>>,
    workers: Vec<JoinHandle<()>>,
    done: Arc<Mutex<Vec<(usize, ManifestEntry)>>>,
    failed: Arc<Mutex<Option<StoreError>>>,
}

impl SegmentedUpload {
    pub fn start(
        client: Arc<Client>,
        container: String,
        segments: String,
        object: String,
        labels: &[(&str, &str)],
    ) -> Self {
        let in_flight = client.settings.segments_in_flight.max(1);
        // A rendezvous channel: a full segment waits until a worker is free, so at most
        // `in_flight` segments are uploading while the next one fills.
        let (tx, rx) = sync_channel::<(usize, Bytes)>(0);
        let rx = Arc::new(Mutex::new(rx));
        let done = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(None));
        let workers = (0..in_flight)
            .map(|_| {
                let (client, rx, done, failed) =
                    (client.clone(), rx.clone(), done.clone(), failed.clone());
                let (seg_container, object) = (segments.clone(), object.clone());
                std::thread::spawn(move || {
                    worker(&client, &rx, &seg_container, &object, &done, &failed)
                })
            })
            .collect();
        let headers = labels
            .iter()
            .map(|(k, v)| (format!("X-Object-Meta-Couchvault-{k}"), v.to_string()))
            .collect();
        SegmentedUpload {
            buf: Vec::with_capacity(client.settings.segment_size),
            client,
            container,
            segments,
            object,
            headers,
            next: 0,
            tx: Some(tx),
            workers,
            done,
            failed,
        }
    }

    fn failure(&self) -> Option<StoreError> {
        self.failed.lock().expect("lock").take()
    }

    fn ship(&mut self) -> Result<(), StoreError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let seg = std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(self.client.settings.segment_size),
        );
        let tx = self.tx.as_ref().expect("upload still open");
        tx.send((self.next, Bytes::from(seg))).map_err(|_| {
            self.failure()
                .unwrap_or(StoreError::Config("segment workers stopped".into()))
        })?;
        self.next += 1;
        Ok(())
    }

    /// PUTs an SLO manifest and returns its ETag (the MD5 of its segments' ETags).
    fn put_manifest(
        &self,
        container: &str,
        object: &str,
        entries: &[ManifestEntry],
        with_labels: bool,
    ) -> Result<String, StoreError> {
        let body = Bytes::from(serde_json::to_vec(entries).expect("manifest serializes"));
        let client = &self.client;
        let resp = client.send(Method::PUT, container, object, &|r| {
            let mut r = r
                .timeout(client.settings.request_timeout)
                .query(&[("multipart-manifest", "put")])
                .body(body.clone());
            if with_labels {
                for (k, v) in &self.headers {
                    r = r.header(k, v);
                }
            }
            r
        })?;
        check(resp, &format!("PUT manifest {container}/{object}"))?;
        let concat: String = entries.iter().map(|e| e.etag.as_str()).collect();
        Ok(md5_hex(concat.as_bytes()))
    }
}

fn worker(
    client: &Client,
    rx: &Mutex<Receiver<(usize, Bytes)>>,
    seg_container: &str,
    object: &str,
    done: &Mutex<Vec<(usize, ManifestEntry)>>,
    failed: &Mutex<Option<StoreError>>,
) {
    loop {
        let next = rx.lock().expect("lock").recv();
        let Ok((index, data)) = next else { return };
        if failed.lock().expect("lock").is_some() {
            continue; // drain: the upload has already failed
        }
        let name = format!("{object}/{index:08}");
        let md5 = md5_hex(&data);
        let result = client
            .send(Method::PUT, seg_container, &name, &|r| {
                r.timeout(client.settings.request_timeout)
                    .header("ETag", &md5)
                    .body(data.clone())
            })
            .and_then(|resp| check(resp, &what(&Method::PUT, seg_container, &name)))
            .and_then(|resp| super::upload::check_etag(&resp, &md5, seg_container, &name));
        match result {
            Ok(()) => done.lock().expect("lock").push((
                index,
                ManifestEntry {
                    path: format!("/{seg_container}/{name}"),
                    etag: md5,
                    size_bytes: data.len() as u64,
                },
            )),
            Err(e) => {
                failed.lock().expect("lock").get_or_insert(e);
            }
        }
    }
}

impl LargeUpload for SegmentedUpload {
    fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        let size = self.client.settings.segment_size;
        while !data.is_empty() {
            let n = (size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == size {
                self.ship()?;
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<u64, StoreError> {
        if !self.buf.is_empty() || self.next == 0 {
            self.ship()?;
        }
        drop(self.tx.take());
        for w in std::mem::take(&mut self.workers) {
            let _ = w.join();
        }
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let mut done = std::mem::take(&mut *self.done.lock().expect("lock"));
        done.sort_by_key(|(i, _)| *i);
        if done.len() != self.next {
            return Err(StoreError::Config(format!(
                "{} of {} segments were uploaded",
                done.len(),
                self.next
            )));
        }
        let entries: Vec<ManifestEntry> = done.into_iter().map(|(_, e)| e).collect();
        let size = entries.iter().map(|e| e.size_bytes).sum();
        let top = if entries.len() <= MAX_MANIFEST_SEGMENTS {
            entries
        } else {
            // Nested: sub-manifests of up to 1,000 segments each, in the segments container.
            let mut subs = Vec::new();
            for (i, group) in entries.chunks(MAX_MANIFEST_SEGMENTS).enumerate() {
                let name = format!("{}/manifest-{i:04}", self.object);
                let etag = self.put_manifest(&self.segments, &name, group, false)?;
                subs.push(ManifestEntry {
                    path: format!("/{}/{name}", self.segments),
                    etag,
                    size_bytes: group.iter().map(|e| e.size_bytes).sum(),
                });
            }
            subs
        };
        self.put_manifest(&self.container, &self.object, &top, true)?;
        Ok(size)
    }
}

impl Drop for SegmentedUpload {
    fn drop(&mut self) {
        // Abandoned: stop feeding the workers; what they uploaded is left for `gc`.
        drop(self.tx.take());
    }
}
