//! The wasmtime side: one [`Engine`] per broker, components compiled once and cached on disk,
//! instances from the pooling allocator, each call bounded by an epoch deadline and a memory cap.
//!
//! Instances are reused: a [`Plugin`] keeps idle (store, instance) pairs and hands one to each
//! call. A call that traps, times out or hits the memory cap drops its instance (a component
//! instance is unusable after a trap); the next call builds a fresh one and runs `init` again.
//!
//! A component is a filter or a transform by what it exports (`filter` or `transform`, the
//! worlds of `sdk/wit/plugin.wit`), found at load ([`Kind`]); both take and return one
//! `list<u8>`, so one call path serves both and the caller reads the answer by kind.
//!
//! After `disable_after` failed calls in a row a plugin is disabled (one WARN line); from then
//! on [`Plugin::call`] fails at once with [`PluginError::Disabled`] without entering the guest.
//! Trap messages keep the trap reason and the innermost wasm frame, not the whole backtrace.
//!
//! A plugin's only import is `log` of the `host` interface ([`GuestLog`]): its lines go to the
//! broker's log, rate-limited per plugin, and the last error-level line of a call that traps
//! (the SDK writes a panic's message there) becomes the reason the trap is reported with.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{
    Component, ComponentType, Instance, InstancePre, Lift, Linker, TypedFunc,
};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreContextMut,
    StoreLimits, StoreLimitsBuilder, Trap, WasmBacktrace,
};

use super::PluginError;

/// How often the ticker thread advances the engine's epoch. A call's deadline is
/// `call_timeout / EPOCH_TICK` ticks (at least one), so a timeout is enforced to within a tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Limits of the plugin host, from `[plugins]` in the config.
#[derive(Clone, Debug)]
pub struct HostLimits {
    pub call_timeout: Duration,
    pub memory_limit: u64,
    /// Failed calls in a row that disable a plugin; 0 = never.
    pub disable_after: u32,
}

/// The engine shared by every plugin of a broker, and its epoch ticker.
pub struct Host {
    engine: Engine,
    limits: HostLimits,
    cache_dir: PathBuf,
}

