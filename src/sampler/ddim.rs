//! The DDIM loop of `DDIMSampler.ddim_sampling` / `p_sample_ddim` for eps-prediction, with
//! classifier-free guidance and the `scale_arr` correction.

use candle_core::{DType, Result, Tensor};

use super::noise::NoiseSource;
use super::schedule::{DdimSchedule, DdimStep};
use crate::models::unet::UNetModel;

/// Conditioning of one sampling run, `b` samples.
pub struct Conditioning<'a> {
    /// `(b, L, C)` prompt context.
    pub context: &'a Tensor,
    /// `(b, L, C)` unconditional context (empty prompt or the negative prompt); used when
    /// `guidance_scale != 1`.
    pub uncond_context: Option<&'a Tensor>,
    pub guidance_scale: f64,
    /// fps conditioning, passed to both passes (ignored by models without fps_cond).
    pub fps: f64,
}

impl Conditioning<'_> {
    /// Whether classifier-free guidance runs: an unconditional pass is due.
    fn guided(&self) -> bool {
        self.guidance_scale != 1.0 && self.uncond_context.is_some()
    }

    /// The guided noise prediction `e_u + scale * (e_c - e_u)`.
    fn guide(&self, e_c: &Tensor, e_u: &Tensor) -> Result<Tensor> {
        e_u + ((e_c - e_u)? * self.guidance_scale)?
    }
}

/// What the sampler reports after each step.
pub struct StepReport<'a> {
    /// 0-based index in sampling order.
    pub index: usize,
    pub total: usize,
    pub step: &'a DdimStep,
    /// Noise prediction used for this step (after guidance), f32.
    pub eps: &'a Tensor,
    /// Predicted clean latents (divided by scale_t when the model has scale_arr), f32.
    pub pred_x0: &'a Tensor,
    /// Latents after this step, f32.
    pub x_prev: &'a Tensor,
}

/// Whether the caller wants the loop to go on; checked between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Runs DDIM from `x_t` (f32 `(b, 4, t, h, w)`). Returns `None` when `observe` stopped it.
///
/// Latents and coefficients stay in f32 whatever the UNet dtype (the UNet takes and returns f32
/// at its edges). With guidance the conditional and unconditional passes run as one batch of 2b.
pub fn sample(
    unet: &UNetModel,
    schedule: &DdimSchedule,
    x_t: Tensor,
    cond: &Conditioning,
    noise: &mut dyn NoiseSource,
    observe: &mut dyn FnMut(StepReport) -> Flow,
) -> Result<Option<Tensor>> {
    let b = x_t.dim(0)?;
    let guided = cond.guided();
    let batched_context = match (guided, cond.uncond_context) {
        (true, Some(uc)) => Tensor::cat(&[cond.context, uc], 0)?,
        _ => cond.context.clone(),
    };
    let passes = if guided { 2 } else { 1 };
    let fps = vec![cond.fps; b * passes];
    let mut x = x_t.to_dtype(DType::F32)?;
    let total = schedule.steps.len();
    for (index, step) in schedule.steps.iter().enumerate() {
        let model_in = if guided {
            Tensor::cat(&[&x, &x], 0)?
        } else {
            x.clone()
        };
        let timesteps = vec![step.timestep as f64; b * passes];
        let out = unet
            .forward(&model_in, &timesteps, &batched_context, &fps)?
            .to_dtype(DType::F32)?;
        let eps = if guided {
            let e_c = out.narrow(0, 0, b)?;
            let e_u = out.narrow(0, b, b)?;
            cond.guide(&e_c, &e_u)?
        } else {
            out
        };
        let z = noise.next(x.shape(), x.device())?;
        let (pred_x0, x_prev) = ddim_update(&x, &eps, &z, step, schedule.uses_scale)?;
        let flow = observe(StepReport {
            index,
            total,
            step,
            eps: &eps,
            pred_x0: &pred_x0,
            x_prev: &x_prev,
        });
        x = x_prev;
        if flow == Flow::Stop {
            return Ok(None);
        }
    }
    Ok(Some(x))
}

fn scalar(v: f32, like: &Tensor) -> Result<Tensor> {
    Tensor::new(v, like.device())
}

