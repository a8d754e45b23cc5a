//! `floor33 serve`: load the configured models and run the Discord bot until SIGINT/SIGTERM,
//! then stop taking jobs, put the running one back in the queue and exit. The start-up and
//! shutdown order is [`crate::app`]'s; this file only reads the arguments.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::app::{check_role, ServeOptions};
use crate::config::Config;
use crate::core::cluster::Role;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Operator settings (default: ./floor33.toml when present, else built-in defaults).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// all (everything in one process), gateway (Discord only) or worker (engine only); the
    /// last two share a PostgreSQL `database.url`.
    #[arg(long, default_value = "all")]
    pub role: String,
    /// The device this process computes on, overriding `engine.device` (one worker per GPU:
    /// cuda:0, cuda:1, …).
    #[arg(long)]
    pub device: Option<String>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let role = args.role.parse::<Role>().map_err(anyhow::Error::msg)?;
    let config = Config::load(args.config.as_deref())?;
    let options = ServeOptions {
        role,
        device: args.device,
    };
    check_role(&config, &options)?;
    let token = Config::discord_token()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(crate::app::serve(
        config,
        token.expose().to_string(),
        options,
    ))
}
