//! `floor33 serve`: load the configured models and run the Discord bot until SIGINT/SIGTERM,
//! then stop taking jobs, put the running one back in the queue and exit.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::config::Config;
use crate::core::service::ShutdownMode;
use crate::discord::download::DownloadPolicy;
use crate::discord::notifier::NotifierOptions;
use crate::discord::{proxy_base, BotOptions};
use crate::engine::device::{select_device, select_dtype};
use crate::engine::{loader, EngineHandle};
use crate::models::config::Variant;

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
    runtime.block_on(serve(config, token.expose().to_string()))
}

async fn serve(config: Config, token: String) -> Result<()> {
    let engine = spawn_engine(&config)?;
    tracing::info!(
        variants = ?engine.variants().iter().map(|v| v.name()).collect::<Vec<_>>(),
        "models loaded"
    );
    let api_base = proxy_base(&config.discord.api_base);
    if let Some(base) = &api_base {
        tracing::warn!(%base, "using a Discord API stand-in (proxy mode, no rate limiter)");
    }
    let options = BotOptions {
        token,
        api_base,
        dev_guild: config.discord.dev_guild_id,
        download: DownloadPolicy::default(),
        notifier: NotifierOptions::default(),
        video_shape: None,
    };
    let mut bot = crate::discord::start(options, config.service_config(), engine, None).await?;
    tracing::info!("floor33 is serving; stop with Ctrl-C or SIGTERM");
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        _ = bot.wait_client() => tracing::error!("the Discord connection ended"),
    }
    bot.shutdown(ShutdownMode::Requeue).await;
    Ok(())
}

fn spawn_engine(config: &Config) -> Result<EngineHandle> {
    let device = select_device(&config.engine.device)?;
    let dtype = select_dtype(&config.engine.dtype, &device)?;
    let wanted: Vec<(Variant, Vec<PathBuf>)> = config
        .engine
        .variants
        .iter()
        .map(|v| Ok((Variant::parse(&v.name)?, v.weights.clone())))
        .collect::<Result<_>>()?;
    let engine = EngineHandle::spawn(
        move || {
            wanted
                .iter()
                .map(|(variant, weights)| loader::load_pipeline(*variant, weights, &device, dtype))
                .collect()
        },
        config.engine_limits(),
    )?;
    Ok(engine)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
