//! `floor33 serve`: load the configured models and run the Discord bot until SIGINT/SIGTERM,
//! then stop taking jobs, put the running one back in the queue and exit.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use crate::config::Config;
use crate::core::expand::{ExpanderConfig, LlmExpander};
use crate::core::service::PromptExpander;
use crate::core::service::ShutdownMode;
use crate::discord::notifier::NotifierOptions;
use crate::discord::{proxy_base, BotOptions};
use crate::engine::device::{select_device, select_dtype};
use crate::engine::{loader, EngineError, EngineHandle};
use crate::models::config::Variant;
use crate::models::tokenizer::ClipTokenizer;

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
        download: config.download_policy(),
        notifier: NotifierOptions::default(),
        video_shape: None,
    };
    let expander = prompt_expander(&config)?;
    let mut bot = crate::discord::start(options, config.service_config(), engine, expander).await?;
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
            // Serve what fits; what does not is logged (out of memory beside the others,
            // missing weights) and left out of the commands' model choices.
            let (loaded, failed) = loader::load_pipelines(&wanted, &device, dtype);
            if loaded.is_empty() {
                let reasons: Vec<String> =
                    failed.iter().map(|(v, e)| format!("{v}: {e}")).collect();
                return Err(EngineError::BadRequest(format!(
                    "no model could be loaded ({})",
                    reasons.join("; ")
                )));
            }
            Ok(loaded)
        },
        config.engine_limits(),
    )?;
    Ok(engine)
}

/// The LLM prompt expander when `[llm] base_url` is configured.
fn prompt_expander(config: &Config) -> Result<Option<Arc<dyn PromptExpander>>> {
    let Some(cfg) = ExpanderConfig::from_llm_config(config)? else {
        return Ok(None);
    };
    tracing::info!(base_url = %cfg.base_url, model = %cfg.model, "prompt expansion enabled");
    let expander = LlmExpander::new(cfg, Arc::new(ClipTokenizer::new()?))?;
    Ok(Some(Arc::new(expander)))
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
