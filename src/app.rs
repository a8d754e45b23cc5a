//! The one place that knows how floor33 starts and stops.
//!
//! Start-up, in this order: the operator's configuration → the store (the database is opened
//! and recovered before anything talks to Discord) → the engine (models loaded) → the core
//! ([`JobService`], with the LLM expander when configured) → the Discord adapter, which
//! receives the core and never the engine. With `[ops] listen` the ops listener comes up
//! right after the configuration, so `/healthz` answers while the models load and `/readyz`
//! says what is still missing; every part records into the one [`Metrics`] it serves.
//!
//! Shutdown, in this order: the core stops taking jobs and requeues (or finishes) the running
//! one and waits for deliveries in flight; then the gateway is closed; then the engine is
//! dropped with the last handle to it; the ops listener closes last.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use candle_core::Device;

use crate::config::Config;
use crate::core::cluster::Role;
use crate::core::{JobService, PromptExpander, ServiceConfig, ShutdownMode, StoreHandle};
use crate::discord::notifier::NotifierOptions;
use crate::discord::{proxy_base, BotOptions, RunningBot};
use crate::engine::device::{select_device, select_dtype};
use crate::engine::{loader, EngineError, EngineHandle};
use crate::llm::{ExpanderConfig, LlmExpander};
use crate::models::config::Variant;
use crate::models::tokenizer::ClipTokenizer;
use crate::ops::{probe_fn, Metrics, OpsServer, Readiness};

/// A running floor33: the core and the Discord adapter in front of it.
pub struct App {
    pub service: JobService,
    bot: RunningBot,
}

/// Starts the core on `engine` and the Discord adapter in front of it. The store is opened
/// (and what a previous run left is recovered) before Discord is contacted.
pub async fn start(
    bot: BotOptions,
    service: ServiceConfig,
    engine: EngineHandle,
    expander: Option<Arc<dyn PromptExpander>>,
) -> Result<App> {
    let store = StoreHandle::open(service.database.clone())
        .await
        .with_context(|| format!("opening the database {}", service.database))?;
    let connected = crate::discord::connect(bot).await?;
    let service =
        JobService::start_with_store(service, store, engine, connected.notifier(), expander)
            .await
            .context("starting the job service")?;
    let bot = connected.serve(service.clone())?;
    Ok(App { service, bot })
}

impl App {
    /// Stops taking jobs, treats the running one as `mode` says, waits for deliveries in
    /// flight, then closes the gateway connection. The engine goes with the last handle.
    pub async fn shutdown(self, mode: ShutdownMode) {
        self.service.shutdown(mode).await;
        self.bot.close().await;
        tracing::info!("floor33 stopped");
    }

    /// Resolves when the gateway client ends on its own (e.g. the token was rejected).
    pub async fn wait_client(&mut self) {
        self.bot.wait_client().await;
    }
}

mod engine_port;
mod gpu;
mod roles;

pub use roles::{check_role, ServeOptions};

/// `floor33 serve --role …`: the role's configuration is checked first, then the role runs
/// until SIGINT/SIGTERM. `all` is the single process of [`serve_all`].
pub async fn serve(config: Config, token: String, options: ServeOptions) -> Result<()> {
    check_role(&config, &options)?;
    match options.role {
        Role::All => serve_all(config, token).await,
        Role::Gateway => roles::serve_gateway(config, token).await,
        Role::Worker => roles::serve_worker(config, token, options).await,
    }
}

