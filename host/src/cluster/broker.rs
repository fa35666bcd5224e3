//! The daemons' shared state, kept by NATS JetStream (nothing home-made):
//!
//! - **membership**: KV bucket `couchvault_nodes`, one entry per daemon, written at every
//!   heartbeat; the bucket's max age removes the entry of a daemon that stopped beating;
//! - **leadership**: KV bucket `couchvault_leader`, key `coordinator`, taken with a create
//!   (only when absent) and renewed with a compare-and-set on its revision; the bucket's max
//!   age ends a lease its holder stopped renewing, and the next `try_lead` wins it;
//! - **job states and plans**: KV bucket `couchvault_jobs`, kept a week;
//! - **what is too big for one message** (a plan or a job past half of the server's
//!   `max_payload`, 1 MiB by default): object store bucket `couchvault_large`, kept a week,
//!   chunked and checked (SHA-256) by JetStream; the record or job message holds a
//!   reference to it (`{"couchvault_large": 1, "object", "size"}`);
//! - **work**: stream `COUCHVAULT_JOBS` (work-queue retention: a job is removed when
//!   acknowledged), subject `couchvault.jobs.<node>`, one durable pull consumer per node; a job
//!   not acknowledged within the ack wait (its agent died) is delivered again. Publishing
//!   carries the job id as `Nats-Msg-Id`, so a coordinator that publishes again after a
//!   takeover does not queue a job twice.
//!
//! Every record is JSON with a version field `v`.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream, AckKind};
use futures_util::StreamExt;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

const NODES: &str = "couchvault_nodes";
const LEADER: &str = "couchvault_leader";
const LEADER_KEY: &str = "coordinator";
const RECORDS: &str = "couchvault_jobs";
/// How long job states and plans are kept.
const RECORDS_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
const LARGE: &str = "couchvault_large";
const JOBS: &str = "COUCHVAULT_JOBS";
const JOB_SUBJECTS: &str = "couchvault.jobs.*";

#[derive(Debug, thiserror::Error)]
#[error("NATS broker {url}: {what}: {reason} (is nats-server running with JetStream? `bash scripts/nats.sh start NAME PORT`)")]
pub struct BrokerError {
    pub url: String,
    pub what: String,
    pub reason: String,
}

/// How long things last on the broker. Chosen by the operator (`[cluster]` in the config);
/// every daemon of a cluster must use the same.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// A daemon's entry lives this long after its last heartbeat (beat at a third of it).
    pub node_ttl: Duration,
    /// A coordinator's lease lives this long after its last renewal (renew at a third).
    pub lease: Duration,
    /// A job not acknowledged (nor marked in progress) for this long is delivered again.
    pub ack_wait: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            node_ttl: Duration::from_secs(15),
            lease: Duration::from_secs(15),
            ack_wait: Duration::from_secs(60),
        }
    }
}

/// A daemon as it registers: the CouchDB node it serves and where its API is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub v: u32,
    /// CouchDB node name (`couchdb@10.0.0.1`).
    pub node: String,
    /// The daemon's API, for operators and the dashboard.
    pub daemon: String,
    /// A fresh id per daemon start: tells a restarted daemon from its previous life.
    pub incarnation: String,
}

/// A held coordinator lease.
#[derive(Debug, Clone)]
pub struct Lease {
    pub holder: String,
    revision: u64,
}

/// A job taken from a node's queue; acknowledge it only once its work is committed.
pub struct Delivery<T> {
    pub job: T,
    /// 1 on the first delivery, more after an agent died or asked for a retry.
    pub attempt: u64,
    message: jetstream::Message,
}

pub struct Broker {
    url: String,
    js: jetstream::Context,
    nodes: kv::Store,
    leader: kv::Store,
    records: kv::Store,
    large: object_store::ObjectStore,
    /// A record or job longer than this goes into `large`: half the server's max_payload
    /// leaves room for the message's headers.
    inline_max: usize,
    jobs: stream::Stream,
    timings: Timings,
}

