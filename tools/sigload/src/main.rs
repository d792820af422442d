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
        let mut addrs = Vec::with_capacity(cfg.urls.len());
        for url in &cfg.urls {
            addrs.push(run::resolve_loopback(url).await?);
        }
        if cfg.urls.iter().any(|u| u.starts_with("ws://"))
            && cfg.urls.iter().any(|u| !u.starts_with("ws://"))
        {
            anyhow::bail!("--url: either every URL is ws:// or none is");
        }
        let connector = if cfg.urls[0].starts_with("ws://") {
            tokio_tungstenite::Connector::Plain
        } else {
            let tls = tls::client_config(args.insecure, args.ca_file.as_deref())?;
            tokio_tungstenite::Connector::Rustls(tls)
        };
        if !args.json {
            eprintln!(
                "sigload: {} sessions ({} rooms x {}) -> {} ({}), {}",
                cfg.rooms * cfg.clients,
                cfg.rooms,
                cfg.clients,
                cfg.url_text(),
                addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                if cfg.idle { "idle" } else { "load" }
            );
        }
        run::run(cfg, connector, addrs, threads, nofile).await
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