/// The single process: runs until SIGINT/SIGTERM (or until the gateway ends), then shuts down
/// with the running job put back in the queue.
pub async fn serve_all(config: Config, token: String) -> Result<()> {
    let metrics = Metrics::new();
    let startup = Startup::default();
    // Up before the models load: /healthz answers at once, /readyz says what is missing.
    let ops = match config.ops.listen_addr()? {
        Some(addr) => Some(OpsServer::start(addr, metrics.clone(), startup.readiness()).await?),
        None => None,
    };
    // Loading blocks for minutes; keep the runtime's other workers (the listener) serving.
    let (engine, device) = tokio::task::block_in_place(|| spawn_engine(&config))?;
    let _ = startup.engine.set(engine.clone());
    tracing::info!(
        variants = ?engine.variants().iter().map(|v| v.name()).collect::<Vec<_>>(),
        "models loaded"
    );
    let gpu = gpu::watch_gpu_memory(device, metrics.clone());
    let expander = prompt_expander(&config, &metrics)?;
    let options = bot_options(&config, token, &metrics);
    if let Some(base) = &options.api_base {
        tracing::warn!(%base, "using a Discord API stand-in (proxy mode, no rate limiter)");
    }
    let mut service = config.service_config();
    service.metrics = metrics;
    let mut app = start(options, service, engine, expander).await?;
    let _ = startup.service.set(app.service.clone());
    tracing::info!("floor33 is serving; stop with Ctrl-C or SIGTERM");
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        _ = app.wait_client() => tracing::error!("the Discord connection ended"),
    }
    app.shutdown(ShutdownMode::Requeue).await;
    if let Some(gpu) = gpu {
        gpu.abort();
    }
    if let Some(ops) = ops {
        ops.stop().await;
    }
    Ok(())
}

/// What `/readyz` looks at, filled in as start-up goes: ready once the models are loaded and
/// the core's store answers.
#[derive(Clone, Default)]
struct Startup {
    engine: Arc<OnceLock<EngineHandle>>,
    service: Arc<OnceLock<JobService>>,
}

impl Startup {
    fn readiness(&self) -> Readiness {
        let engine = self.engine.clone();
        let service = self.service.clone();
        Readiness::new()
            .with(probe_fn("models", move || {
                let loaded = match engine.get() {
                    Some(e) if !e.variants().is_empty() => Ok(()),
                    Some(_) => Err("no model loaded".to_string()),
                    None => Err("loading".to_string()),
                };
                async move { loaded }
            }))
            .with(probe_fn("store", move || {
                let service = service.get().cloned();
                async move {
                    match service {
                        Some(s) => s.ping_store().await.map_err(|e| format!("no answer: {e}")),
                        None => Err("not open yet".to_string()),
                    }
                }
            }))
    }
}

/// Loads the models on the configured device; returns the engine and that device (for the
/// GPU memory gauges).
pub(crate) fn spawn_engine(config: &Config) -> Result<(EngineHandle, Device)> {
    let device = select_device(&config.engine.device)?;
    let dtype = select_dtype(&config.engine.dtype, &device)?;
    let wanted: Vec<(Variant, Vec<PathBuf>)> = config
        .engine
        .variants
        .iter()
        .map(|v| Ok((Variant::parse(&v.name)?, v.weights.clone())))
        .collect::<Result<_>>()?;
    let on = device.clone();
    let engine = EngineHandle::spawn(
        move || {
            // Serve what fits; what does not is logged (out of memory beside the others,
            // missing weights) and left out of the commands' model choices.
            let (loaded, failed) = loader::load_pipelines(&wanted, &on, dtype);
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
    Ok((engine, device))
}

/// The LLM prompt expander when `[llm] base_url` is configured.
pub(crate) fn prompt_expander(
    config: &Config,
    metrics: &Metrics,
) -> Result<Option<Arc<dyn PromptExpander>>> {
    let Some(cfg) = ExpanderConfig::from_llm_config(config)? else {
        return Ok(None);
    };
    tracing::info!(base_url = %cfg.base_url, model = %cfg.model, "prompt expansion enabled");
    let expander =
        LlmExpander::new(cfg, Arc::new(ClipTokenizer::new()?))?.with_metrics(metrics.clone());
    Ok(Some(Arc::new(expander)))
}

pub(crate) async fn shutdown_signal() {
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

/// The Discord adapter's options from the operator's config; every role builds them here.
fn bot_options(config: &Config, token: String, metrics: &Metrics) -> BotOptions {
    BotOptions {
        token,
        api_base: proxy_base(&config.discord.api_base),
        dev_guild: config.discord.dev_guild_id,
        download: config.download_policy(),
        notifier: NotifierOptions {
            metrics: metrics.clone(),
            ..NotifierOptions::default()
        },
        video_shape: config.discord.video_shape_for_tests,
    }
}