impl Host {
    /// Builds the engine (pooling allocator sized for `max_instances` live instances) and
    /// starts the epoch ticker thread, which ends when the engine is dropped.
    pub fn new(
        limits: HostLimits,
        cache_dir: PathBuf,
        max_instances: u32,
    ) -> Result<Host, PluginError> {
        let mut pool = PoolingAllocationConfig::new();
        // A Rust component has a handful of core instances (the module plus adapter shims).
        pool.total_component_instances(max_instances)
            .total_core_instances(max_instances * 8)
            .total_memories(max_instances * 2)
            .total_tables(max_instances * 4)
            .max_memory_size(limits.memory_limit as usize);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            // Each linear memory keeps wasmtime's 4 GiB reservation (address space, not
            // memory): its bounds checks are then the guard pages'. Reserving only
            // `memory_limit` made the JSON filter 1.7x slower per record (explicit checks), so
            // the address space is kept down by the number of instances instead.
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine {
            message: format!("{e:#}"),
        })?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| PluginError::Engine {
                message: format!("cannot start the epoch ticker: {e}"),
            })?;
        Ok(Host {
            engine,
            limits,
            cache_dir,
        })
    }

    /// Loads the component at `path`: the precompiled artifact from the cache when there is
    /// one for these bytes and this engine, else compiles and stores it. Then instantiates it
    /// once and runs `init(config)` so a bad plugin or config fails at start-up.
    pub fn load(&self, name: &str, path: &Path, config: &str) -> Result<Plugin, PluginError> {
        let component = self.compile_file(name, path)?;
        let kind = Kind::of(&component).ok_or_else(|| PluginError::Interface {
            name: name.to_owned(),
            message: "exports neither `filter` nor `transform` (build it with the runnel-plugin \
                      SDK's filter! or transform! macro)"
                .into(),
        })?;
        linker(&self.engine, &component)
            .and_then(|linker| linker.instantiate_pre(&component))
            .map(|pre| Plugin {
                name: name.to_owned(),
                kind,
                config: config.to_owned(),
                engine: self.engine.clone(),
                limits: self.limits.clone(),
                log: Arc::new(GuestLog::new(name)),
                pre,
                idle: Mutex::new(Vec::new()),
                slots: CallSlots::new(CALLS_PER_PLUGIN),
                stats: Arc::default(),
                failures_in_a_row: AtomicU32::new(0),
                disabled: AtomicBool::new(false),
            })
            .map_err(|e| PluginError::Interface {
                name: name.to_owned(),
                message: format!("{e:#}"),
            })
            .and_then(|plugin| {
                let inst = plugin.instantiate()?;
                plugin.put_back(inst);
                Ok(plugin)
            })
    }

    /// The cache file name: sha256 of the wasm, and a hash of what a precompiled artifact must
    /// match (wasmtime version, compiler settings, epoch/pooling config). A stale or corrupt
    /// artifact fails to deserialize and is recompiled.
    fn cache_path(&self, wasm: &[u8]) -> PathBuf {
        let digest = Sha256::digest(wasm);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let mut h = DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        self.cache_dir
            .join(format!("{hex}-{:016x}.cwasm", h.finish()))
    }

    /// Reads the component at `path` and compiles it (or loads it from the cache).
    fn compile_file(&self, name: &str, path: &Path) -> Result<Component, PluginError> {
        let wasm = std::fs::read(path).map_err(|source| PluginError::Read {
            name: name.to_owned(),
            path: path.to_owned(),
            source,
        })?;
        self.compile_cached(name, &wasm)
    }

    fn compile_cached(&self, name: &str, wasm: &[u8]) -> Result<Component, PluginError> {
        let path = self.cache_path(wasm);
        if path.exists() {
            // SAFETY of the unsafe call: `deserialize_file` trusts the file to be an artifact
            // made by `precompile_component` of a compatible engine (it checks the version and
            // settings, not the code). The file lives in our own data directory, named by the
            // sha256 of the wasm it was compiled from, and is written atomically below (temp
            // file + rename), so it is our own compiler's output.
            #[allow(unsafe_code)]
            let loaded = unsafe { Component::deserialize_file(&self.engine, &path) };
            match loaded {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(plugin = name, path = %path.display(), error = %e, "stale plugin cache entry; recompiling")
                }
            }
        }
        let compile_err = |e: wasmtime::Error| PluginError::Compile {
            name: name.to_owned(),
            message: first_line(&format!("{e:#}")),
        };
        let artifact = self
            .engine
            .precompile_component(wasm)
            .map_err(compile_err)?;
        if let Err(e) = write_atomic(&self.cache_dir, &path, &artifact) {
            tracing::warn!(plugin = name, error = %e, "cannot write the plugin cache; compiling on every start");
        }
        #[allow(unsafe_code)]
        // SAFETY: the bytes were produced just now by this engine's `precompile_component`.
        let component = unsafe { Component::deserialize(&self.engine, &artifact) };
        component.map_err(compile_err)
    }
}

fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The versioned name of the interface the broker offers plugins (`sdk/wit/plugin.wit`).
const HOST_INTERFACE: &str = "runnel:plugin/host@0.1.0";

/// A linker for `component`: the `host` interface, and every other import the guest has (std's
/// wasi:cli, wasi:io, ...) defined as a trap, so a plugin has no filesystem, network, clock or
/// environment.
fn linker(engine: &Engine, component: &Component) -> wasmtime::Result<Linker<State>> {
    let mut linker = Linker::<State>::new(engine);
    linker.root().instance(HOST_INTERFACE)?.func_wrap(
        "log",
        |mut cx: StoreContextMut<'_, State>, (level, message): (Level, String)| {
            cx.data_mut().log(level, &message);
            Ok(())
        },
    )?;
    linker.define_unknown_imports_as_traps(component)?;
    Ok(linker)
}

/// The `level` enum of the `host` interface.
#[derive(ComponentType, Lift, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code, reason = "the guest makes every variant, through `Lift`")]
#[component(enum)]
#[repr(u8)]
enum Level {
    #[component(name = "error")]
    Error,
    #[component(name = "warn")]
    Warn,
    #[component(name = "info")]
    Info,
    #[component(name = "debug")]
    Debug,
}

