//! `/t2v`: text to video.

use super::{spec_from_options, submit, Invocation};
use crate::core::jobs::JobKind;
use crate::core::validate::RequestOptions;
use crate::discord::context::{Context, Error};

/// Make a short video from a text prompt.
#[allow(clippy::too_many_arguments)]
#[poise::command(slash_command)]
pub async fn t2v(
    ctx: Context<'_>,
    #[description = "What the video shows"]
    #[max_length = 2000]
    prompt: String,
    #[description = "What to keep out of the video"]
    #[max_length = 1000]
    negative: Option<String>,
    #[description = "Random seed: the same seed and settings make the same video"]
    #[min = 0]
    #[max = 9007199254740991_u64]
    seed: Option<u64>,
    #[description = "Sampling steps (more is slower and finer)"]
    #[min = 1]
    #[max = 200]
    steps: Option<u32>,
    #[description = "Guidance scale: how closely to follow the prompt"]
    #[min = 1.0]
    #[max = 30.0]
    cfg: Option<f64>,
    #[description = "DDIM eta: 0 deterministic, 1 more varied"]
    #[min = 0.0]
    #[max = 1.0]
    eta: Option<f64>,
    #[description = "Motion speed the model is conditioned on (frames per second)"]
    #[min = 1]
    #[max = 60]
    fps: Option<u32>,
    #[description = "Model to use"] variant: Option<String>,
    #[description = "Let a language model enrich the prompt first"] expand: Option<bool>,
) -> Result<(), Error> {
    let Context::Application(actx) = ctx else {
        return Ok(());
    };
    // Acknowledge before anything that can take time: Discord allows three seconds.
    ctx.defer().await?;
    let inv = Invocation::from_command(actx.interaction);
    let data = ctx.data();
    let http = ctx.serenity_context().http.clone();
    let options = RequestOptions {
        negative,
        seed,
        steps,
        cfg,
        eta,
        fps,
        variant,
        expand,
    };
    let Some(spec) =
        spec_from_options(&http, data, &inv, JobKind::TextToVideo, prompt, &options).await
    else {
        return Ok(());
    };
    submit(&http, data, &inv, spec).await;
    Ok(())
}
