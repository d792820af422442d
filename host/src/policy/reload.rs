//! `PolicyDirectory`: the drop-in directory of `.wasm` policies, each with
//! an optional sidecar `NAME.toml` of its own limits. It watches the
//! directory (non-recursively, debounced), loads changed files off the
//! async runtime (compile, validate against the world, canary call) and
//! swaps the whole chain atomically. A file that fails any step leaves the
//! running chain as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::{ChainSlot, LoadedPolicy, PolicyChain, PolicyEngine, PolicySettings};

/// Quiet time after the last file event before the directory is read: a
/// file still being written produces events and is not loaded half-done.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// How often per-policy counters are logged (when they moved).
const STATS_EVERY: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Slot {
    loaded: Option<([u8; 32], Arc<LoadedPolicy>)>,
    /// The content that failed last, so it is not retried until it changes.
    failed: Option<[u8; 32]>,
}

pub struct PolicyDirectory {
    engine: PolicyEngine,
    /// Runs the async part of loading (the canary call) from the watcher thread.
    runtime: tokio::runtime::Handle,
    dir: PathBuf,
    default: Arc<LoadedPolicy>,
    /// Where each new chain goes (the signaling hub's).
    chain: Arc<ChainSlot>,
    slots: Mutex<BTreeMap<String, Slot>>,
}