/// The log target of plugins' own lines, e.g. `RUST_LOG=runnel::plugins::guest=debug`.
const GUEST_TARGET: &str = "runnel::plugins::guest";
/// Lines a plugin may write per second (and in a burst), over all its instances.
const GUEST_LINES_PER_SEC: f64 = 100.0;
/// The first line of a compiler's error: for a file that is not wasm at all it goes on with a
/// dump of the bytes it read (`bad magic number - expected=[` and the bytes on the next lines:
/// the dangling part is left out).
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    match line.rsplit_once(" - ") {
        Some((said, dump)) if dump.ends_with('[') => said.to_string(),
        _ => line.to_string(),
    }
}

/// Calls of one filter or transform plugin that run at once, at most; the pooling allocator
/// has room for this many instances of every plugin loaded. Each reserves about 8 GiB of
/// address space (two 4 GiB linear memory slots): 32 GiB a plugin, twice that during a reload,
/// which an arm64 kernel's 39-bit address space (512 GiB) must hold. More calls at once than
/// a gateway has cores gain nothing.
pub const CALLS_PER_PLUGIN: u32 = 4;

/// A counting semaphore for calls made on blocking threads.
struct CallSlots {
    free: Mutex<u32>,
    freed: std::sync::Condvar,
}

struct CallSlot<'a>(&'a CallSlots);