/// Why a message's value could not be had.
#[derive(Debug, thiserror::Error)]
enum Undecoded {
    /// Not a value this daemon understands.
    #[error("{0}")]
    Format(String),
    /// The large value it refers to could not be read (now).
    #[error("reading a large value: {0}")]
    Fetch(String),
}

/// What a record or job message holds in place of a value too big for one message.
#[derive(Debug, Serialize, Deserialize)]
struct LargeRef {
    couchvault_large: u32,
    /// Its name in the `couchvault_large` object store: unique per write, so that a reader
    /// never sees a reference to an object being replaced.
    object: String,
    size: u64,
}

/// A KV key or subject token from a CouchDB node name (`couchdb@127.0.0.1`): letters,
/// digits, `-` and `_` stay, every other byte is `=XX`.
pub fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

impl Broker {
    /// Connects and makes sure the buckets and the stream exist.
    pub async fn connect(url: &str, timings: Timings) -> Result<Broker, BrokerError> {
        let err = |what: &str| {
            let (url, what) = (url.to_string(), what.to_string());
            move |e: &dyn std::fmt::Display| BrokerError {
                url: url.clone(),
                what: what.clone(),
                reason: e.to_string(),
            }
        };
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| err("connecting")(&e))?;
        let inline_max = client.server_info().max_payload.max(1024) / 2;
        let js = jetstream::new(client);
        let nodes = bucket(&js, NODES, timings.node_ttl)
            .await
            .map_err(|e| err("opening the node registry")(&e))?;
        let leader = bucket(&js, LEADER, timings.lease)
            .await
            .map_err(|e| err("opening the leader lease")(&e))?;
        let records = bucket(&js, RECORDS, RECORDS_AGE)
            .await
            .map_err(|e| err("opening the job states")(&e))?;
        let large = objects(&js, LARGE, RECORDS_AGE)
            .await
            .map_err(|e| err("opening the store of large records")(&e))?;
        let jobs = js
            .get_or_create_stream(stream::Config {
                name: JOBS.into(),
                subjects: vec![JOB_SUBJECTS.into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| err("opening the job stream")(&e))?;
        Ok(Broker {
            url: url.to_string(),
            js,
            nodes,
            leader,
            records,
            large,
            inline_max,
            jobs,
            timings,
        })
    }

    /// `value` as a message: its JSON, or a reference to it stored in `large` when too big.
    async fn encode<T: Serialize>(
        &self,
        name: &str,
        value: &T,
    ) -> Result<bytes::Bytes, BrokerError> {
        let bytes = json(value);
        if bytes.len() <= self.inline_max {
            return Ok(bytes);
        }
        let object = format!("{name}.{}", ulid::Ulid::new());
        let meta = object_store::ObjectMetadata {
            name: object.clone(),
            chunk_size: Some(self.inline_max),
            ..Default::default()
        };
        self.large
            .put(meta, &mut bytes.as_ref())
            .await
            .map_err(|e| self.error(format!("storing {name} ({} bytes)", bytes.len()), e))?;
        Ok(json(&LargeRef {
            couchvault_large: 1,
            object,
            size: bytes.len() as u64,
        }))
    }

    /// The reference `bytes` holds, if it is one.
    fn reference(bytes: &[u8]) -> Option<LargeRef> {
        serde_json::from_slice::<LargeRef>(bytes).ok()
    }

    /// A message's value: its JSON, or the large value it refers to.
    async fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, Undecoded> {
        let Some(r) = Self::reference(bytes) else {
            return parse(bytes).map_err(|e| Undecoded::Format(e.to_string()));
        };
        use tokio::io::AsyncReadExt;
        let fetch = |e: &dyn std::fmt::Display| Undecoded::Fetch(format!("{}: {e}", r.object));
        let mut object = self.large.get(&r.object).await.map_err(|e| fetch(&e))?;
        let mut whole = Vec::with_capacity(r.size as usize);
        // JetStream checks the object's SHA-256 as it ends.
        object
            .read_to_end(&mut whole)
            .await
            .map_err(|e| fetch(&e))?;
        if whole.len() as u64 != r.size {
            return Err(fetch(&format!("{} bytes, not {}", whole.len(), r.size)));
        }
        parse(&whole).map_err(|e| Undecoded::Format(e.to_string()))
    }

    pub fn timings(&self) -> Timings {
        self.timings
    }

    fn error(&self, what: impl Into<String>, reason: impl std::fmt::Display) -> BrokerError {
        BrokerError {
            url: self.url.clone(),
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// Registers (or refreshes) a daemon: call at least every `node_ttl / 3`.
    pub async fn heartbeat(&self, record: &NodeRecord) -> Result<(), BrokerError> {
        self.nodes
            .put(token(&record.node), json(record))
            .await
            .map_err(|e| self.error(format!("heartbeat of {}", record.node), e))?;
        Ok(())
    }

    /// The daemons whose heartbeat is younger than `node_ttl`, by node name.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, BrokerError> {
        let fail = |e: &dyn std::fmt::Display| self.error("listing nodes", e);
        let mut keys = self.nodes.keys().await.map_err(|e| fail(&e))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| fail(&e))?;
            // Gone between listing and reading: expired.
            if let Some(bytes) = self.nodes.get(&key).await.map_err(|e| fail(&e))? {
                out.push(parse::<NodeRecord>(&bytes).map_err(|e| fail(&e))?);
            }
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }

    /// Takes the coordinator lease if nobody holds it.
    pub async fn try_lead(&self, holder: &str) -> Result<Option<Lease>, BrokerError> {
        match self
            .leader
            .create(LEADER_KEY, holder.to_string().into())
            .await
        {
            Ok(revision) => Ok(Some(Lease {
                holder: holder.to_string(),
                revision,
            })),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(self.error("taking the coordinator lease", e)),
        }
    }

    /// Renews a held lease; false when it was lost (it expired and another took it).
    pub async fn renew(&self, lease: &mut Lease) -> Result<bool, BrokerError> {
        match self
            .leader
            .update(LEADER_KEY, lease.holder.clone().into(), lease.revision)
            .await
        {
            Ok(revision) => {
                lease.revision = revision;
                Ok(true)
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(self.error("renewing the coordinator lease", e)),
        }
    }

    /// Who holds the lease now, if anyone.
    pub async fn leader(&self) -> Result<Option<String>, BrokerError> {
        let v = self
            .leader
            .get(LEADER_KEY)
            .await
            .map_err(|e| self.error("reading the coordinator lease", e))?;
        Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Gives the lease up (a clean stop), if still held.
    pub async fn resign(&self, lease: Lease) -> Result<(), BrokerError> {
        match self
            .leader
            .delete_expect_revision(LEADER_KEY, Some(lease.revision))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => Ok(()),
            Err(e) => Err(self.error("giving up the coordinator lease", e)),
        }
    }

    /// Writes a record (a job's state, a plan) under `key`.
    /// A large value it replaces is removed once the new one is in place.
    pub async fn put_record<T: Serialize>(&self, key: &str, value: &T) -> Result<(), BrokerError> {
        let fail = |e: &dyn std::fmt::Display| self.error(format!("writing {key}"), e);
        let before = self.records.get(key).await.map_err(|e| fail(&e))?;
        let bytes = self.encode(key, value).await?;
        self.records.put(key, bytes).await.map_err(|e| fail(&e))?;
        if let Some(old) = before.as_deref().and_then(Self::reference) {
            // Left for the bucket's max age when this fails.
            if let Err(e) = self.large.delete(&old.object).await {
                tracing::debug!(object = %old.object, error = %e, "large record not removed");
            }
        }
        Ok(())
    }

    /// Reads the record under `key`, if any.
    pub async fn record<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, BrokerError> {
        let fail = |e: &dyn std::fmt::Display| self.error(format!("reading {key}"), e);
        match self.records.get(key).await.map_err(|e| fail(&e))? {
            Some(b) => Ok(Some(self.decode(&b).await.map_err(|e| fail(&e))?)),
            None => Ok(None),
        }
    }

    /// Queues `job` for `node`'s agent. The same `id` within two minutes is queued once.
    pub async fn dispatch<T: Serialize>(
        &self,
        node: &str,
        id: &str,
        job: &T,
    ) -> Result<(), BrokerError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        let fail =
            |e: &dyn std::fmt::Display| self.error(format!("queueing job {id} for {node}"), e);
        let payload = self.encode(id, job).await?;
        self.js
            .publish_with_headers(format!("couchvault.jobs.{}", token(node)), headers, payload)
            .await
            .map_err(|e| fail(&e))?
            .await
            .map_err(|e| fail(&e))?;
        Ok(())
    }

    /// The next job queued for `node`, waiting up to `wait` for one.
    pub async fn next_job<T: DeserializeOwned>(
        &self,
        node: &str,
        wait: Duration,
    ) -> Result<Option<Delivery<T>>, BrokerError> {
        let fail = |e: &dyn std::fmt::Display| self.error(format!("taking a job for {node}"), e);
        let name = format!("agent_{}", token(node));
        let consumer: consumer::PullConsumer = self
            .jobs
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: format!("couchvault.jobs.{}", token(node)),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.timings.ack_wait,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| fail(&e))?;
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| fail(&e))?;
        let Some(message) = batch.next().await else {
            return Ok(None);
        };
        let message = message.map_err(|e| fail(&e))?;
        let attempt = message.info().map_err(|e| fail(&e))?.delivered.max(1) as u64;
        match self.decode::<T>(&message.payload).await {
            Ok(job) => Ok(Some(Delivery {
                job,
                attempt,
                message,
            })),
            Err(e @ Undecoded::Fetch(_)) => {
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                Err(fail(&e))
            }
            Err(Undecoded::Format(e)) => {
                // Not a job this daemon understands: never deliver it again.
                let _ = message.ack_with(AckKind::Term).await;
                Err(fail(&format!("job of an unknown format: {e}")))
            }
        }
    }
}

