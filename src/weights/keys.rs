//! Which checkpoint tensors are not model weights (SPEC §6), so a strict key check can ignore them.

/// Root-level diffusion schedule buffers saved by the LDM wrapper. They are not weights of any
/// module; the sampler reads them (the i2v checkpoint stores them fp16-rounded, and matching the
/// reference means using those rounded values).
const SCHEDULE_BUFFERS: &[&str] = &[
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "scale_arr",
];

/// True for the root-level schedule buffers (`betas`, `alphas_cumprod`, ..., `scale_arr`).
pub fn is_schedule_buffer(key: &str) -> bool {
    SCHEDULE_BUFFERS.contains(&key)
}

/// True for tensors stored in the checkpoints that nothing at inference reads: the DDPM posterior
/// buffers, the CLIP text projection and logit scale, the text tower left inside the i2v image
/// embedder, the visual `ln_post`/`proj` (the image embedder uses all 257 tokens before them), and
/// EMA copies if a checkpoint carries them.
pub fn unused_at_inference(key: &str) -> bool {
    if key.starts_with("posterior_") || key.starts_with("model_ema.") {
        return true;
    }
    for clip in ["cond_stage_model.model.", "embedder.model."] {
        if let Some(rest) = key.strip_prefix(clip) {
            if matches!(rest, "text_projection" | "logit_scale") {
                return true;
            }
        }
    }
    if let Some(rest) = key.strip_prefix("embedder.model.") {
        return match rest.strip_prefix("visual.") {
            Some(visual) => visual == "proj" || visual.starts_with("ln_post."),
            // Everything of the image embedder outside `visual` is the unused text tower.
            None => true,
        };
    }
    false
}

/// True for every tensor that no model module requests: schedule buffers and unused tensors.
/// This is the filter to pass to [`super::check`] for a whole-checkpoint strict check.
pub fn not_a_module_weight(key: &str) -> bool {
    is_schedule_buffer(key) || unused_at_inference(key)
}
