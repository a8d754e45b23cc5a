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

use super::context::{Data, Error};
use crate::core::jobs::{JobKind, JobSpec, Origin};
use crate::core::validate::{apply_options, RequestOptions};

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

    pub(crate) fn origin(&self) -> Origin {
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

/// Submits a job for an interaction already deferred (non-ephemeral); the core sends its first
/// view through the notifier. A refusal replaces the deferred reply with an ephemeral one.
pub async fn submit(http: &Http, data: &Data, inv: &Invocation, mut spec: JobSpec) {
    if spec.shape.is_none() {
        spec.shape = data.video_shape;
    }
    if let Err(refusal) = data.service.submit(spec, inv.origin()).await {
        refuse_deferred(http, inv, &refusal.to_string()).await;
    }
}

/// A job spec from a command's options over the guild's defaults, or `None` after telling
/// the member why not. The merging and its rules are the core's.
pub async fn spec_from_options(
    http: &Http,
    data: &Data,
    inv: &Invocation,
    kind: JobKind,
    prompt: String,
    options: &RequestOptions,
) -> Option<JobSpec> {
    let mut spec = match data.service.default_spec(inv.guild_id, kind, prompt).await {
        Ok(spec) => spec,
        Err(e) => {
            tracing::error!(error = %e, "could not read guild settings");
            refuse_deferred(
                http,
                inv,
                "The bot cannot read its settings right now. Try again in a moment.",
            )
            .await;
            return None;
        }
    };
    if let Err(text) = apply_options(
        &mut spec,
        options,
        data.service.variants(),
        data.service.expand_available(),
    ) {
        refuse_deferred(http, inv, &text).await;
        return None;
    }
    Some(spec)
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
