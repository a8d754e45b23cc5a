//! `/i2v`: image to video. The bot downloads the image itself (see `download`) right away,
//! since Discord's signed attachment URLs expire.

use super::{refuse_deferred, spec_from_options, submit, Invocation};
use crate::core::jobs::JobKind;
use crate::core::validate::RequestOptions;
use crate::discord::context::{Context, Error};
use crate::discord::download::{self, AttachmentMeta};
use crate::engine::image_input::ImageFit;

/// Animate an image, guided by a text prompt.
#[allow(clippy::too_many_arguments)]
#[poise::command(slash_command)]
pub async fn i2v(
    ctx: Context<'_>,
    #[description = "The image to animate (PNG, JPEG or WebP)"] image: serenity::all::Attachment,
    #[description = "What happens in the video"]
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
    #[description = "How the image meets the frame: crop (keeps proportions) or stretch"]
    fit: Option<String>,
) -> Result<(), Error> {
    let Context::Application(actx) = ctx else {
        return Ok(());
    };
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
    let Some(mut spec) =
        spec_from_options(&http, data, &inv, JobKind::ImageToVideo, prompt, &options).await
    else {
        return Ok(());
    };
    if let Some(word) = fit {
        let Some(image_fit) = ImageFit::parse(&word) else {
            let text = format!("`fit` is `crop` or `stretch`, not `{word}`.");
            refuse_deferred(&http, &inv, &text).await;
            return Ok(());
        };
        spec.image_fit = image_fit;
    }
    // The cheap limits first: a member in cooldown or over a limit costs no download.
    if let Err(refusal) = data.service.precheck(&inv.origin()).await {
        refuse_deferred(&http, &inv, &refusal.to_string()).await;
        return Ok(());
    }

    let meta = AttachmentMeta {
        filename: image.filename.clone(),
        content_type: image.content_type.clone(),
        size: u64::from(image.size),
        url: image.url.clone(),
    };
    let downloaded = match download::fetch_image(&data.downloader, &meta, &data.download).await {
        Ok(img) => img,
        Err(e) => {
            tracing::info!(filename = %meta.filename, error = ?e, "input image refused");
            refuse_deferred(&http, &inv, &e.to_string()).await;
            return Ok(());
        }
    };
    tracing::info!(
        bytes = downloaded.bytes.len(),
        width = downloaded.width,
        height = downloaded.height,
        "input image accepted"
    );
    spec.image = Some(downloaded.bytes);
    submit(&http, data, &inv, spec).await;
    Ok(())
}
