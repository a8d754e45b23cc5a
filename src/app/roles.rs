//! The gateway and worker roles of `floor33 serve` (the single process is
//! [`serve_all`](super::serve_all)). Both need the PostgreSQL database they share; the worker
//! needs no gateway connection, only Discord's REST API (interaction webhooks and the channel
//! fallback).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{bot_options, gpu, prompt_expander, shutdown_signal, spawn_engine, App, Startup};
use crate::config::Config;
use crate::core::cluster::{worker_id, Role, WorkerOptions};
use crate::core::store::Location;
use crate::core::{JobService, ShutdownMode, StoreHandle};
use crate::discord::client::build_http;
use crate::discord::notifier::{DiscordNotifier, NotifierOptions};
use crate::discord::proxy_base;
use crate::engine::EngineHandle;
use crate::models::config::Variant;
use crate::ops::{Metrics, OpsServer};

/// What `floor33 serve` was asked to be.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    pub role: Role,
    /// `--device`: overrides `engine.device` (one worker process per GPU).
    pub device: Option<String>,
}

/// Refuses a role its configuration cannot serve, before anything is loaded or contacted.
pub fn check_role(config: &Config, options: &ServeOptions) -> Result<()> {
    if options.role != Role::All && !matches!(config.database.location(), Location::Postgres(_)) {
        bail!(
            "--role {} shares its jobs through PostgreSQL: set `[database] url = \"postgres://…\"` \
             (SQLite serves only --role all)",
            options.role
        );
    }
    if options.role == Role::Gateway && options.device.is_some() {
        bail!("--device is for --role worker or all; a gateway loads no model");
    }
    Ok(())
}

/// The ops listener when `[ops] listen` is set, serving the process's one [`Metrics`]; up
/// before the store and the models, so `/healthz` answers while they come up.
async fn start_ops(
    config: &Config,
    metrics: &Metrics,
    startup: &Startup,
) -> Result<Option<OpsServer>> {
    match config.ops.listen_addr()? {
        Some(addr) => Ok(Some(
            OpsServer::start(addr, metrics.clone(), startup.readiness()).await?,
        )),
        None => Ok(None),
    }
}

/// `--role gateway`: Discord in, jobs into the database; no model is loaded. Its `/metrics`
/// counts what it sees (requests, refusals, Discord errors) and reads the queue's depth and
/// waiting times from the database, so they cover every worker; `/readyz` is the store's.
pub async fn serve_gateway(config: Config, token: String) -> Result<()> {
    let metrics = Metrics::new();
    let startup = Startup::default();
    let ops = start_ops(&config, &metrics, &startup).await?;
    let mut service_config = config.service_config();
    service_config.metrics = metrics.clone();
    let store = StoreHandle::open(service_config.database.clone())
        .await
        .with_context(|| format!("opening the database {}", service_config.database))?;
    let variants = config
        .engine
        .variants
        .iter()
        .map(|v| Variant::parse(&v.name))
        .collect::<Result<Vec<_>, _>>()?;
    let engine = EngineHandle::without_models(variants);
    let _ = startup.engine.set(engine.clone());
    // Only to offer `expand`: the workers run the expansion.
    let expander = prompt_expander(&config, &metrics)?;
    let connected = crate::discord::connect(bot_options(&config, token, &metrics)).await?;
    let service = JobService::start_gateway(
        service_config,
        store,
        engine,
        connected.notifier(),
        expander,
        config.cluster.poll(),
    )
    .await
    .context("starting the gateway")?;
    let bot = connected.serve(service.clone())?;
    let _ = startup.service.set(service.clone());
    let mut app = App { service, bot };
    tracing::info!("floor33 gateway is serving; stop with Ctrl-C or SIGTERM");
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        _ = app.wait_client() => tracing::error!("the Discord connection ended"),
    }
    app.shutdown(ShutdownMode::Requeue).await;
    if let Some(ops) = ops {
        ops.stop().await;
    }
    Ok(())
}

