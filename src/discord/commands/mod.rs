//! Slash commands, one file each, and what they share: who invoked them, how a job is
//! submitted, and how a refusal is told (ephemeral, one line, and a log line for the operator).

pub mod cancel;
pub mod config;
pub mod i2v;
pub mod queue;
pub mod stats;
pub mod t2v;

use serenity::all::{
    CommandInteraction, ComponentInteraction, CreateInteractionResponseFollowup, Http,
    ModalInteraction, Permissions,
};
use serenity::builder::Builder;

use super::bot::{Data, Error};
use crate::core::jobs::{JobRecord, JobSpec, Origin};
use crate::models::config::Variant;

/// Every command the bot registers.
pub fn all() -> Vec<poise::Command<Data, Error>> {
    vec![
        t2v::t2v(),
        i2v::i2v(),
        config::config(),
        queue::queue(),
        cancel::cancel(),
        stats::stats(),
    ]
}

/// The facts of an interaction a job needs, whatever kind of interaction it was.
#[derive(Clone)]
pub struct Invocation {
    pub interaction_id: u64,
    pub token: String,
    pub application_id: u64,
    pub guild_id: Option<u64>,
    pub channel_id: u64,
    pub user_id: u64,
    pub attachment_size_limit: u64,
    /// Manage Server in this channel, as Discord computed it for the member.
    pub is_admin: bool,
    /// What was invoked, for log lines.
    pub what: String,
}

fn admin(perms: Option<Permissions>) -> bool {
    perms.is_some_and(|p| p.manage_guild() || p.administrator())
}

/// The fields every interaction kind carries, under the same names in serenity's types.
macro_rules! invocation_from {
    ($i:expr, $what:expr) => {
        Invocation {
            interaction_id: $i.id.get(),
            token: $i.token.clone(),
            application_id: $i.application_id.get(),
            guild_id: $i.guild_id.map(|g| g.get()),
            channel_id: $i.channel_id.get(),
            user_id: $i.user.id.get(),
            attachment_size_limit: u64::from($i.attachment_size_limit),
            is_admin: admin($i.member.as_ref().and_then(|m| m.permissions)),
            what: $what,
        }
    };
}

impl Invocation {
    pub fn from_command(i: &CommandInteraction) -> Self {
        invocation_from!(i, format!("/{}", i.data.name))
    }

    pub fn from_component(i: &ComponentInteraction) -> Self {
        invocation_from!(i, format!("button {}", i.data.custom_id))
    }

    pub fn from_modal(i: &ModalInteraction) -> Self {
        invocation_from!(i, format!("modal {}", i.data.custom_id))
    }

    fn origin(&self) -> Origin {
        Origin {
            guild_id: self.guild_id,
            channel_id: self.channel_id,
            user_id: self.user_id,
            interaction_id: self.interaction_id,
            interaction_token: self.token.clone(),
            application_id: self.application_id,
            message_id: None,
            attachment_size_limit: Some(self.attachment_size_limit),
        }
    }
}

/// Submits a job for an interaction already deferred (non-ephemeral) and shows its first view;
/// a refusal replaces the deferred reply with an ephemeral one.
pub async fn submit(http: &Http, data: &Data, inv: &Invocation, mut spec: JobSpec) {
    let origin = inv.origin();
    if spec.shape.is_none() {
        spec.shape = data.video_shape;
    }
    match data.service.submit(spec.clone(), origin.clone()).await {
        Ok(submitted) => {
            let record =
                JobRecord::queued(submitted.id, spec, origin, 0, std::time::SystemTime::now());
            data.notifier.submitted(&record, submitted.position);
        }
        Err(refusal) => refuse_deferred(http, inv, &refusal.to_string()).await,
    }
}

/// Tells the member why nothing happens, in a message only they see. The interaction was
/// deferred publicly, so the public placeholder is deleted first.
pub async fn refuse_deferred(http: &Http, inv: &Invocation, text: &str) {
    log_refusal(inv, text);
    if let Err(e) = http.delete_original_interaction_response(&inv.token).await {
        tracing::debug!(error = %e, "could not delete the deferred reply");
    }
    let followup = CreateInteractionResponseFollowup::new()
        .content(super::presenter::refusal(text))
        .ephemeral(true);
    if let Err(e) = followup.execute(http, (None, inv.token.as_str())).await {
        tracing::warn!(error = %e, "could not send a refusal");
    }
}

/// Every refusal leaves a line in the operator's log.
pub fn log_refusal(inv: &Invocation, text: &str) {
    tracing::info!(
        what = %inv.what,
        user = inv.user_id,
        guild = ?inv.guild_id,
        channel = inv.channel_id,
        reason = text,
        "request refused"
    );
}

/// Checks a requested model against the loaded ones.
pub fn parse_variant(name: &str, loaded: &[Variant]) -> Result<Variant, String> {
    match Variant::parse(name) {
        Ok(v) if loaded.contains(&v) => Ok(v),
        _ => Err(format!(
            "The model `{name}` is not loaded on this bot (loaded: {}).",
            loaded
                .iter()
                .map(|v| v.name())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The options `/t2v` and `/i2v` share.
#[derive(Debug, Clone, Default)]
pub struct CommonOptions {
    pub negative: Option<String>,
    pub seed: Option<u64>,
    pub steps: Option<u32>,
    pub cfg: Option<f64>,
    pub eta: Option<f64>,
    pub fps: Option<u32>,
    pub variant: Option<String>,
    pub expand: Option<bool>,
}

/// Applies the member's choices over the guild's defaults. Discord enforces the registered
/// min/max; these checks catch what a modified client or a stale registration lets through.
pub fn apply_options(
    spec: &mut JobSpec,
    o: &CommonOptions,
    loaded: &[Variant],
    expand_available: bool,
) -> Result<(), String> {
    if let Some(v) = &o.variant {
        spec.variant = parse_variant(v, loaded)?;
    }
    if let Some(n) = &o.negative {
        spec.negative = Some(n.clone()).filter(|n| !n.trim().is_empty());
    }
    if let Some(seed) = o.seed {
        if seed > MAX_SEED {
            return Err(format!("The seed must be between 0 and {MAX_SEED}."));
        }
        spec.seed = seed;
    }
    if let Some(steps) = o.steps {
        spec.steps = steps as usize;
    }
    if let Some(cfg) = o.cfg {
        if !cfg.is_finite() {
            return Err("cfg must be a number.".into());
        }
        spec.cfg = cfg;
    }
    if let Some(eta) = o.eta {
        if !(0.0..=1.0).contains(&eta) {
            return Err("eta must be between 0 and 1.".into());
        }
        spec.eta = eta;
    }
    if let Some(fps) = o.fps {
        spec.fps = fps;
    }
    match o.expand {
        Some(true) if !expand_available => {
            return Err("Prompt expansion is not available on this bot.".into())
        }
        Some(e) => spec.expand = e,
        None => spec.expand &= expand_available,
    }
    Ok(())
}

/// Largest seed Discord can carry in an integer option (2^53 − 1).
pub const MAX_SEED: u64 = (1 << 53) - 1;
