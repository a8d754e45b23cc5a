//! The Discord adapter's connection: the serenity client and the poise framework. It is
//! started in two steps by [`crate::app`]: [`connect`] builds the client and the notifier (the
//! core needs the notifier to start), [`Connected::serve`] receives the started
//! [`JobService`] and opens the gateway. The adapter never sees the engine.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use serenity::all::{Client, ClientBuilder, FullEvent, GatewayIntents, Interaction, ShardManager};

use super::client::{build_http, register, registration_json};
use super::commands::{self, Invocation};
use super::context::{reply_ephemeral, Data, Error};
use super::download::DownloadPolicy;
use super::notifier::{DiscordNotifier, NotifierOptions};
use super::{components, presenter};
use crate::core::jobs::VideoShape;
use crate::core::settings::SettingKey;
use crate::core::JobService;

/// Everything the adapter needs from the operator's configuration.
#[derive(Clone)]
pub struct BotOptions {
    pub token: String,
    /// REST base of a Discord that is not discord.com (proxy mode), e.g.
    /// `http://127.0.0.1:4000`; `None` in production.
    pub api_base: Option<String>,
    /// Register the commands in this guild only.
    pub dev_guild: Option<u64>,
    pub download: DownloadPolicy,
    pub notifier: NotifierOptions,
    /// Make every video at this size instead of the model's default (small CPU deployments
    /// and tests).
    pub video_shape: Option<VideoShape>,
}

impl std::fmt::Debug for BotOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotOptions")
            .field("token", &"<redacted>")
            .field("api_base", &self.api_base)
            .field("dev_guild", &self.dev_guild)
            .finish_non_exhaustive()
    }
}

/// The API base for serenity's proxy mode from the configured one: none for Discord itself;
/// otherwise without the `/api/v10` suffix, which serenity keeps in its paths.
pub fn proxy_base(configured: &str) -> Option<String> {
    let trimmed = configured.trim().trim_end_matches('/');
    if trimmed.is_empty() || trimmed.starts_with("https://discord.com") {
        return None;
    }
    Some(
        trimmed
            .strip_suffix("/api/v10")
            .or_else(|| trimmed.strip_suffix("/api"))
            .unwrap_or(trimmed)
            .to_string(),
    )
}

/// A client ready to open the gateway, and the notifier the core will talk to.
pub struct Connected {
    client: Client,
    notifier: Arc<DiscordNotifier>,
    options: BotOptions,
    /// Filled by [`Connected::serve`]; the framework takes it when the gateway is ready.
    data: Arc<Mutex<Option<Data>>>,
}

/// Builds the client (against Discord or the configured stand-in) and reads the application id,
/// which webhook routes need before the gateway's READY brings it: jobs recovered from the
/// store are delivered as soon as the core starts. The gateway is not opened yet.
pub async fn connect(options: BotOptions) -> Result<Connected> {
    let http = build_http(&options.token, options.api_base.as_deref())?;
    let data: Arc<Mutex<Option<Data>>> = Arc::new(Mutex::new(None));
    let setup_data = data.clone();
    let dev_guild = options.dev_guild;
    let framework = poise::Framework::<Data, Error>::builder()
        .options(poise::FrameworkOptions {
            commands: commands::all(),
            on_error: |err| Box::pin(on_error(err)),
            event_handler: |fctx, event| Box::pin(on_event(fctx, event)),
            initialize_owners: false,
            ..Default::default()
        })
        .setup(move |ctx, ready, framework| {
            Box::pin(async move {
                let data = setup_data
                    .lock()
                    .unwrap()
                    .take()
                    .context("bot data missing at setup")?;
                let variant_names: Vec<String> = data
                    .service
                    .variants()
                    .iter()
                    .map(|v| v.name().to_string())
                    .collect();
                let commands = poise::builtins::create_application_commands(
                    &framework.options().commands,
                );
                let json = registration_json(
                    commands,
                    &variant_names,
                    data.service.expand_available(),
                )?;
                let json = add_setting_keys(json);
                let n = register(&ctx.http, &json, dev_guild).await?;
                tracing::info!(commands = n, bot = %ready.user.name, guild = ?dev_guild, "commands registered");
                Ok(data)
            })
        })
        .build();

    let client = ClientBuilder::new_with_http(http, GatewayIntents::GUILDS)
        .framework(framework)
        .await
        .context("building the Discord client")?;
    let app = client
        .http
        .get_current_application_info()
        .await
        .context("reading the application (is DISCORD_TOKEN right?)")?;
    client.http.set_application_id(app.id);
    let notifier = Arc::new(DiscordNotifier::new(
        client.http.clone(),
        options.notifier.clone(),
    ));
    Ok(Connected {
        client,
        notifier,
        options,
        data,
    })
}

impl Connected {
    /// The core's notifier for this connection.
    pub fn notifier(&self) -> Arc<DiscordNotifier> {
        self.notifier.clone()
    }