impl<T> Delivery<T> {
    /// Still working: restarts the ack wait.
    pub async fn progress(&self) -> Result<(), async_nats::Error> {
        self.message.ack_with(AckKind::Progress).await
    }

    /// Done and committed: the job leaves the queue.
    pub async fn done(self) -> Result<(), async_nats::Error> {
        self.message.double_ack().await
    }

    /// Not now: delivered again after `delay`.
    pub async fn retry_after(self, delay: Duration) -> Result<(), async_nats::Error> {
        self.message.ack_with(AckKind::Nak(Some(delay))).await
    }
}

/// Opens a KV bucket, creating its stream as `kv::Config` would. The client's own
/// `create_key_value` first reads the account's limits in a shape Debian's nats-server 2.9
/// does not answer in; the stream it creates is this one.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
) -> Result<kv::Store, Box<dyn std::error::Error + Send + Sync>> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        duplicate_window: max_age.min(Duration::from_secs(120)),
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    })
    .await?;
    Ok(js.get_key_value(name).await?)
}

/// Opens an object store bucket, creating its stream as `object_store::Config` would (as
/// [`bucket`], without asking for the account's limits).
async fn objects(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
) -> Result<object_store::ObjectStore, Box<dyn std::error::Error + Send + Sync>> {
    if let Ok(store) = js.get_object_store(name).await {
        return Ok(store);
    }
    js.get_or_create_stream(stream::Config {
        name: format!("OBJ_{name}"),
        subjects: vec![format!("$O.{name}.C.>"), format!("$O.{name}.M.>")],
        max_age,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        allow_direct: true,
        ..Default::default()
    })
    .await?;
    Ok(js.get_object_store(name).await?)
}

fn json<T: Serialize>(v: &T) -> bytes::Bytes {
    // Serializing our own structs of strings and numbers cannot fail.
    serde_json::to_vec(v).unwrap_or_default().into()
}

fn parse<T: DeserializeOwned>(b: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(b)
}
