// Building a policy crate for wasm32-wasip2 with a nested cargo. Shared by
// host/build.rs (which `include!`s this file to build the default policy)
// and the test harness (any policy), so both use one command and one
// target dir, and neither rebuilds what the other built.
//
// (Plain comments: this file is also included into build.rs.)

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
            "wasm32-wasip2",
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
