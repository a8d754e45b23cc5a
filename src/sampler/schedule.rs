//! The diffusion noise schedule and the DDIM sub-schedule, with the original's mixed
//! float32/float64 arithmetic (`lvdm/models/utils_diffusion.py`, `samplers/ddim.py`).

use crate::models::config::DiffusionConfig;

/// `alphas_cumprod` (float32, as stored in the checkpoints) and the optional `scale_arr`.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    pub alphas_cumprod: Vec<f32>,
    pub scale_arr: Option<Vec<f32>>,
}

/// numpy.linspace in float64 (start + i·step, last element exactly `stop`).
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    v[n - 1] = stop;
    v
}

impl NoiseSchedule {
    /// The "linear" (scaled-linear) schedule of the configs: betas = linspace(√start, √end)².
    pub fn from_config(cfg: &DiffusionConfig) -> Self {
        let betas: Vec<f64> = linspace(
            cfg.linear_start.sqrt(),
            cfg.linear_end.sqrt(),
            cfg.timesteps,
        )
        .into_iter()
        .map(|b| b * b)
        .collect();
        let mut acc = 1f64;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc as f32
            })
            .collect();
        let scale_arr = if cfg.use_scale {
            let a = cfg.scale_a.unwrap_or(1.0);
            let b = cfg.scale_b.unwrap_or(1.0);
            let mid = cfg.mid_step.unwrap_or(400);
            let len = cfg.scale_arr_len.unwrap_or(cfg.timesteps + mid) - mid;
            let mut arr: Vec<f32> = linspace(a, b, mid).into_iter().map(|v| v as f32).collect();
            arr.extend(std::iter::repeat_n(b as f32, len));
            Some(arr)
        } else {
            None
        };
        NoiseSchedule {
            alphas_cumprod,
            scale_arr,
        }
    }

    /// A schedule read from checkpoint buffers. The released i2v checkpoint stores them in
    /// float16; using the stored values is what the original sampler does.
    pub fn from_buffers(alphas_cumprod: Vec<f32>, scale_arr: Option<Vec<f32>>) -> Self {
        NoiseSchedule {
            alphas_cumprod,
            scale_arr,
        }
    }
}

/// Per-step coefficients of one DDIM run, in SAMPLING order (first = noisiest).
#[derive(Debug, Clone, PartialEq)]
pub struct DdimStep {
    /// Timestep given to the UNet.
    pub timestep: usize,
    pub alpha: f32,
    pub alpha_prev: f32,
    pub sigma: f32,
    pub sqrt_one_minus_alpha: f32,
    /// `scale_arr[t]` and the previous step's value, 1.0 when the model has no scale_arr.
    pub scale: f32,
    pub scale_prev: f32,
}

/// The DDIM timesteps (ascending) of `requested` uniform steps over `total` training
/// timesteps: `range(0, T, T // S) + 1`.
fn uniform_timesteps(total: usize, requested: usize) -> Vec<usize> {
    let stride = (total / requested.clamp(1, total)).max(1);
    // When the last multiple of the stride is T-1 (S = 3: 0, 333, 666, 999) the original's
    // `+ 1` indexes past the schedule and crashes; that timestep is dropped here instead.
    (0..total)
        .step_by(stride)
        .map(|t| t + 1)
        .filter(|&t| t < total)
        .collect()
}

/// How many UNet steps a DDIM run of `requested` steps really takes over `total` training
/// timesteps (see [`DdimSchedule::new`]: 6 asked of 1000 run 7), without building it.
pub fn ddim_step_count(total: usize, requested: usize) -> usize {
    uniform_timesteps(total, requested).len()
}

/// `make_schedule(ddim_num_steps, ddim_discretize="uniform", ddim_eta)`.
#[derive(Debug, Clone, PartialEq)]
pub struct DdimSchedule {
    pub steps: Vec<DdimStep>,
    pub uses_scale: bool,
}

impl DdimSchedule {
    /// Uniform timesteps `range(0, T, T // S) + 1`. Like the original, when S does not divide T
    /// this yields more than S steps (S=30 gives 31); `steps.len()` is the real count.
    /// Every S from 1 to T gives a valid schedule.
    pub fn new(schedule: &NoiseSchedule, requested_steps: usize, eta: f64) -> Self {
        let timesteps = uniform_timesteps(schedule.alphas_cumprod.len(), requested_steps);
        let ac = &schedule.alphas_cumprod;
        let scale_at = |t: usize| schedule.scale_arr.as_ref().map_or(1.0, |s| s[t]);
        let mut steps: Vec<DdimStep> = timesteps
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let alpha = ac[t];
                let (alpha_prev, scale_prev) = if i == 0 {
                    (ac[0] as f64, scale_at(0))
                } else {
                    (ac[timesteps[i - 1]] as f64, scale_at(timesteps[i - 1]))
                };
                let one_minus = 1f32 - alpha;
                // (1 - a_prev) is float64 numpy, (1 - a) a float32 tensor: torch evaluates the
                // division as float64(1/float32(1 - a)) * (1 - a_prev).
                let sigma = eta
                    * ((1.0f32 / one_minus) as f64
                        * (1.0 - alpha_prev)
                        * (1.0 - alpha as f64 / alpha_prev))
                        .sqrt();
                DdimStep {
                    timestep: t,
                    alpha,
                    alpha_prev: alpha_prev as f32,
                    sigma: sigma as f32,
                    sqrt_one_minus_alpha: one_minus.sqrt(),
                    scale: scale_at(t),
                    scale_prev,
                }
            })
            .collect();
        steps.reverse();
        DdimSchedule {
            steps,
            uses_scale: schedule.scale_arr.is_some(),
        }
    }
}
