//! sigload: load generator for the WebRTC Chat signaling protocol.

mod config;
mod payload;
mod proc;
mod report;
mod run;
mod stats;
mod tls;

use anyhow::Result;
use clap::Parser;

fn main() -> Result<()> {
    let args = config::Args::parse();
    let cfg = args.config()?;
    let nofile = proc::raise_nofile_limit();
    let threads = args
        .threads
        .or_else(|| proc::allowed_cpus(None))
        .unwrap_or(1)
        .max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let addr = run::resolve_loopback(&cfg.url).await?;
        let connector = if cfg.url.starts_with("ws://") {
            tokio_tungstenite::Connector::Plain
        } else {
            let tls = tls::client_config(args.insecure, args.ca_file.as_deref())?;
            tokio_tungstenite::Connector::Rustls(tls)
        };
        if !args.json {
            eprintln!(
                "sigload: {} sessions ({} rooms x {}) -> {} ({addr}), {}",
                cfg.rooms * cfg.clients,
                cfg.rooms,
                cfg.clients,
                cfg.url,
                if cfg.idle { "idle" } else { "load" }
            );
        }
        run::run(cfg, connector, addr, threads, nofile).await
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
