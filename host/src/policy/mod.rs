//! Tenant policies as sandboxed WebAssembly components (wit/policy.wit).
//!
//! One wasmtime `Engine` per process; components are compiled once and cached on disk
//! (keyed by the component's SHA-256 and the engine's compatibility hash). Every evaluation
//! gets a fresh `Store` with a fuel budget, a wall-clock (epoch) deadline, a cap on the sum
//! of all its memories, caps on instances and tables, and WASI with nothing granted: no
//! preopened directories, no environment, no network, clocks stopped at zero, stdout and
//! stderr captured (bounded) into the error message. Imports beyond WASI's cli, io, clocks, random and filesystem
//! interfaces are refused when the policy is loaded.

pub mod floors;
pub mod registry;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ring::digest::{digest, SHA256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

// Exports are async: an evaluation is a future the host can drop at its deadline, even
// while the guest waits in a WASI host call (a sleep, a pollable's `block`).
mod retention_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "retention-policy",
        exports: { default: async },
    });
}
mod protection_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "protection-policy",
        exports: { default: async },
        with: { "couchvault:policy/types": super::retention_world::couchvault::policy::types },
    });
}
/// The worlds of wit/v0.1.0: components built before chains keep working.
mod v1 {
    pub mod retention_world {
        wasmtime::component::bindgen!({
            path: "../wit/v0.1.0",
            world: "retention-policy",
            exports: { default: async },
        });
    }
    pub mod protection_world {
        wasmtime::component::bindgen!({
            path: "../wit/v0.1.0",
            world: "protection-policy",
            exports: { default: async },
        });
    }
    pub use protection_world::couchvault::policy::types as protection;
    pub use retention_world::couchvault::policy::types as retention;
}

pub use retention_world::couchvault::policy::types::{
    BackupInfo, BackupKind, Keep, PrefixCheck, Protection, ProtectionInput, RetentionInput,
};

/// A component's retention export, of the current world or of 0.1.0.
enum RetentionPre {
    Current(retention_world::RetentionPolicyPre<State>),
    V1(v1::retention_world::RetentionPolicyPre<State>),
}

/// A component's protection export, of the current world or of 0.1.0.
enum ProtectionPre {
    Current(protection_world::ProtectionPolicyPre<State>),
    V1(v1::protection_world::ProtectionPolicyPre<State>),
}

/// What a 0.1.0 component sees of a backup: no parent.
fn info_v1(b: &BackupInfo) -> v1::retention::BackupInfo {
    v1::retention::BackupInfo {
        id: b.id.clone(),
        created_at: b.created_at,
        size: b.size,
        kind: b.kind.clone(),
        tags: b.tags.clone(),
        schedule: b.schedule.clone(),
    }
}

/// The line of what a guest printed that says why it stopped: a Python traceback's exception
/// line (the first line after it that is not indented), a Rust panic's location and message,
/// else the first line.
fn guest_said(printed: &str) -> Option<String> {
    let mut lines = printed.lines().filter(|l| !l.trim().is_empty());
    let all: Vec<&str> = lines.clone().collect();
    if lines.any(|l| l.starts_with("Traceback (most recent call last)")) {
        if let Some(exception) = lines.find(|l| !l.starts_with(char::is_whitespace)) {
            return Some(exception.trim().to_string());
        }
    }
    if let Some(i) = all.iter().position(|l| l.contains("panicked at")) {
        let message = all.get(i + 1).map_or("", |l| l.trim());
        return Some(format!("{} {message}", all[i].trim()));
    }
    all.first().map(|l| l.trim().to_string())
}

