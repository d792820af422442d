//! Builds what the host embeds: the default policy component (a nested
//! `cargo build --target wasm32-wasip2` with its own target dir; the target
//! is installed with rustup when missing) and, with the `web` feature, the
//! web app (`npm ci` when the lock file changed, `npm run build` when web/
//! did).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("host/ lives in the workspace")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));

    if let Err(e) = build_default_policy(&root, &out_dir) {
        fail(&e);
    }
    // The web app is the `web` feature (on by default): policy crates and
    // their tests use the host as a library without Node.js.
    if env::var_os("CARGO_FEATURE_WEB").is_some()
        && let Err(e) = build_web(&root, &out_dir)
    {
        fail(&e);
    }
}

fn fail(message: &str) -> ! {
    println!("cargo::error={message}");
    std::process::exit(0);
}

include!("src/policy_build.rs");

fn build_default_policy(root: &Path, out_dir: &Path) -> Result<(), String> {
    println!("cargo::rerun-if-changed={}", root.join("wit").display());
    // The default policy is written with the Rust SDK.
    for sdk in ["sdk/rust/src", "sdk/rust/wit", "sdk/rust/Cargo.toml"] {
        println!("cargo::rerun-if-changed={}", root.join(sdk).display());
    }
    println!(
        "cargo::rerun-if-changed={}",
        root.join("plugins/default/src").display()
    );
    println!(
        "cargo::rerun-if-changed={}",
        root.join("plugins/default/Cargo.toml").display()
    );

    if ensure_policy_target(root)? {
        println!(
            "cargo::warning=installed the {POLICY_TARGET} target with rustup (policies are built for it)"
        );
    }
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let (mut cmd, wasm) = policy_build_command(&cargo, root, "default-policy");
    let output = cmd
        .output()
        .map_err(|e| format!("could not run cargo to build the default policy: {e}"))?;
    if !output.status.success() {
        // Cargo shows a build script's output only as warnings: pass on
        // what the nested cargo said, then the one-line verdict.
        for line in cargo_error_lines(&output.stderr) {
            println!("cargo::warning={line}");
        }
        return Err(format!(
            "building plugins/default for {POLICY_TARGET} failed (the nested cargo's errors are above)"
        ));
    }
    fs::copy(&wasm, out_dir.join("default-policy.wasm"))
        .map_err(|e| format!("could not copy {}: {e}", wasm.display()))?;
    Ok(())
}

/// The inputs of the web build; watching all of web/ would see node_modules,
/// which the build itself writes. Only paths that exist are watched: cargo
/// treats a missing watched path as changed and would re-run this script
/// (and recompile the host) on every build.
const WEB_INPUTS: &[&str] = &[
    "src",
    "public",
    "index.html",
    "package.json",
    "package-lock.json",
    "vite.config.ts",
    "tsconfig.json",
];

fn build_web(root: &Path, out_dir: &Path) -> Result<(), String> {
    let web = root.join("web");
    for input in WEB_INPUTS {
        let path = web.join(input);
        if path.exists() {
            println!("cargo::rerun-if-changed={}", path.display());
        }
    }
    let dist = out_dir.join("web");
    let stamp_file = out_dir.join("web.stamp");
    let stamp = format!("{:016x}", hash_inputs(&web, WEB_INPUTS));
    if dist.join("index.html").is_file()
        && fs::read_to_string(&stamp_file).ok().as_deref() == Some(&stamp)
    {
        return Ok(());
    }

    let npm = if cfg!(windows) { "npm.cmd" } else { "npm" };
    match Command::new(npm).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => {
            return Err("building the web app needs Node.js 20+ and npm on PATH: install them (Debian: apt-get install nodejs npm) and run cargo again".into())
        }
    }

    // `npm ci` only when the lock file changed since the last install.
    let lock_hash = format!("{:016x}", hash_inputs(&web, &["package-lock.json"]));
    let lock_stamp = web.join("node_modules/.webrtc-chat-lock");
    if fs::read_to_string(&lock_stamp).ok().as_deref() != Some(&lock_hash) {
        run(
            Command::new(npm)
                .current_dir(&web)
                .args(["ci", "--no-audit", "--no-fund"]),
            "npm ci",
        )?;
        fs::write(&lock_stamp, &lock_hash)
            .map_err(|e| format!("could not write {}: {e}", lock_stamp.display()))?;
    }
    run(
        Command::new(npm)
            .current_dir(&web)
            .args(["run", "build", "--", "--outDir"])
            .arg(&dist)
            .arg("--emptyOutDir"),
        "npm run build",
    )?;
    fs::write(&stamp_file, stamp)
        .map_err(|e| format!("could not write {}: {e}", stamp_file.display()))?;
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("could not start {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed in web/ (see its output above)"))
    }
}

fn hash_inputs(base: &Path, inputs: &[&str]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for input in inputs {
        hash_path(&base.join(input), &mut hasher);
    }
    hasher.finish()
}

fn hash_path(path: &Path, hasher: &mut DefaultHasher) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(path)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        entries.sort();
        for entry in entries {
            hash_path(&entry, hasher);
        }
    } else if let Ok(bytes) = fs::read(path) {
        path.hash(hasher);
        bytes.hash(hasher);
    }
}
