//! Policy overhead, measured (not asserted): one `on-message` through the
//! chain as the host makes it, p50/p99 over many calls, and how long a
//! policy takes to load (compile + link + canary) cold and from the cache;
//! then the same for a policy in each language (Rust, JavaScript, Python —
//! the examples, built by scripts/install-policy.sh) side by side, and a
//! bystander's call latency while a Python policy compiles.
//!
//!     cargo bench -p host --bench policy
//!     LANGUAGES=0 cargo bench -p host --bench policy    # without the languages part

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use host::policy::kv::KvStore;
use host::policy::{DEFAULT_POLICY, EngineSettings, PolicyChain, PolicyEngine, SandboxLimits};
use host::signaling::queue::SendBudget;
use host::signaling::rooms::{RoomRegistry, SessionHandle};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let registry = Arc::new(RoomRegistry::default());
    let peer: SocketAddr = ([127, 0, 0, 1], 1).into();
    for id in ["a", "b"] {
        let (handle, rx) = SessionHandle::new(&SendBudget::new(1, 1 << 20, 1 << 20, 0));
        std::mem::forget(rx);
        registry.register(Arc::from(id), handle, peer);
        registry
            .join(id, "room", id, 10, |_| {
                host::signaling::rooms::Outbound::Ping
            })
            .unwrap();
    }
    let kv = Arc::new(KvStore::new(1 << 20));
    let settings = |cache_dir: Option<&std::path::Path>| EngineSettings {
        rooms: registry.clone(),
        kv: kv.clone(),
        room_max: 10,
        limits: SandboxLimits {
            deadline: Duration::from_millis(20),
            memory_bytes: 32 << 20,
        },
        cache_dir: cache_dir.map(|d| d.to_path_buf()),
    };
    let engine = PolicyEngine::new(settings(None)).unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cached_engine = PolicyEngine::new(settings(Some(&cache_dir.path().join("cache")))).unwrap();

    // Load times.
    let mut cold = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        rt.block_on(engine.load("default", DEFAULT_POLICY)).unwrap();
        cold.push(t.elapsed());
    }
    rt.block_on(cached_engine.load("default", DEFAULT_POLICY))
        .unwrap();
    let mut warm = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        rt.block_on(cached_engine.load("default", DEFAULT_POLICY))
            .unwrap();
        warm.push(t.elapsed());
    }
    cold.sort();
    warm.sort();

    // One candidate-sized unicast through the chain.
    let default = rt.block_on(engine.load("default", DEFAULT_POLICY)).unwrap();
    let chain = PolicyChain::new(Vec::new(), default);
    let candidate = format!(
        r#"{{"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host generation 0 ufrag abcd network-id 1 {}","sdpMid":"0","sdpMLineIndex":0}}"#,
        "x".repeat(120)
    );
    let envelope = host::policy::Envelope {
        kind: "candidate".into(),
        from: "a".into(),
        to: Some("b".into()),
        data: Some(candidate),
    };
    const N: usize = 200_000;
    let mut samples = Vec::with_capacity(N);
    rt.block_on(async {
        for _ in 0..10_000 {
            std::hint::black_box(chain.on_message(envelope.clone()).await);
        }
        for _ in 0..N {
            let e = envelope.clone();
            let t = Instant::now();
            std::hint::black_box(chain.on_message(e).await);
            samples.push(t.elapsed());
        }
    });
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / N as u32;
    println!("policy call (default policy, candidate unicast, {N} calls):");
    println!(
        "  p50 {:.2} µs   p99 {:.2} µs   mean {:.2} µs",
        percentile(&samples, 0.50).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6
    );
    println!(
        "policy load (compile + link + canary), {} KiB component:",
        DEFAULT_POLICY.len() / 1024
    );
    println!(
        "  cold median {:.1} ms   from cache median {:.1} ms",
        percentile(&cold, 0.5).as_secs_f64() * 1e3,
        percentile(&warm, 0.5).as_secs_f64() * 1e3
    );

    if std::env::var("LANGUAGES").as_deref() != Ok("0") {
        languages(&rt, &settings, &chain, &envelope);
    }
}