impl CallSlots {
    fn new(n: u32) -> CallSlots {
        CallSlots {
            free: Mutex::new(n),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Waits up to `wait` for a free slot and takes it until the guard is dropped.
    fn take(&self, wait: Duration) -> Option<CallSlot<'_>> {
        let deadline = Instant::now() + wait;
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            free = self
                .freed
                .wait_timeout(free, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *free -= 1;
        Some(CallSlot(self))
    }
}

impl Drop for CallSlot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

/// The longest line a plugin writes; the rest is cut.
const GUEST_LINE_MAX: usize = 2048;

/// Where one plugin's lines go: its name and the rate limit its instances share.
pub struct GuestLog {
    plugin: String,
    bucket: Mutex<Bucket>,
}

/// A token bucket of log lines, and the lines dropped since their count was last said.
struct Bucket {
    tokens: f64,
    at: Instant,
    dropped: u64,
    /// When dropping lines or their count was last said: at most once per
    /// [`GUEST_DROPS_SAID_EVERY`], however the plugin's lines come and go around the rate.
    said_at: Option<Instant>,
}

/// How often a plugin over its line rate is said to be, at most.
const GUEST_DROPS_SAID_EVERY: Duration = Duration::from_secs(10);

impl GuestLog {
    fn new(plugin: &str) -> GuestLog {
        GuestLog {
            plugin: plugin.to_owned(),
            bucket: Mutex::new(Bucket {
                tokens: GUEST_LINES_PER_SEC,
                at: Instant::now(),
                dropped: 0,
                said_at: None,
            }),
        }
    }

    /// Whether a line may be written now, with the count of lines dropped to say before it
    /// (0 but every [`GUEST_DROPS_SAID_EVERY`]); `Err(say)` drops it, `say` when that dropping
    /// is to be said now.
    fn admit(&self) -> Result<u64, bool> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Result<u64, bool> {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * GUEST_LINES_PER_SEC;
        b.tokens = (b.tokens + refill).min(GUEST_LINES_PER_SEC);
        b.at = now;
        let due = b
            .said_at
            .is_none_or(|at| now.saturating_duration_since(at) >= GUEST_DROPS_SAID_EVERY);
        if b.tokens < 1.0 {
            b.dropped += 1;
            if due && b.dropped == 1 {
                b.said_at = Some(now);
                return Err(true);
            }
            return Err(false);
        }
        b.tokens -= 1.0;
        if b.dropped > 0 && due {
            b.said_at = Some(now);
            return Ok(std::mem::take(&mut b.dropped));
        }
        Ok(0)
    }

    /// Whether the log filter shows lines of `level` from plugins (debug lines usually not).
    fn shown(level: Level) -> bool {
        match level {
            Level::Error => tracing::enabled!(target: GUEST_TARGET, tracing::Level::ERROR),
            Level::Warn => tracing::enabled!(target: GUEST_TARGET, tracing::Level::WARN),
            Level::Info => tracing::enabled!(target: GUEST_TARGET, tracing::Level::INFO),
            Level::Debug => tracing::enabled!(target: GUEST_TARGET, tracing::Level::DEBUG),
        }
    }

    /// Writes a shown line, within the rate.
    fn write(&self, level: Level, line: &str) {
        let plugin = self.plugin.as_str();
        let dropped = match self.admit() {
            Ok(dropped) => dropped,
            Err(first) => {
                if first {
                    tracing::warn!(target: GUEST_TARGET, plugin, "plugin writes more than 100 lines a second; its lines are dropped while it does (their count follows, at most every 10 s)");
                }
                return;
            }
        };
        if dropped > 0 {
            tracing::warn!(target: GUEST_TARGET, plugin, dropped, "plugin lines dropped (more than 100 a second)");
        }
        match level {
            Level::Error => tracing::error!(target: GUEST_TARGET, plugin, "{line}"),
            Level::Warn => tracing::warn!(target: GUEST_TARGET, plugin, "{line}"),
            Level::Info => tracing::info!(target: GUEST_TARGET, plugin, "{line}"),
            Level::Debug => tracing::debug!(target: GUEST_TARGET, plugin, "{line}"),
        }
    }
}

/// `message` on one line: control characters escaped (a plugin cannot forge log lines), cut at
/// [`GUEST_LINE_MAX`] bytes.
fn one_line(message: &str) -> String {
    let mut line = String::with_capacity(message.len().min(GUEST_LINE_MAX));
    for c in message.chars() {
        if line.len() >= GUEST_LINE_MAX {
            line.push_str(" [cut]");
            break;
        }
        // Bidirectional-text controls too: they could make a line read as something else.
        if c.is_control()
            || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line
}

/// What a store carries: its memory limiter, where the guest's lines go, and the last
/// error-level line of the current call.
pub struct State {
    limits: StoreLimits,
    log: Arc<GuestLog>,
    last_error: Option<String>,
}

impl State {
    /// A line from the guest. One the log filter hides costs nothing more (a plugin may write a
    /// debug line per record) and does not count against the rate; an error line is kept as
    /// the reason of a trap either way.
    fn log(&mut self, level: Level, message: &str) {
        let shown = GuestLog::shown(level);
        if !shown && level != Level::Error {
            return;
        }
        let line = one_line(message);
        if shown {
            self.log.write(level, &line);
        }
        if level == Level::Error {
            self.last_error = Some(line);
        }
    }
}

type InitFn = TypedFunc<(String,), (Result<(), String>,)>;
/// `filter` and `transform` have the same signature: framed batch in, framed answer out.
type BatchFn = TypedFunc<(Vec<u8>,), (Result<Vec<u8>, String>,)>;

/// Which world a plugin implements, found from its exports at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Exports `filter`: answers with a keep bitmap.
    Filter,
    /// Exports `transform`: answers with an output frame.
    Transform,
}

impl Kind {
    fn of(component: &Component) -> Option<Kind> {
        if component.get_export_index(None, "transform").is_some() {
            Some(Kind::Transform)
        } else if component.get_export_index(None, "filter").is_some() {
            Some(Kind::Filter)
        } else {
            None
        }
    }

    /// The exported function a call enters.
    fn export(self) -> &'static str {
        match self {
            Kind::Filter => "filter",
            Kind::Transform => "transform",
        }
    }
}

/// One live instance and its store.
struct Live {
    store: Store<State>,
    call: BatchFn,
    _instance: Instance,
}

/// Call counters of one plugin.
#[derive(Default, Debug)]
pub struct Stats {
    /// Calls asked for, including those refused because the plugin is disabled.
    pub calls: AtomicU64,
    /// Calls that failed (trap, timeout, memory cap, error result, bad answer, disabled).
    pub faults: AtomicU64,
    pub instantiations: AtomicU64,
    /// Wall time spent in calls (instantiation included), in nanoseconds.
    pub busy_nanos: AtomicU64,
}

/// A loaded filter or transform plugin.
pub struct Plugin {
    name: String,
    kind: Kind,
    config: String,
    engine: Engine,
    limits: HostLimits,
    log: Arc<GuestLog>,
    pre: InstancePre<State>,
    idle: Mutex<Vec<Live>>,
    /// Calls that may run at once; the others wait for one to end.
    slots: CallSlots,
    /// Shared with the plugin of the same name before a reload and after it, so that its
    /// counters go on (as counters do while the process lives).
    pub stats: Arc<Stats>,
    /// Failed calls since the last successful one.
    failures_in_a_row: AtomicU32,
    /// Set once, after `disable_after` failures in a row; never cleared (a reload or restart
    /// makes new plugins).
    disabled: AtomicBool,
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether the plugin was disabled for failing `disable_after` calls in a row.
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    fn new_store(&self) -> Store<State> {
        new_store(&self.engine, &self.limits, &self.log)
    }