/// Imports a policy may have: the WIT package's type-only interface, and the WASI
/// interfaces the languages' runtimes import (Rust's std; CPython also imports sockets),
/// linked with nothing granted: no preopened directory, no environment, a stopped clock,
/// and every socket refused before any is made (tcp, udp and name lookup are off).
const ALLOWED_IMPORTS: &[&str] = &[
    "couchvault:policy/types@",
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
];
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Evaluations one engine runs at once; more wait for a slot. The instance pool is sized for
/// this many, so an evaluation never fails for want of one.
pub const CONCURRENT_EVALUATIONS: u32 = 16;
/// Linear memories one policy may have (the Rust, JavaScript and Python ones have one).
const MEMORIES_PER_COMPONENT: u32 = 4;
/// Bytes of each pooled memory that are zeroed with memset and stay mapped when its
/// instance ends, instead of being unmapped and faulted in again by the next: all of a Rust
/// policy's memory. Which memory slots stay warm is bounded by [`WARM_SLOTS`].
const KEEP_RESIDENT: usize = 4 << 20;
/// Idle memory slots kept for the modules that used them last.
const WARM_SLOTS: u32 = 4;
/// Largest `get-random-bytes` answer: bounds what one host call may cost (the default is
/// 64 MiB, tens of milliseconds of host time that no epoch tick interrupts).
const MAX_RANDOM_BYTES: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy '{name}' is not a valid component: {reason}")]
    Invalid { name: String, reason: String },
    #[error("policy '{name}' imports '{import}', which policies are not granted (only WASI cli, io, clocks, random, filesystem and sockets, all empty or refused)")]
    Capability { name: String, import: String },
    #[error("policy '{name}' does not provide {what} (export '{export}' of wit/policy.wit's world '{world}' missing or of the wrong type): {reason}")]
    WrongWorld {
        name: String,
        what: &'static str,
        export: &'static str,
        world: &'static str,
        reason: String,
    },
    #[error("policy '{name}' was stopped: {reason}{output}")]
    Stopped {
        name: String,
        reason: String,
        output: String,
    },
    #[error("policy '{name}' answered with an error: {message}")]
    Refused { name: String, message: String },
    #[error("policy '{name}' gave an unusable answer: {reason}")]
    BadAnswer { name: String, reason: String },
    #[error("policy cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Per-evaluation limits.
///
/// Fuel and deadline grow with the input: a call's budget is the base plus a share per backup
/// it is given (the retention list, the protection chain), counted up to [`MAX_SCALED_ITEMS`].
/// Lowering each record into an interpreted guest (JavaScript, Python) costs far more than
/// into Rust, so a fixed budget would refuse JavaScript policies of large instances, while a
/// larger fixed one would let every hostile guest run longer on small inputs.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Fuel units per call (about 2-4 million per millisecond of work).
    pub fuel: u64,
    /// Fuel added per backup in the input.
    pub fuel_per_backup: u64,
    /// Wall-clock deadline per call.
    pub deadline: Duration,
    /// Deadline added per backup in the input.
    pub deadline_per_backup: Duration,
    /// Sum of all linear memories of the component's instances.
    pub memory_bytes: usize,
    pub max_instances: usize,
    pub max_tables: usize,
    pub max_table_elements: usize,
    /// Bytes of answer (ids, reasons, tags) accepted.
    pub output_bytes: usize,
    /// Bytes of stdout + stderr kept.
    pub log_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 300_000_000,
            fuel_per_backup: 600_000,
            deadline: Duration::from_millis(100),
            deadline_per_backup: Duration::from_micros(300),
            memory_bytes: 64 << 20,
            max_instances: 32,
            max_tables: 32,
            max_table_elements: 100_000,
            output_bytes: 1 << 20,
            log_bytes: 64 << 10,
        }
    }
}

/// Backups beyond this many in one input add no more budget.
pub const MAX_SCALED_ITEMS: usize = 10_000;

/// One call's fuel and deadline: the limits scaled to its input.
#[derive(Debug, Clone, Copy)]
struct Budget {
    fuel: u64,
    deadline: Duration,
    backups: usize,
}

impl Limits {
    fn budget(&self, backups: usize) -> Budget {
        let n = backups.min(MAX_SCALED_ITEMS);
        Budget {
            fuel: self
                .fuel
                .saturating_add(self.fuel_per_backup.saturating_mul(n as u64)),
            deadline: self
                .deadline
                .saturating_add(self.deadline_per_backup.saturating_mul(n as u32)),
            backups,
        }
    }
}

impl Budget {
    /// "300000000 units (for 0 backups)".
    fn what(&self, amount: String) -> String {
        format!(
            "{amount} (its budget for an input of {} backups)",
            self.backups
        )
    }
}