    /// Hands the started core to the command handlers and opens the gateway; commands are
    /// registered once it is ready.
    pub fn serve(self, service: JobService) -> Result<RunningBot> {
        let data = Data::new(
            service,
            self.options.download.clone(),
            self.options.video_shape,
        )?;
        *self.data.lock().unwrap() = Some(data);
        let shard_manager = self.client.shard_manager.clone();
        let mut client = self.client;
        let task = tokio::spawn(async move {
            if let Err(e) = client.start().await {
                tracing::error!(error = %e, "Discord client stopped");
            }
        });
        Ok(RunningBot {
            shard_manager,
            client: task,
        })
    }
}

/// An open gateway connection.
pub struct RunningBot {
    shard_manager: Arc<ShardManager>,
    client: tokio::task::JoinHandle<()>,
}

impl RunningBot {
    /// Closes the gateway connection (the core stops first: see [`crate::app::App::shutdown`]).
    pub async fn close(self) {
        self.shard_manager.shutdown_all().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.client).await;
        tracing::info!("discord bot stopped");
    }

    /// Resolves when the gateway client ends on its own (e.g. the token was rejected).
    pub async fn wait_client(&mut self) {
        let _ = (&mut self.client).await;
    }
}

/// `key` options offer the setting names as choices.
fn add_setting_keys(mut json: serde_json::Value) -> serde_json::Value {
    fn walk(v: &mut serde_json::Value) {
        if let Some(options) = v.get_mut("options").and_then(|o| o.as_array_mut()) {
            for o in options {
                if o.get("name").and_then(|n| n.as_str()) == Some("key") {
                    o["choices"] = SettingKey::ALL
                        .iter()
                        .map(|k| serde_json::json!({"name": k.name(), "value": k.name()}))
                        .collect();
                }
                walk(o);
            }
        }
    }
    if let Some(cmds) = json.as_array_mut() {
        cmds.iter_mut().for_each(walk);
    }
    json
}

async fn on_event(
    fctx: poise::FrameworkContext<'_, Data, Error>,
    event: &FullEvent,
) -> Result<(), Error> {
    let data = fctx.user_data;
    let http = &fctx.serenity_context.http;
    match event {
        FullEvent::InteractionCreate {
            interaction: Interaction::Component(i),
        } => components::on_component(http, data, i).await,
        FullEvent::InteractionCreate {
            interaction: Interaction::Modal(m),
        } => components::on_modal(http, data, m).await,
        FullEvent::Resume { .. } => {
            // Deliveries that failed while the connection was down get another chance.
            match data.service.redeliver_pending().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "redelivering after reconnect"),
                Err(e) => tracing::warn!(error = %e, "could not list pending deliveries"),
            }
        }
        _ => {}
    }
    Ok(())
}

/// Every error becomes a short ephemeral answer and an operator log line; nothing panics out.
async fn on_error(err: poise::FrameworkError<'_, Data, Error>) {
    use poise::FrameworkError as E;
    let (ctx, text) = match &err {
        E::MissingUserPermissions {
            ctx,
            missing_permissions,
            ..
        } => {
            let needed = missing_permissions
                .map(|p| p.to_string())
                .unwrap_or_else(|| "Manage Server".into());
            (
                *ctx,
                format!("This command is for server admins ({needed})."),
            )
        }
        E::GuildOnly { ctx, .. } => (*ctx, "This command works in servers only.".into()),
        E::Command { ctx, error, .. } => {
            tracing::error!(command = %ctx.command().qualified_name, error = %format!("{error:#}"), "command failed");
            (
                *ctx,
                "Something went wrong on the bot's side; the operator has the details.".into(),
            )
        }
        E::ArgumentParse { ctx, error, .. } => {
            (*ctx, format!("An option could not be read ({error})."))
        }
        E::CommandPanic { ctx, payload, .. } => {
            tracing::error!(command = %ctx.command().qualified_name, panic = ?payload, "command panicked");
            (
                *ctx,
                "Something went wrong on the bot's side; the operator has the details.".into(),
            )
        }
        other => {
            tracing::warn!(error = %other, "framework error");
            return;
        }
    };
    if let poise::Context::Application(a) = ctx {
        commands::log_refusal(&Invocation::from_command(a.interaction), &text);
    }
    if let Err(e) = reply_ephemeral(ctx, &presenter::refusal(&text)).await {
        tracing::warn!(error = %e, "could not send an error reply");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_base_strips_the_api_path_and_ignores_discord() {
        assert_eq!(proxy_base("https://discord.com/api/v10"), None);
        assert_eq!(proxy_base(""), None);
        assert_eq!(
            proxy_base("http://127.0.0.1:4000/api/v10/").as_deref(),
            Some("http://127.0.0.1:4000")
        );
        assert_eq!(
            proxy_base("http://127.0.0.1:4000").as_deref(),
            Some("http://127.0.0.1:4000")
        );
    }
}
