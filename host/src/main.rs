//! WebRTC Chat host: one binary serving the web app over HTTPS, WSS
//! signaling on the same port, and WebAssembly policies deciding routing.
//! This file wires configuration, logging and start-up; each concern lives
//! in its own module.

use std::process::ExitCode;

use host::config::Config;

fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(host::app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line that says what is wrong and what to do.
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