/// Instances, memories, tables and stacks come from a pool sized for
/// [`CONCURRENT_EVALUATIONS`] sandboxes at the limits' caps: instantiation is a slot reset,
/// not fresh mappings and page faults (with the on-demand allocator a third of a Rust
/// policy's evaluation time was the kernel's; docs/PERFORMANCE.md B5). A slot is reset to
/// the module's initial image before reuse, so nothing of one evaluation is seen by the next.
fn pool(limits: &Limits) -> PoolingAllocationConfig {
    let n = CONCURRENT_EVALUATIONS;
    let instances = limits.max_instances as u32;
    let tables = limits.max_tables as u32;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_stacks(n)
        .max_core_instances_per_component(instances)
        .total_core_instances(n * instances)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .total_memories(n * MEMORIES_PER_COMPONENT)
        // Wasmtime reserves 4 GiB of address space per memory; no memory may exceed it.
        .max_memory_size(limits.memory_bytes.min(4 << 30))
        .max_tables_per_component(tables)
        .total_tables(n * tables)
        .table_elements(limits.max_table_elements)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .max_unused_warm_slots(WARM_SLOTS);
    pool
}

/// The clocks a policy sees: stopped at zero. Time is an input (`now`), never a reading, so
/// a policy's answer depends on its input alone.
struct StoppedClock;

impl HostWallClock for StoppedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The store's data: WASI (granting nothing) and the resource limiter.
struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryCap,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps the sum of all memories in a store (a component has several), instances and tables.
struct MemoryCap {
    total: usize,
    cap: usize,
    max_table_elements: usize,
    limits: (usize, usize),
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let next = self.total + desired.saturating_sub(current);
        if next > self.cap {
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} MiB reached (asked for {} MiB in all)",
                self.cap >> 20,
                next >> 20
            )));
        }
        self.total = next;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
    }

    fn instances(&self) -> usize {
        self.limits.0
    }

    fn tables(&self) -> usize {
        self.limits.1
    }

    fn memories(&self) -> usize {
        self.limits.0
    }
}

/// The process's policy runtime.
pub struct PolicyHost {
    shared: Arc<Shared>,
    /// Drives evaluations (and their deadline timers) on the calling thread.
    runtime: tokio::runtime::Runtime,
    /// Set by a job's cancel: an evaluation in progress stops at once.
    cancel: Option<Arc<AtomicBool>>,
    /// What the last evaluation that answered used of its limits.
    last: std::sync::Mutex<Option<Usage>>,
}

/// What one evaluation used of its limits: for sizing budgets (`policy test`, B5).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Usage {
    pub fuel: u64,
    /// Sum of the instances' linear memories at the end.
    pub memory_bytes: usize,
    pub elapsed: Duration,
}

/// What every evaluation in the process shares: the wasmtime engine with its epoch
/// thread, the linker, the compiled-component cache. Built once per process
/// ([`PolicyEngine::new`]); each job or request takes a cheap [`PolicyHost`] from it.
#[derive(Clone)]
pub struct PolicyEngine(Arc<Shared>);

struct Shared {
    engine: Engine,
    linker: Linker<State>,
    cache_dir: PathBuf,
    limits: Limits,
    compiles: AtomicU64,
    /// One permit per sandbox the instance pool holds.
    slots: tokio::sync::Semaphore,
}

/// A loaded policy: compiled, checked, ready to instantiate.
pub struct Policy {
    pub name: String,
    pub sha256: String,
    retention: Option<RetentionPre>,
    protection: Option<ProtectionPre>,
    retention_error: Option<String>,
    protection_error: Option<String>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("sha256", &self.sha256)
            .field("kinds", &self.kinds())
            .finish()
    }
}

impl Policy {
    pub fn has_retention(&self) -> bool {
        self.retention.is_some()
    }
    pub fn has_protection(&self) -> bool {
        self.protection.is_some()
    }
    /// "retention", "protection" or "retention+protection".
    pub fn kinds(&self) -> String {
        let mut k = Vec::new();
        if self.has_retention() {
            k.push("retention");
        }
        if self.has_protection() {
            k.push("protection");
        }
        k.join("+")
    }
}