/// `--role worker`: claims jobs from the database, runs them on this process's device and
/// delivers them through Discord's REST API. Its `/metrics` has its own jobs (states, step and
/// job durations, LLM fallbacks, Discord errors), its GPU's memory and the shared queue depth.
pub async fn serve_worker(mut config: Config, token: String, options: ServeOptions) -> Result<()> {
    if let Some(device) = &options.device {
        config.engine.device = device.clone();
    }
    let metrics = Metrics::new();
    let startup = Startup::default();
    let ops = start_ops(&config, &metrics, &startup).await?;
    let mut service_config = config.service_config();
    service_config.metrics = metrics.clone();
    let Location::Postgres(url) = service_config.database.clone() else {
        bail!("a worker needs `[database] url`");
    };
    let store = StoreHandle::open(service_config.database.clone())
        .await
        .with_context(|| format!("opening the database {}", service_config.database))?;
    let device_lock = lock_device(&service_config.database, &config.engine.device).await?;
    // Loading blocks for minutes; keep the runtime's other workers (the listener) serving.
    let (engine, device) = tokio::task::block_in_place(|| spawn_engine(&config))?;
    let _ = startup.engine.set(engine.clone());
    tracing::info!(
        variants = ?engine.variants().iter().map(|v| v.name()).collect::<Vec<_>>(),
        device = %config.engine.device,
        "models loaded"
    );
    let gpu = gpu::watch_gpu_memory(device, metrics.clone());
    let expander = prompt_expander(&config, &metrics)?;
    let api_base = proxy_base(&config.discord.api_base);
    let http = build_http(&token, api_base.as_deref())?;
    let app = http
        .get_current_application_info()
        .await
        .context("reading the application (is DISCORD_TOKEN right?)")?;
    http.set_application_id(app.id);
    let notifier = Arc::new(DiscordNotifier::new(
        Arc::new(http),
        NotifierOptions {
            metrics: metrics.clone(),
            ..NotifierOptions::default()
        },
    ));
    let worker = WorkerOptions {
        id: worker_id(&config.engine.device),
        url,
        lease_ttl: config.cluster.lease_ttl(),
        poll: config.cluster.poll(),
    };
    let service =
        JobService::start_worker(service_config, store, engine, notifier, expander, worker)
            .await
            .context("starting the worker")?;
    let _ = startup.service.set(service.clone());
    tracing::info!("floor33 worker is running; stop with Ctrl-C or SIGTERM");
    shutdown_signal().await;
    tracing::info!("shutting down");
    service.shutdown(ShutdownMode::Requeue).await;
    drop(device_lock);
    if let Some(gpu) = gpu {
        gpu.abort();
    }
    if let Some(ops) = ops {
        ops.stop().await;
    }
    tracing::info!("floor33 worker stopped");
    Ok(())
}

/// One worker per GPU and host: a worker for `cuda:N` holds a session lock on
/// (host, device) in the database for as long as it runs, so a second one for the same GPU
/// is refused with a clear error. CPU workers are not limited.
async fn lock_device(database: &Location, device: &str) -> Result<Option<DeviceLock>> {
    let Some(index) = cuda_index(device)? else {
        return Ok(None);
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let key = format!("{}/cuda:{index}", host.trim());
    let holder = StoreHandle::open(database.clone()).await?;
    let k = key.clone();
    let locked = holder.call(move |s| s.try_lock_name(&k)).await?;
    if !locked {
        bail!("another floor33 worker on this host already runs on cuda:{index}: run one worker per GPU (--device cuda:N)");
    }
    Ok(Some(DeviceLock {
        keeper: tokio::spawn(keep_device_lock(holder, key)),
    }))
}

/// How often a worker confirms its device lock.
const DEVICE_LOCK_CHECK: Duration = Duration::from_secs(5);

/// The device lock of a running worker; released when dropped.
struct DeviceLock {
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for DeviceLock {
    fn drop(&mut self) {
        // The keeper owns the lock's connection: ending it closes the connection.
        self.keeper.abort();
    }
}

/// Confirms the device lock now and then: a database restart ends the session that held it,
/// and the lock is taken again on the new connection (the store reconnects on its own).
async fn keep_device_lock(holder: StoreHandle, key: String) {
    let mut lost = false;
    loop {
        tokio::time::sleep(DEVICE_LOCK_CHECK).await;
        let k = key.clone();
        match holder.call(move |s| s.try_lock_name(&k)).await {
            Ok(true) if lost => {
                lost = false;
                tracing::info!(lock = %key, "device lock held again");
            }
            Ok(true) => {}
            Ok(false) => {
                if !lost {
                    tracing::error!(lock = %key, "another worker took this GPU's lock while the database connection was lost: stop one of them");
                }
                lost = true;
            }
            Err(e) => {
                tracing::warn!(lock = %key, error = %e, "could not confirm the device lock");
                lost = true;
            }
        }
    }
}

/// `cuda` is `cuda:0`; other devices have no index.
fn cuda_index(device: &str) -> Result<Option<u32>> {
    match device {
        "cuda" => Ok(Some(0)),
        d => match d.strip_prefix("cuda:") {
            Some(n) => n
                .parse()
                .map(Some)
                .with_context(|| format!("device {d:?}: expected cuda:N")),
            None => Ok(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_devices_have_an_index() {
        assert_eq!(cuda_index("cuda").unwrap(), Some(0));
        assert_eq!(cuda_index("cuda:3").unwrap(), Some(3));
        assert_eq!(cuda_index("cpu").unwrap(), None);
        assert_eq!(cuda_index("auto").unwrap(), None);
        assert!(cuda_index("cuda:x").is_err());
    }
}