    fn begin_call(&self, store: &mut Store<State>) {
        begin_call(store, &self.limits);
    }

    /// A fresh instance with `init(config)` done.
    fn instantiate(&self) -> Result<Live, PluginError> {
        self.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        let mut store = self.new_store();
        self.begin_call(&mut store);
        let iface = |e: wasmtime::Error| PluginError::Interface {
            name: self.name.clone(),
            message: format!("{e:#}"),
        };
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.classify(&mut store, e))?;
        let init: InitFn = instance.get_typed_func(&mut store, "init").map_err(iface)?;
        let call: BatchFn = instance
            .get_typed_func(&mut store, self.kind.export())
            .map_err(iface)?;
        let (result,) = init
            .call(&mut store, (self.config.clone(),))
            .map_err(|e| self.classify(&mut store, e))?;
        // The guest's words reach logs and clients: one line, controls escaped.
        result.map_err(|message| PluginError::Init {
            name: self.name.clone(),
            message: one_line(&message),
        })?;
        Ok(Live {
            store,
            call,
            _instance: instance,
        })
    }

    fn put_back(&self, live: Live) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(live);
    }

    /// Runs the plugin's `filter` or `transform` over a framed batch and reads its answer (a
    /// keep bitmap or an output frame, see [`Kind`]) with `read`, whose error makes the call a
    /// [`PluginError::BadAnswer`]. A disabled plugin fails at once. Blocking: run it off the
    /// async workers.
    pub fn call<T>(
        &self,
        frame: Vec<u8>,
        read: impl FnOnce(Vec<u8>) -> Result<T, String>,
    ) -> Result<T, PluginError> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        if self.is_disabled() {
            self.stats.faults.fetch_add(1, Ordering::Relaxed);
            return Err(PluginError::Disabled {
                name: self.name.clone(),
            });
        }
        let started = std::time::Instant::now();
        let result = self.call_inner(frame).and_then(|answer| {
            read(answer).map_err(|message| PluginError::BadAnswer {
                name: self.name.clone(),
                message,
            })
        });
        self.stats
            .busy_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match &result {
            Ok(_) => self.failures_in_a_row.store(0, Ordering::Relaxed),
            // Not the plugin's doing: counted as a fault, not towards disable_after.
            Err(PluginError::Busy { .. }) => {
                self.stats.faults.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.failed(e),
        }
        result
    }

    /// Counts a failed call and disables the plugin after `disable_after` failures in a row,
    /// logging that once.
    fn failed(&self, error: &PluginError) {
        self.stats.faults.fetch_add(1, Ordering::Relaxed);
        let in_a_row = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        let limit = self.limits.disable_after;
        if limit > 0 && in_a_row >= limit && !self.disabled.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                plugin = %self.name,
                failures = in_a_row,
                last_error = %error,
                "plugin disabled after failing plugins.disable_after calls in a row; its bindings apply their on_error policy until a reload or restart"
            );
        }
    }

    fn call_inner(&self, frame: Vec<u8>) -> Result<Vec<u8>, PluginError> {
        // Each call holds an instance, so a plugin never has more than its slots alive: its
        // share of the pooling allocator, which a burst of calls therefore cannot exhaust (for
        // itself or for the other plugins); calls beyond wait for an instance to be free.
        // Waiting is bounded as a call is: an overloaded broker fails the call (the produce is
        // refused as retriable, whatever the binding's on_error: see `ProduceFilterError::
        // Overloaded`) rather than piling requests up on the blocking threads.
        let Some(_slot) = self.slots.take(self.limits.call_timeout) else {
            return Err(PluginError::Busy {
                name: self.name.clone(),
                limit: self.limits.call_timeout,
            });
        };
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut live = match idle {
            Some(live) => live,
            None => self.instantiate()?,
        };
        self.begin_call(&mut live.store);
        // On a trap the instance is dropped here (not put back): the next call rebuilds it.
        let (result,) = live
            .call
            .call(&mut live.store, (frame,))
            .map_err(|e| self.classify(&mut live.store, e))?;
        // A plugin that returns an error is still a sound instance: keep it.
        self.put_back(live);
        // The guest's words reach logs, clients and dead-letter headers: one line, controls
        // escaped.
        result.map_err(|message| PluginError::Failed {
            name: self.name.clone(),
            message: one_line(&message),
        })
    }

    /// Turns a wasmtime error of a call in `store` into the matching [`PluginError`].
    fn classify(&self, store: &mut Store<State>, e: wasmtime::Error) -> PluginError {
        classify(&self.name, &self.limits, store, e)
    }
}