impl PolicyEngine {
    pub fn new(cache_dir: &Path, limits: Limits) -> Result<PolicyEngine, PolicyError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.consume_fuel(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(512 << 10);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(&limits)));
        let engine = Engine::new(&config).map_err(|e| PolicyError::Invalid {
            name: "(engine)".into(),
            reason: e.to_string(),
        })?;
        // The wall-clock deadline: one ticker for the process's engine.
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match ticker.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => return,
                }
            })
            .map_err(|e| PolicyError::Cache {
                path: cache_dir.to_path_buf(),
                source: e,
            })?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| PolicyError::Invalid {
            name: "(linker)".into(),
            reason: e.to_string(),
        })?;
        Ok(PolicyEngine(Arc::new(Shared {
            engine,
            linker,
            cache_dir: cache_dir.to_path_buf(),
            limits,
            compiles: AtomicU64::new(0),
            slots: tokio::sync::Semaphore::new(CONCURRENT_EVALUATIONS as usize),
        })))
    }

    /// A host for one job or request: its own runtime for the deadline, its own cancel.
    pub fn host(&self) -> Result<PolicyHost, PolicyError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| PolicyError::Cache {
                path: self.0.cache_dir.clone(),
                source: e,
            })?;
        Ok(PolicyHost {
            shared: self.0.clone(),
            runtime,
            cancel: None,
            last: std::sync::Mutex::new(None),
        })
    }
}

impl PolicyHost {
    /// A host on an engine of its own (tools and benchmarks; a process shares one engine).
    pub fn new(cache_dir: &Path, limits: Limits) -> Result<PolicyHost, PolicyError> {
        PolicyEngine::new(cache_dir, limits)?.host()
    }

    /// Evaluations stop (as "cancelled") as soon as `flag` is set.
    pub fn cancel_on(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = Some(flag);
    }

    /// What the last evaluation that answered used: fuel, memory, time.
    pub fn last_usage(&self) -> Option<Usage> {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many components this host has compiled (not loaded from the cache).
    pub fn compiles(&self) -> u64 {
        self.shared.compiles.load(Ordering::Relaxed)
    }

    fn cache_path(&self, sha256: &str) -> PathBuf {
        let mut h = DefaultHasher::new();
        self.shared
            .engine
            .precompile_compatibility_hash()
            .hash(&mut h);
        self.shared
            .cache_dir
            .join(format!("{sha256}-{:016x}.cwasm", h.finish()))
    }

    /// Compiles (or loads from the cache), checks imports and exports.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Policy, PolicyError> {
        let invalid = |reason: String| PolicyError::Invalid {
            name: name.to_string(),
            reason,
        };
        let sha256 = hex::encode(digest(&SHA256, bytes));
        let cached = self.cache_path(&sha256);
        let component = match cached.is_file() {
            // SAFETY: the cache directory is private to couchvault and written only by it,
            // from components this engine compiled.
            true => unsafe { Component::deserialize_file(&self.shared.engine, &cached) }
                .map_err(|e| invalid(format!("cached compilation {}: {e}", cached.display())))?,
            false => {
                if wasmparser_is_core_module(bytes) {
                    return Err(invalid(
                        "it is a core WebAssembly module, not a component (build for wasm32-wasip2, or wrap it with `wasm-tools component new`)".into(),
                    ));
                }
                let c = Component::new(&self.shared.engine, bytes)
                    .map_err(|e| invalid(format!("{e:#}")))?;
                self.shared.compiles.fetch_add(1, Ordering::Relaxed);
                let serialized = c.serialize().map_err(|e| invalid(e.to_string()))?;
                let cache_err = |source| PolicyError::Cache {
                    path: cached.clone(),
                    source,
                };
                std::fs::create_dir_all(&self.shared.cache_dir).map_err(cache_err)?;
                // A name of its own: jobs and uploads compile the same component at once.
                let tmp = cached.with_extension(format!("tmp-{}", ulid::Ulid::new()));
                std::fs::write(&tmp, serialized).map_err(cache_err)?;
                std::fs::rename(&tmp, &cached).map_err(cache_err)?;
                c
            }
        };
        let ty = component.component_type();
        for (import, _) in ty.imports(&self.shared.engine) {
            if !ALLOWED_IMPORTS.iter().any(|p| import.starts_with(p)) {
                return Err(PolicyError::Capability {
                    name: name.to_string(),
                    import: import.to_string(),
                });
            }
        }
        let pre = self
            .shared
            .linker
            .instantiate_pre(&component)
            .map_err(|e| invalid(format!("cannot link: {e:#}")))?;
        // The current world first, then 0.1.0; the error told is the current world's.
        let (retention, retention_error) =
            match retention_world::RetentionPolicyPre::new(pre.clone()) {
                Ok(p) => (Some(RetentionPre::Current(p)), None),
                Err(e) => match v1::retention_world::RetentionPolicyPre::new(pre.clone()) {
                    Ok(p) => (Some(RetentionPre::V1(p)), None),
                    Err(_) => (None, Some(format!("{e:#}"))),
                },
            };
        let (protection, protection_error) =
            match protection_world::ProtectionPolicyPre::new(pre.clone()) {
                Ok(p) => (Some(ProtectionPre::Current(p)), None),
                Err(e) => match v1::protection_world::ProtectionPolicyPre::new(pre) {
                    Ok(p) => (Some(ProtectionPre::V1(p)), None),
                    Err(_) => (None, Some(format!("{e:#}"))),
                },
            };
        if retention.is_none() && protection.is_none() {
            return Err(PolicyError::WrongWorld {
                name: name.to_string(),
                what: "retention or protection",
                export: "retain / protect",
                world: "policy",
                reason: retention_error.unwrap_or_default(),
            });
        }
        Ok(Policy {
            name: name.to_string(),
            sha256,
            retention,
            protection,
            retention_error,
            protection_error,
        })
    }