/// Per language: component size, cold compile, cached load, call p50/p99
/// (an envelope each policy passes on), then a bystander's p99 through the
/// default chain while a Python policy compiles on another thread.
fn languages(
    rt: &tokio::runtime::Runtime,
    settings: &dyn Fn(Option<&std::path::Path>) -> EngineSettings,
    bystander: &PolicyChain,
    envelope: &host::policy::Envelope,
) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = tempfile::tempdir().unwrap();
    let sources = [
        ("Rust (one-to-one)", root.join("plugins/one-to-one")),
        (
            "JavaScript (unique-names)",
            root.join("plugins/unique-names/unique-names.js"),
        ),
        (
            "Python (room-sizes)",
            root.join("plugins/room-sizes/room_sizes.py"),
        ),
    ];
    println!("policies by language (same run):");
    println!(
        "  {:<26} {:>9} {:>12} {:>12} {:>9} {:>9}",
        "language", "size KiB", "cold ms", "cached ms", "p50 µs", "p99 µs"
    );
    let mut python = None;
    for (label, source) in &sources {
        let wasm = host::harness::install_policy(source, built.path(), 50).unwrap();
        let bytes = std::fs::read(&wasm).unwrap();
        let cold_engine = PolicyEngine::new(settings(None)).unwrap();
        let t = Instant::now();
        rt.block_on(cold_engine.load("p", &bytes)).unwrap();
        let cold = t.elapsed();
        let cache = tempfile::tempdir().unwrap();
        let cached_engine = PolicyEngine::new(settings(Some(&cache.path().join("cache")))).unwrap();
        rt.block_on(cached_engine.load("p", &bytes)).unwrap();
        let mut cached = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            rt.block_on(cached_engine.load("p", &bytes)).unwrap();
            cached.push(t.elapsed());
        }
        cached.sort();
        let policy = rt.block_on(cold_engine.load("p", &bytes)).unwrap();
        const N: usize = 20_000;
        let mut samples = Vec::with_capacity(N);
        rt.block_on(async {
            for _ in 0..1_000 {
                std::hint::black_box(policy.on_message(envelope).await.unwrap());
            }
            for _ in 0..N {
                let t = Instant::now();
                std::hint::black_box(policy.on_message(envelope).await.unwrap());
                samples.push(t.elapsed());
            }
        });
        samples.sort();
        println!(
            "  {:<26} {:>9} {:>12.1} {:>12.1} {:>9.2} {:>9.2}",
            label,
            bytes.len() / 1024,
            cold.as_secs_f64() * 1e3,
            percentile(&cached, 0.5).as_secs_f64() * 1e3,
            percentile(&samples, 0.50).as_secs_f64() * 1e6,
            percentile(&samples, 0.99).as_secs_f64() * 1e6,
        );
        if label.starts_with("Python") {
            python = Some(bytes);
        }
    }

    // A bystander: calls through the default chain, alone and while a
    // Python policy compiles (no cache) on a thread of its own, as the
    // host's directory watcher does.
    let python = python.unwrap();
    let sample = |until: &dyn Fn() -> bool| {
        let mut samples = Vec::new();
        rt.block_on(async {
            while !until() {
                let t = Instant::now();
                std::hint::black_box(bystander.on_message(envelope.clone()).await);
                samples.push(t.elapsed());
            }
        });
        samples.sort();
        samples
    };
    let start = Instant::now();
    let alone = sample(&|| start.elapsed() > Duration::from_secs(3));
    let compiling = std::sync::atomic::AtomicBool::new(true);
    let engine = PolicyEngine::new(settings(None)).unwrap();
    let during = std::thread::scope(|scope| {
        scope.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(engine.load("python", &python)).unwrap();
            compiling.store(false, std::sync::atomic::Ordering::Relaxed);
        });
        sample(&|| !compiling.load(std::sync::atomic::Ordering::Relaxed))
    });
    println!("bystander (default chain, candidate unicast) while a Python policy compiles:");
    println!(
        "  alone: p50 {:.2} µs p99 {:.2} µs ({} calls)   during the compile: p50 {:.2} µs p99 {:.2} µs ({} calls)",
        percentile(&alone, 0.5).as_secs_f64() * 1e6,
        percentile(&alone, 0.99).as_secs_f64() * 1e6,
        alone.len(),
        percentile(&during, 0.5).as_secs_f64() * 1e6,
        percentile(&during, 0.99).as_secs_f64() * 1e6,
        during.len(),
    );
}
