//! Buttons and the Remix modal. Their custom ids (`v1:<action>:<job id>`) name a stored job, so
//! a click works the same before and after a restart: everything needed is read from the store,
//! nothing from memory. Each click is acknowledged first, like a command.

use serenity::all::{
    ActionRowComponent, ComponentInteraction, CreateActionRow, CreateInputText,
    CreateInteractionResponse, CreateInteractionResponseMessage, CreateModal, Http, InputTextStyle,
    ModalInteraction,
};
use serenity::builder::Builder;

use super::commands::{self, refuse_deferred, Invocation};
use super::context::Data;
use super::presenter::{self, custom_id, parse_custom_id, Action};
use crate::core::jobs::{JobId, JobRecord, RemixEdit};
use crate::core::Canceller;

/// Text input ids of the Remix modal.
const PROMPT_INPUT: &str = "prompt";
const NEGATIVE_INPUT: &str = "negative";
const SEED_INPUT: &str = "seed";

pub async fn on_component(http: &Http, data: &Data, i: &ComponentInteraction) {
    let inv = Invocation::from_component(i);
    let Some((action, job)) = parse_custom_id(&i.data.custom_id) else {
        tracing::info!(custom_id = %i.data.custom_id, "unknown button");
        let reply = CreateInteractionResponseMessage::new()
            .content(presenter::refusal("This button is no longer supported."))
            .ephemeral(true);
        let _ = CreateInteractionResponse::Message(reply)
            .execute(http, (i.id, &i.token))
            .await;
        return;
    };
    match action {
        Action::Cancel => cancel(http, data, &inv, job).await,
        Action::Reroll => reroll(http, data, &inv, job).await,
        Action::Remix => remix_modal(http, data, i, &inv, job).await,
        Action::RemixSubmit => {}
    }
}

async fn defer(http: &Http, inv: &Invocation, ephemeral: bool) -> bool {
    let response = CreateInteractionResponse::Defer(
        CreateInteractionResponseMessage::new().ephemeral(ephemeral),
    );
    let id = serenity::all::InteractionId::new(inv.interaction_id);
    match response.execute(http, (id, &inv.token)).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(what = %inv.what, error = %e, "could not acknowledge");
            false
        }
    }
}

async fn cancel(http: &Http, data: &Data, inv: &Invocation, job: JobId) {
    if !defer(http, inv, true).await {
        return;
    }
    let by = Canceller {
        user_id: inv.user_id,
        guild_id: inv.guild_id,
        is_admin: inv.is_admin,
    };
    let result = data.service.cancel(job, by).await;
    if let Err(e) = &result {
        commands::log_refusal(inv, &e.to_string());
    }
    let text = commands::cancel::cancel_text(result, job);
    let edit = serenity::all::EditInteractionResponse::new().content(text);
    if let Err(e) = edit.execute(http, &inv.token).await {
        tracing::warn!(error = %e, "could not answer a cancel");
    }
}

/// Loads a stored job for a click, with its input image (an image-to-video job is resubmitted
/// with the same image); `None` after telling the member why not.
async fn stored_job(http: &Http, data: &Data, inv: &Invocation, job: JobId) -> Option<JobRecord> {
    match data.service.get_with_image(job).await {
        Ok(Some(record)) => Some(record),
        Ok(None) => {
            refuse_deferred(http, inv, &format!("Job {job} no longer exists.")).await;
            None
        }
        Err(e) => {
            tracing::error!(job = %job, error = %e, "could not read a job");
            refuse_deferred(
                http,
                inv,
                "The bot cannot read that job right now. Try again in a moment.",
            )
            .await;
            None
        }
    }
}

/// Same settings (and the same expanded prompt), new seed: see [`JobSpec::reroll`](crate::core::JobSpec::reroll).
async fn reroll(http: &Http, data: &Data, inv: &Invocation, job: JobId) {
    if !defer(http, inv, false).await {
        return;
    }
    let Some(record) = stored_job(http, data, inv, job).await else {
        return;
    };
    let spec = record.spec.reroll(data.service.expand_available());
    commands::submit(http, data, inv, spec).await;
}

/// Opens the Remix modal, prefilled with the job's original prompt (what the member wrote,
/// not the expansion, which they can read in the embed). A modal must be the first
/// answer to the click, so the stored job is read before it (a local database read).
async fn remix_modal(
    http: &Http,
    data: &Data,
    i: &ComponentInteraction,
    inv: &Invocation,
    job: JobId,
) {
    let record = match data.service.get(job).await {
        Ok(Some(r)) => r,
        other => {
            if let Err(e) = other {
                tracing::error!(job = %job, error = %e, "could not read a job");
            }
            let text = format!("Job {job} can no longer be remixed.");
            commands::log_refusal(inv, &text);
            let reply = CreateInteractionResponseMessage::new()
                .content(presenter::refusal(&text))
                .ephemeral(true);
            let _ = CreateInteractionResponse::Message(reply)
                .execute(http, (i.id, &i.token))
                .await;
            return;
        }
    };
    let prompt = CreateInputText::new(InputTextStyle::Paragraph, "Prompt", PROMPT_INPUT)
        .value(presenter::truncate(&record.spec.prompt, 2000))
        .max_length(2000)
        .required(true);
    let mut negative =
        CreateInputText::new(InputTextStyle::Paragraph, "Negative prompt", NEGATIVE_INPUT)
            .max_length(1000)
            .required(false);
    if let Some(n) = record.spec.negative.as_deref().filter(|n| !n.is_empty()) {
        negative = negative.value(n);
    }
    let seed = CreateInputText::new(InputTextStyle::Short, "Seed (empty: a new one)", SEED_INPUT)
        .max_length(16)
        .required(false);
    let modal = CreateModal::new(custom_id(Action::RemixSubmit, job), "Remix").components(vec![
        CreateActionRow::InputText(prompt),
        CreateActionRow::InputText(negative),
        CreateActionRow::InputText(seed),
    ]);
    if let Err(e) = CreateInteractionResponse::Modal(modal)
        .execute(http, (i.id, &i.token))
        .await
    {
        tracing::warn!(error = %e, "could not open the remix modal");
    }
}

pub async fn on_modal(http: &Http, data: &Data, m: &ModalInteraction) {
    let inv = Invocation::from_modal(m);
    let Some((Action::RemixSubmit, job)) = parse_custom_id(&m.data.custom_id) else {
        tracing::info!(custom_id = %m.data.custom_id, "unknown modal");
        return;
    };
    if !defer(http, &inv, false).await {
        return;
    }
    let Some(record) = stored_job(http, data, &inv, job).await else {
        return;
    };
    let field = |id: &str| {
        m.data
            .components
            .iter()
            .flat_map(|row| row.components.iter())
            .find_map(|c| match c {
                ActionRowComponent::InputText(t) if t.custom_id == id => t.value.clone(),
                _ => None,
            })
            .unwrap_or_default()
    };
    let edit = RemixEdit {
        prompt: field(PROMPT_INPUT),
        negative: field(NEGATIVE_INPUT),
        seed: field(SEED_INPUT),
    };
    let spec = match record.spec.remix(&edit, data.service.expand_available()) {
        Ok(spec) => spec,
        Err(text) => return refuse_deferred(http, &inv, &text).await,
    };
    commands::submit(http, data, &inv, spec).await;
}