    fn store(&self, budget: Budget) -> (Store<State>, MemoryOutputPipe, MemoryOutputPipe) {
        let stdout = MemoryOutputPipe::new(self.shared.limits.log_bytes);
        let stderr = MemoryOutputPipe::new(self.shared.limits.log_bytes);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .max_random_size(MAX_RANDOM_BYTES)
            .wall_clock(StoppedClock)
            .monotonic_clock(StoppedClock)
            .build();
        let state = State {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryCap {
                total: 0,
                cap: self.shared.limits.memory_bytes,
                max_table_elements: self.shared.limits.max_table_elements,
                limits: (
                    self.shared.limits.max_instances,
                    self.shared.limits.max_tables,
                ),
            },
        };
        let mut store = Store::new(&self.shared.engine, state);
        store.limiter(|s| &mut s.limiter);
        // Fuel and epoch: both are set before every call.
        let _ = store.set_fuel(budget.fuel);
        let ticks = (budget.deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        (store, stdout, stderr)
    }

    /// Explains why a call failed, with what the guest printed.
    fn stopped(
        &self,
        name: &str,
        budget: Budget,
        err: wasmtime::Error,
        stdout: &MemoryOutputPipe,
        stderr: &MemoryOutputPipe,
    ) -> PolicyError {
        let reason = match err.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => {
                format!(
                    "it used up its fuel budget of {}",
                    budget.what(format!("{} units", budget.fuel))
                )
            }
            Some(Trap::Interrupt) => format!(
                "it ran past its deadline of {}",
                budget.what(format!("{} ms", budget.deadline.as_millis()))
            ),
            Some(Trap::StackOverflow) => "it overflowed its stack (too deep recursion)".into(),
            Some(Trap::UnreachableCodeReached) => "it trapped (a panic or `unreachable`)".into(),
            Some(t) => format!("it trapped: {t}"),
            None => match err.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Some(exit) => format!("it called exit({}) instead of answering", exit.0),
                // The root cause alone: the rest is a multi-line wasm backtrace.
                None => {
                    let cause = err.root_cause().to_string();
                    let line = cause.lines().next().unwrap_or("").trim();
                    if line.contains("exceeds limit") {
                        format!("a host call was refused: {line}")
                    } else {
                        line.to_string()
                    }
                }
            },
        };
        let mut output = String::new();
        let said = [stderr, stdout]
            .into_iter()
            .find_map(|pipe| guest_said(&String::from_utf8_lossy(&pipe.contents())));
        if let Some(line) = said {
            output.push_str(&format!(
                "; it said: {}",
                crate::names::escape_control(&line.chars().take(500).collect::<String>())
            ));
        }
        PolicyError::Stopped {
            name: name.to_string(),
            reason,
            output,
        }
    }

    /// Resolves when this host's cancel flag is set.
    async fn cancelled(&self) {
        loop {
            if self
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                return;
            }
            tokio::time::sleep(EPOCH_TICK).await;
        }
    }

    /// Runs `call` in a fresh sandbox, turning traps, refusals and oversized answers
    /// (`size` measures an answer) into errors that name the policy.
    ///
    /// The call is a future raced against the deadline and the cancel flag: running wasm is
    /// stopped by fuel and the epoch deadline, a guest waiting in a host call by dropping
    /// the future. Either way the evaluation ends within its deadline.
    fn run<R>(
        &self,
        policy: &Policy,
        backups: usize,
        call: impl AsyncFnOnce(&mut Store<State>) -> wasmtime::Result<Result<R, String>>,
        size: impl Fn(&R) -> usize,
    ) -> Result<R, PolicyError> {
        let ended = |reason: String| PolicyError::Stopped {
            name: policy.name.clone(),
            reason,
            output: String::new(),
        };
        // Waiting for a sandbox is not part of the deadline; a cancel ends it.
        let slot = self.runtime.block_on(async {
            tokio::select! {
                slot = self.shared.slots.acquire() => slot.ok(),
                _ = self.cancelled() => None,
            }
        });
        // Declared before the store: the store goes back to the pool before the permit.
        let Some(_slot) = slot else {
            return Err(ended("the job was cancelled".into()));
        };
        let budget = self.shared.limits.budget(backups);
        let (mut store, stdout, stderr) = self.store(budget);
        let deadline = budget.deadline;
        enum Ended<T> {
            Answered(T),
            Deadline,
            Cancelled,
        }
        let started = std::time::Instant::now();
        let outcome = self.runtime.block_on(async {
            tokio::select! {
                r = call(&mut store) => Ended::Answered(r),
                _ = tokio::time::sleep(deadline) => Ended::Deadline,
                _ = self.cancelled() => Ended::Cancelled,
            }
        });
        let answer = match outcome {
            Ended::Answered(r) => {
                let usage = Usage {
                    fuel: budget.fuel.saturating_sub(store.get_fuel().unwrap_or(0)),
                    memory_bytes: store.data().limiter.total,
                    elapsed: started.elapsed(),
                };
                tracing::debug!(policy = %policy.name, ?usage, "policy evaluated");
                *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(usage);
                r
            }
            Ended::Deadline => {
                return Err(ended(format!(
                    "it ran past its deadline of {} (waiting in a host call)",
                    budget.what(format!("{} ms", deadline.as_millis()))
                )))
            }
            Ended::Cancelled => return Err(ended("the job was cancelled".into())),
        };
        let answer = answer
            .map_err(|e| self.stopped(&policy.name, budget, e, &stdout, &stderr))?
            .map_err(|message| PolicyError::Refused {
                name: policy.name.clone(),
                message: crate::names::escape_control(&message).into_owned(),
            })?;
        let bytes = size(&answer);
        if bytes > self.shared.limits.output_bytes {
            return Err(PolicyError::BadAnswer {
                name: policy.name.clone(),
                reason: format!(
                    "its answer of {bytes} bytes exceeds the {} byte cap",
                    self.shared.limits.output_bytes
                ),
            });
        }
        Ok(answer)
    }

    /// Runs a policy's `retain` in a fresh sandbox.
    pub fn retain(
        &self,
        policy: &Policy,
        input: &RetentionInput,
    ) -> Result<Vec<Keep>, PolicyError> {
        let pre = policy
            .retention
            .as_ref()
            .ok_or_else(|| PolicyError::WrongWorld {
                name: policy.name.clone(),
                what: "a retention policy",
                export: "retain",
                world: "retention-policy",
                reason: policy.retention_error.clone().unwrap_or_default(),
            })?;
        self.run(
            policy,
            input.backups.len(),
            async |store| match pre {
                RetentionPre::Current(pre) => {
                    let p = pre.instantiate_async(&mut *store).await?;
                    p.call_retain(store, input).await
                }
                RetentionPre::V1(pre) => {
                    let old = v1::retention::RetentionInput {
                        now: input.now,
                        tenant: input.tenant.clone(),
                        instance: input.instance.clone(),
                        params: input.params.clone(),
                        backups: input.backups.iter().map(info_v1).collect(),
                    };
                    let p = pre.instantiate_async(&mut *store).await?;
                    let keeps = p.call_retain(store, &old).await?;
                    Ok(keeps.map(|ks| {
                        ks.into_iter()
                            .map(|k| Keep {
                                id: k.id,
                                reason: k.reason,
                            })
                            .collect()
                    }))
                }
            },
            |keeps| keeps.iter().map(|k| k.id.len() + k.reason.len()).sum(),
        )
        .map(|mut keeps| {
            for k in &mut keeps {
                k.reason = crate::names::escape_control(&k.reason).into_owned();
            }
            keeps
        })
    }

    /// Runs a policy's `protect` in a fresh sandbox.
    pub fn protect(
        &self,
        policy: &Policy,
        input: &ProtectionInput,
    ) -> Result<Protection, PolicyError> {
        let pre = policy
            .protection
            .as_ref()
            .ok_or_else(|| PolicyError::WrongWorld {
                name: policy.name.clone(),
                what: "a protection policy",
                export: "protect",
                world: "protection-policy",
                reason: policy.protection_error.clone().unwrap_or_default(),
            })?;
        self.run(
            policy,
            input.chain.len(),
            async |store| match pre {
                ProtectionPre::Current(pre) => {
                    let p = pre.instantiate_async(&mut *store).await?;
                    p.call_protect(store, input).await
                }
                ProtectionPre::V1(pre) => {
                    let old = v1::protection::ProtectionInput {
                        now: input.now,
                        tenant: input.tenant.clone(),
                        instance: input.instance.clone(),
                        schedule: input.schedule.clone(),
                        source_size: input.source_size,
                        params: input.params.clone(),
                    };
                    let p = pre.instantiate_async(&mut *store).await?;
                    let answer = p.call_protect(store, &old).await?;
                    // A 0.1.0 component knows nothing of chains: its backups are full.
                    Ok(answer.map(|a| Protection {
                        compression_level: a.compression_level,
                        encrypt: a.encrypt,
                        key_id: a.key_id,
                        tags: a.tags,
                        kind: BackupKind::Full,
                        prefix_check: PrefixCheck::Exact,
                    }))
                }
            },
            |p| {
                p.tags.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
                    + p.key_id.as_ref().map_or(0, String::len)
            },
        )
    }
}