/// One `p_sample_ddim` update in float32, evaluated in the original's order.
pub fn ddim_update(
    x: &Tensor,
    eps: &Tensor,
    z: &Tensor,
    step: &DdimStep,
    uses_scale: bool,
) -> Result<(Tensor, Tensor)> {
    let sqrt_alpha = step.alpha.sqrt();
    let mut pred_x0 =
        (x - (eps * step.sqrt_one_minus_alpha as f64)?)?.broadcast_div(&scalar(sqrt_alpha, x)?)?;
    let dir_coef = (1f32 - step.alpha_prev - step.sigma * step.sigma).sqrt();
    let dir_xt = (eps * dir_coef as f64)?;
    let noise = (z * step.sigma as f64)?;
    let mut x0_coef = step.alpha_prev.sqrt();
    if uses_scale {
        pred_x0 = pred_x0.broadcast_div(&scalar(step.scale, x)?)?;
        x0_coef *= step.scale_prev;
    }
    let x_prev = (((&pred_x0 * x0_coef as f64)? + dir_xt)? + noise)?;
    Ok((pred_x0, x_prev))
}

/// One job of a batched sampling run: its own start, conditioning, guidance, fps and noise.
pub struct BatchJob<'a> {
    /// f32 `(1, 4, t, h, w)`; every job of a batch has the same shape.
    pub x_t: Tensor,
    /// `(1, L, C)` contexts (the same `L` for every job of a batch).
    pub cond: Conditioning<'a>,
    /// The job's own draws, so that its result does not depend on its batch mates.
    pub noise: &'a mut dyn NoiseSource,
}

/// [`sample`] for several jobs at once: every step is one UNet batch of the running jobs'
/// conditional rows followed by their unconditional rows, then each job's own guidance and
/// DDIM update. `observe(job, report)` sees each job's steps; a job it stops leaves the batch
/// (its result is `None`) and the others go on. Results are in the jobs' order.
pub fn sample_batch(
    unet: &UNetModel,
    schedule: &DdimSchedule,
    jobs: &mut [BatchJob],
    observe: &mut dyn FnMut(usize, StepReport) -> Flow,
) -> Result<Vec<Option<Tensor>>> {
    let mut xs = jobs
        .iter()
        .map(|job| Ok(Some(job.x_t.to_dtype(DType::F32)?)))
        .collect::<Result<Vec<_>>>()?;
    let total = schedule.steps.len();
    for (index, step) in schedule.steps.iter().enumerate() {
        let running: Vec<usize> = (0..jobs.len()).filter(|&i| xs[i].is_some()).collect();
        if running.is_empty() {
            break;
        }
        let x: Vec<&Tensor> = running.iter().filter_map(|&i| xs[i].as_ref()).collect();
        let x = Tensor::cat(&x, 0)?;
        let mut contexts: Vec<&Tensor> = running.iter().map(|&i| jobs[i].cond.context).collect();
        let mut fps: Vec<f64> = running.iter().map(|&i| jobs[i].cond.fps).collect();
        let guided = running.iter().any(|&i| jobs[i].cond.guided());
        let model_in = if guided {
            // An unguided job's unconditional row is computed and ignored: one batch shape.
            for &i in &running {
                let job = &jobs[i];
                contexts.push(job.cond.uncond_context.unwrap_or(job.cond.context));
                fps.push(job.cond.fps);
            }
            Tensor::cat(&[&x, &x], 0)?
        } else {
            x
        };
        let timesteps = vec![step.timestep as f64; fps.len()];
        let out = unet
            .forward(&model_in, &timesteps, &Tensor::cat(&contexts, 0)?, &fps)?
            .to_dtype(DType::F32)?;
        for (row, &i) in running.iter().enumerate() {
            let e_c = out.narrow(0, row, 1)?;
            let eps = if jobs[i].cond.guided() {
                let e_u = out.narrow(0, running.len() + row, 1)?;
                jobs[i].cond.guide(&e_c, &e_u)?
            } else {
                e_c
            };
            let Some(x) = xs[i].take() else { continue };
            let z = jobs[i].noise.next(x.shape(), x.device())?;
            let (pred_x0, x_prev) = ddim_update(&x, &eps, &z, step, schedule.uses_scale)?;
            let report = StepReport {
                index,
                total,
                step,
                eps: &eps,
                pred_x0: &pred_x0,
                x_prev: &x_prev,
            };
            if observe(i, report) == Flow::Continue {
                xs[i] = Some(x_prev);
            }
        }
    }
    Ok(xs)
}
