// Building a policy crate for wasm32-wasip2 with a nested cargo. Shared by
// host/build.rs (which `include!`s this file to build the default policy)
// and the test harness (any policy), so both use one command and one
// target dir, and neither rebuilds what the other built.
//
// (Plain comments: this file is also included into build.rs.)

/// The target policies are built for.
pub const POLICY_TARGET: &str = "wasm32-wasip2";

/// Makes sure the toolchain that builds policies has the wasm32-wasip2
/// standard library. rustup installs the `targets` of rust-toolchain.toml
/// only when it installs the toolchain itself, so on most machines the
/// target is missing the first time. Returns `Ok(true)` when it had to be
/// installed (with rustup, for the toolchain the nested cargo will use),
/// and an error of one line naming the fix when it cannot be.
pub fn ensure_policy_target(workspace: &std::path::Path) -> Result<bool, String> {
    // The nested cargo runs `rustc` from PATH in the workspace (the outer
    // RUSTC is removed), under the same RUSTUP_TOOLCHAIN: ask that one.
    let sysroot = std::process::Command::new("rustc")
        .current_dir(workspace)
        .env_remove("RUSTC")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let installed = |sysroot: &str| {
        std::path::Path::new(sysroot)
            .join("lib/rustlib")
            .join(POLICY_TARGET)
            .join("lib")
            .is_dir()
    };
    if sysroot.as_deref().is_some_and(installed) {
        return Ok(false);
    }
    let rustup = std::process::Command::new("rustup")
        .current_dir(workspace)
        .args(["target", "add", POLICY_TARGET])
        .output();
    match rustup {
        Ok(o) if o.status.success() => Ok(true),
        Ok(o) => Err(format!(
            "`rustup target add {POLICY_TARGET}` failed: {}",
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .replace('\n', " / ")
        )),
        Err(_) => Err(format!(
            "the Rust standard library for {POLICY_TARGET} is missing and rustup is not on PATH: \
             install it for your toolchain (with rustup: `rustup target add {POLICY_TARGET}`) and run cargo again"
        )),
    }
}

/// The part of a failed nested cargo's stderr worth showing: from its
/// first `error` line on (or the last lines when there is none), capped.
pub fn cargo_error_lines(stderr: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("error"))
        .unwrap_or(lines.len().saturating_sub(40));
    lines[start..]
        .iter()
        .take(80)
        .map(|l| l.to_string())
        .collect()
}

/// A `cargo build` of `package` for wasm32-wasip2 (release, no debug info,
/// LTO: small components compile faster in the host) in `<workspace>/target/policy-build`,
/// and the path of the `.wasm` it makes. The outer cargo's variables are
/// removed: they would point the nested build at the outer target,
/// profile, flags and jobserver.
pub fn policy_build_command(
    cargo: &str,
    workspace: &std::path::Path,
    package: &str,
) -> (std::process::Command, std::path::PathBuf) {
    let target_dir = workspace.join("target/policy-build");
    let mut cmd = std::process::Command::new(cargo);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let leaks = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTC"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTDOC"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "RUSTC_LINKER"
                    | "MAKEFLAGS"
                    | "MFLAGS"
            );
        if leaks {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(workspace)
        .args([
            "build",
            "--release",
            "--target",
            POLICY_TARGET,
            "-p",
            package,
        ])
        .args(["--config", "profile.release.debug=false"])
        .args(["--config", "profile.release.strip=true"])
        .args(["--config", "profile.release.lto=true"])
        .arg("--target-dir")
        .arg(&target_dir);
    let wasm = target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    (cmd, wasm)
}