/// A core module starts with the magic and version 1; a component has layer 1 in bytes 6-7.
fn wasmparser_is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[0..4] == b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::{guest_said, Limits, MAX_SCALED_ITEMS};
    use std::time::Duration;

    #[test]
    fn budgets_grow_with_the_input_up_to_a_cap() {
        let l = Limits::default();
        let small = l.budget(0);
        assert_eq!((small.fuel, small.deadline), (l.fuel, l.deadline));
        let large = l.budget(1000);
        assert_eq!(large.fuel, 300_000_000 + 1000 * 600_000);
        assert_eq!(large.deadline, Duration::from_millis(400));
        let huge = l.budget(usize::MAX);
        assert_eq!(huge.fuel, l.budget(MAX_SCALED_ITEMS).fuel);
        assert!(huge.what("x".into()).contains(&usize::MAX.to_string()));
    }

    #[test]
    fn what_a_stopped_guest_said_in_one_line() {
        // componentize-py: the traceback, then its runtime's panic.
        let python = "Traceback (most recent call last):\n  File \"/0/app.py\", line 82, in retain\n  File \"/0/app.py\", line 55, in minus_duration\nAttributeError: 'int' object has no attribute 'strip'\n\nthread '<unnamed>' (1) panicked at runtime/src/lib.rs:1293:29:\nPython function threw an unexpected exception\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            guest_said(python).as_deref(),
            Some("AttributeError: 'int' object has no attribute 'strip'")
        );
        let rust = "\nthread '<unnamed>' panicked at src/lib.rs:46:23:\nhostile policy panicked on purpose\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            guest_said(rust).as_deref(),
            Some("thread '<unnamed>' panicked at src/lib.rs:46:23: hostile policy panicked on purpose")
        );
        assert_eq!(guest_said("oops\nmore\n").as_deref(), Some("oops"));
        assert_eq!(guest_said(" \n"), None);
    }
}