impl PolicyDirectory {
    pub fn new(
        engine: PolicyEngine,
        dir: PathBuf,
        default: Arc<LoadedPolicy>,
        chain: Arc<ChainSlot>,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine,
            runtime: tokio::runtime::Handle::current(),
            dir,
            default,
            chain,
            slots: Mutex::new(BTreeMap::new()),
        })
    }

    /// Reads the directory and swaps in a new chain if anything changed.
    /// Blocking (compiles): call it from a plain thread, never from an
    /// async worker.
    /// Returns whether the chain changed.
    pub fn scan(&self) -> bool {
        let files = self.wasm_files();
        let mut slots = self.slots.lock();
        let mut changed = false;
        slots.retain(|name, slot| {
            let keep = files.contains_key(name);
            if !keep && slot.loaded.is_some() {
                tracing::info!("policy {name} removed");
                changed = true;
            }
            keep
        });
        for (name, path) in &files {
            let bytes = match std::fs::read(path) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("policy file {} not read: {e}", path.display());
                    continue;
                }
            };
            // The sidecar is part of what was loaded: changing it reloads.
            let sidecar = path.with_extension("toml");
            let settings_text = match std::fs::read_to_string(&sidecar) {
                Ok(t) => Some(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    tracing::warn!("policy settings {} not read: {e}", sidecar.display());
                    continue;
                }
            };
            let mut hasher = Sha256::new();
            hasher.update(&bytes);
            if let Some(t) = &settings_text {
                hasher.update([0]);
                hasher.update(t.as_bytes());
            }
            let hash: [u8; 32] = hasher.finalize().into();
            let slot = slots.entry(name.clone()).or_default();
            if slot.loaded.as_ref().is_some_and(|(h, _)| *h == hash) || slot.failed == Some(hash) {
                continue;
            }
            if policy_name(name) == super::BUILT_IN_DEFAULT {
                tracing::warn!(
                    "policy file {} not loaded: the name \"default\" belongs to the built-in policy; rename the file (e.g. 50-{name})",
                    path.display()
                );
                slot.failed = Some(hash);
                continue;
            }
            let settings = match settings_text.as_deref().map(PolicySettings::parse) {
                None => PolicySettings::default(),
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    let keeps = if slot.loaded.is_some() {
                        "its previous version keeps running"
                    } else {
                        "the running chain is unchanged"
                    };
                    tracing::warn!(
                        "policy file {} not loaded: its settings {} are wrong: {e}; {keeps}",
                        path.display(),
                        sidecar.display()
                    );
                    slot.failed = Some(hash);
                    continue;
                }
            };
            let limits = settings.apply(self.engine.limits());
            let started = Instant::now();
            match self
                .runtime
                .block_on(self.engine.load_with(policy_name(name), &bytes, limits))
            {
                Ok(policy) => {
                    tracing::info!(
                        "policy {name} loaded ({} KiB in {} ms; memory cap {} MiB, deadline {} ms)",
                        bytes.len() / 1024,
                        started.elapsed().as_millis(),
                        limits.memory_bytes >> 20,
                        limits.deadline.as_millis()
                    );
                    slot.loaded = Some((hash, policy));
                    slot.failed = None;
                    changed = true;
                }
                Err(e) => {
                    let keeps = if slot.loaded.is_some() {
                        "its previous version keeps running"
                    } else {
                        "the running chain is unchanged"
                    };
                    tracing::warn!("policy file {} not loaded: {e}; {keeps}", path.display());
                    slot.failed = Some(hash);
                }
            }
        }
        if changed {
            let drop_ins: Vec<Arc<LoadedPolicy>> = slots
                .values()
                .filter_map(|s| s.loaded.as_ref().map(|(_, p)| p.clone()))
                .collect();
            let chain = Arc::new(PolicyChain::new(drop_ins, self.default.clone()));
            self.chain.store(chain.clone());
            // Logged once in force: the line means "serving with this chain".
            log_chain(&chain);
        }
        changed
    }

    fn wasm_files(&self) -> BTreeMap<String, PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return BTreeMap::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
            .filter_map(|p| Some((p.file_name()?.to_str()?.to_owned(), p)))
            .collect()
    }

    /// Scans now, then watches the directory from a thread of its own.
    /// Returns the watcher, which must be kept alive. Blocking.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<notify::RecommendedWatcher> {
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the plugins directory {}: {e} (create it or pass --plugins-dir)",
                self.dir.display()
            )
        })?;
        if !self.scan() {
            log_chain(&self.chain.load());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        })?;
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(|e| anyhow::anyhow!("cannot watch {}: {e}", self.dir.display()))?;
        let this = self.clone();
        std::thread::Builder::new()
            .name("policy-watch".into())
            .spawn(move || this.watch_loop(rx))?;
        Ok(watcher)
    }

    fn watch_loop(&self, rx: std::sync::mpsc::Receiver<notify::Result<notify::Event>>) {
        let mut last_stats = Instant::now();
        loop {
            match rx.recv_timeout(STATS_EVERY) {
                // Opening a file is an event too (inotify's IN_OPEN): the
                // scan's own reads must not start another scan.
                Ok(Ok(event)) if !event.kind.is_access() && touches_wasm(&event.paths) => {
                    while rx.recv_timeout(DEBOUNCE).is_ok() {}
                    self.scan();
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("watching {}: {e}", self.dir.display()),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if last_stats.elapsed() >= STATS_EVERY {
                last_stats = Instant::now();
                log_stats(&self.chain.load());
            }
        }
    }
}

/// A policy or its sidecar settings changed.
fn touches_wasm(paths: &[PathBuf]) -> bool {
    paths
        .iter()
        .any(|p| p.extension().is_some_and(|x| x == "wasm" || x == "toml"))
}

/// `50-password-rooms.wasm` → `50-password-rooms`: the policy's name in
/// logs and its key-value namespace, so state survives a reload.
fn policy_name(file: &str) -> &str {
    Path::new(file)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(file)
}

pub fn log_chain(chain: &PolicyChain) {
    let names: Vec<&str> = chain.policies().iter().map(|p| p.name()).collect();
    tracing::info!("policy chain: {}", names.join(" → "));
}

pub fn log_stats(chain: &PolicyChain) {
    for p in chain.policies() {
        let calls = p.stats.calls.load(Ordering::Relaxed);
        if calls == 0 {
            continue;
        }
        let failures = p.stats.failures.load(Ordering::Relaxed);
        let micros = p.stats.nanos.load(Ordering::Relaxed) as f64 / 1000.0;
        tracing::info!(
            policy = p.name(),
            calls,
            failures,
            "policy stats: {calls} calls, {failures} failures, {:.2} µs mean",
            micros / calls as f64
        );
    }
}
