//! `floor33 serve`: load the configured models and run the Discord bot until SIGINT/SIGTERM,
//! then stop taking jobs, put the running one back in the queue and exit. The start-up and
//! shutdown order is [`crate::app`]'s; this file only reads the arguments.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::config::Config;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Operator settings (default: ./floor33.toml when present, else built-in defaults).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let config = Config::load(args.config.as_deref())?;
    let token = Config::discord_token()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(crate::app::serve(config, token.expose().to_string()))
}