/// A store with the memory cap of `limits` (a grow past it traps), writing the guest's lines to
/// `log`.
fn new_store(engine: &Engine, limits: &HostLimits, log: &Arc<GuestLog>) -> Store<State> {
    let store_limits = StoreLimitsBuilder::new()
        .memory_size(limits.memory_limit as usize)
        .trap_on_grow_failure(true)
        .build();
    let mut store = Store::new(
        engine,
        State {
            limits: store_limits,
            log: log.clone(),
            last_error: None,
        },
    );
    store.limiter(|s| &mut s.limits);
    store
}

/// Arms the epoch deadline of the next call made in `store`, and forgets what the guest logged
/// in the last one.
fn begin_call(store: &mut Store<State>, limits: &HostLimits) {
    let ticks = (limits.call_timeout.as_micros() / EPOCH_TICK.as_micros()).max(1);
    store.set_epoch_deadline(ticks as u64);
    store.data_mut().last_error = None;
}

/// Turns a wasmtime error of a call in `store` into the matching [`PluginError`]. A trap is
/// reported with the last error-level line the guest wrote in the call (a panic's message, from
/// the SDK), followed by the trap itself.
fn classify(
    name: &str,
    limits: &HostLimits,
    store: &mut Store<State>,
    e: wasmtime::Error,
) -> PluginError {
    let name = name.to_owned();
    if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
        return PluginError::Timeout {
            name,
            limit: limits.call_timeout,
        };
    }
    let message = format!("{e:#}");
    if message.contains("growing memory") || message.contains("memory") && message.contains("limit")
    {
        return PluginError::MemoryLimit {
            name,
            limit: limits.memory_limit,
        };
    }
    let trap = trap_message(&e);
    let message = match store.data_mut().last_error.take() {
        Some(logged) => format!("{logged} ({trap})"),
        None => trap,
    };
    PluginError::Trap { name, message }
}

/// A trap's reason and its innermost wasm frame, on one line. wasmtime's own message carries the
/// whole backtrace, one frame per line, which would flood the log on every faulty call.
fn trap_message(e: &wasmtime::Error) -> String {
    let reason = e.root_cause().to_string();
    let reason = reason.lines().next().unwrap_or("").trim();
    let frame = e
        .downcast_ref::<WasmBacktrace>()
        .and_then(|bt| bt.frames().first())
        .map(|f| match f.func_name() {
            Some(name) => format!("{name} (function {})", f.func_index()),
            None => format!("function {}", f.func_index()),
        });
    match frame {
        Some(frame) => format!("{reason}; at {frame}"),
        None => reason.to_owned(),
    }
}

/// A component of any plugin world, compiled and linked (every import a trap), for plugin kinds
/// that look up their own exports ([`super::quota`]). It makes fresh instances, each in its own
/// store with the host's memory cap; the caller arms the deadline before each call.
pub struct Linked {
    name: String,
    engine: Engine,
    limits: HostLimits,
    log: Arc<GuestLog>,
    pre: InstancePre<State>,
}

impl Host {
    /// Reads, compiles (or loads from the cache) and links the component at `path` without
    /// instantiating it.
    pub fn link(&self, name: &str, path: &Path) -> Result<Linked, PluginError> {
        let component = self.compile_file(name, path)?;
        linker(&self.engine, &component)
            .and_then(|linker| linker.instantiate_pre(&component))
            .map(|pre| Linked {
                name: name.to_owned(),
                engine: self.engine.clone(),
                limits: self.limits.clone(),
                log: Arc::new(GuestLog::new(name)),
                pre,
            })
            .map_err(|e| PluginError::Compile {
                name: name.to_owned(),
                message: first_line(&format!("{e:#}")),
            })
    }
}

impl Linked {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A fresh instance in a fresh store, the deadline armed for the calls that set it up.
    pub fn instantiate(&self) -> Result<(Store<State>, Instance), PluginError> {
        let mut store = new_store(&self.engine, &self.limits, &self.log);
        begin_call(&mut store, &self.limits);
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.classify(&mut store, e))?;
        Ok((store, instance))
    }

    /// Arms the deadline of the next call in `store` (one `plugins.call_timeout`), and forgets
    /// what the guest logged in the last one.
    pub fn arm(&self, store: &mut Store<State>) {
        begin_call(store, &self.limits);
    }

    /// Turns a wasmtime error of a call in `store` into the matching [`PluginError`].
    pub fn classify(&self, store: &mut Store<State>, e: wasmtime::Error) -> PluginError {
        classify(&self.name, &self.limits, store, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_line_is_one_line_and_cut_at_the_limit() {
        assert_eq!(one_line("ok: 21.5 °C"), "ok: 21.5 °C");
        // A forged second log line stays on the first.
        assert_eq!(
            one_line("a\nERROR runnel: fake\r\u{1b}[31m"),
            "a\\nERROR runnel: fake\\r\\u{1b}[31m"
        );
        assert_eq!(one_line("abc\u{202E}fed"), "abc\\u{202e}fed");
        let long = "é".repeat(GUEST_LINE_MAX);
        let cut = one_line(&long);
        assert!(cut.ends_with(" [cut]"), "{cut}");
        assert!(cut.len() <= GUEST_LINE_MAX + 8);
    }

    #[test]
    fn a_plugin_writes_a_burst_then_its_rate_and_the_dropped_lines_are_counted() {
        let log = GuestLog::new("p");
        let t0 = Instant::now();
        let burst = GUEST_LINES_PER_SEC as usize;
        assert!((0..burst).all(|_| log.admit_at(t0) == Ok(0)));
        // The first line dropped says so; the next ones are only counted.
        assert_eq!(log.admit_at(t0), Err(true));
        assert_eq!(log.admit_at(t0), Err(false));
        // A tenth of a second later ten lines more may go, the eleventh is dropped.
        let t1 = t0 + Duration::from_millis(100);
        assert!((0..10).all(|_| log.admit_at(t1) == Ok(0)));
        assert_eq!(log.admit_at(t1), Err(false));
        // Held at its rate for ten seconds (a line let through, then one dropped, every 10 ms):
        // nothing more is said until the count is due, which the next line let through says.
        let mut said = Vec::new();
        for i in 1..=1000u64 {
            let at = t1 + Duration::from_millis(10 * i);
            match log.admit_at(at) {
                Ok(0) => {}
                Ok(n) => said.push((i, n)),
                Err(true) => said.push((i, 0)),
                Err(false) => unreachable!("a line every 10 ms is within the rate"),
            }
            assert_eq!(
                log.admit_at(at),
                Err(false),
                "the second line of {i} is over it"
            );
        }
        // Three dropped by the first 10 s, plus one a tick until then: said once.
        assert_eq!(said.len(), 1, "{said:?}");
        let (tick, count) = said[0];
        assert_eq!(tick, 990, "at t0 + 10 s");
        assert_eq!(count, 3 + 989);
    }
}
