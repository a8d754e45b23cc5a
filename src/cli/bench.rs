//! `floor33 bench`: times one UNet forward (cond + uncond batch, as sampling runs it) and one
//! full generation for a variant's shapes with random weights, and reports peak memory, so the
//! figures can be set beside other implementations' on the same machine.

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Args;

use super::DeviceArgs;
use crate::engine::{GenerationRequest, Limits, Pipeline};
use crate::models::config::Variant;
use crate::sampler::ddim::Flow;
use crate::sampler::noise::{NoiseSource, SeededNoise};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// t2v-1024, t2v-512, vc2, i2v, tiny or tiny-i2v (all with random weights).
    #[arg(long, default_value = "vc2")]
    pub variant: String,
    #[arg(long)]
    pub height: Option<usize>,
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub frames: Option<usize>,
    /// DDIM steps of the full generation (0 skips it).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Timed UNet forwards (after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub unet_runs: usize,
    #[command(flatten)]
    pub compute: DeviceArgs,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let variant = Variant::parse(&args.variant)?;
    let (device, dtype) = args.compute.select()?;
    let mut config = variant.config();
    config.defaults.height = args.height.unwrap_or(config.defaults.height);
    config.defaults.width = args.width.unwrap_or(config.defaults.width);
    config.defaults.frames = args.frames.unwrap_or(config.defaults.frames);
    let d = config.defaults.clone();
    println!(
        "variant {variant}, {}x{}, {} frames, device {:?}, dtype {dtype:?}",
        d.height, d.width, d.frames, device
    );

    let t = Instant::now();
    let pipeline = Pipeline::random(config.clone(), &device, dtype)?;
    device.synchronize()?;
    println!("build (random weights): {:.2}s", t.elapsed().as_secs_f64());

    // One UNet call as guided sampling makes it: batch 2 (cond + uncond).
    let factor = config.vae.downsample_factor();
    let shape = (2, 4, d.frames, d.height / factor, d.width / factor);
    let x = SeededNoise::new(1)
        .next(&shape.into(), &device)?
        .to_dtype(dtype)?;
    let (mut context, _) = pipeline.encode_prompts(&["a benchmark", ""])?;
    if let Some(image) = &config.image {
        // i2v context: 77 text tokens then the Resampler's image tokens.
        let tokens = image.resampler.num_queries;
        let extra = Tensor::zeros((2, tokens, context.dim(2)?), context.dtype(), &device)?;
        context = Tensor::cat(&[&context, &extra], 1)?;
    }
    let unet_call = |x: &Tensor| -> Result<()> {
        let eps = pipeline
            .unet()
            .forward(x, &[981.0, 981.0], &context, &[d.fps as f64; 2])?;
        eps.device().synchronize()?;
        Ok(())
    };
    unet_call(&x)?;
    let mut times = Vec::new();
    for _ in 0..args.unet_runs {
        let t = Instant::now();
        unet_call(&x)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    if let Some(median) = times.get(times.len() / 2) {
        println!(
            "unet forward (batch 2): median {median:.3}s over {} runs (min {:.3}s)",
            times.len(),
            times[0]
        );
    }

    if args.steps > 0 {
        let request = GenerationRequest {
            steps: args.steps,
            height: d.height,
            width: d.width,
            frames: d.frames,
            image: variant.is_image_to_video().then(|| {
                std::sync::Arc::new(image::RgbImage::from_fn(
                    d.width as u32,
                    d.height as u32,
                    |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]),
                ))
            }),
            ..GenerationRequest::with_defaults(variant, "a benchmark of a fox in the snow", 7)
        };
        let limits = Limits {
            max_side: 4096,
            max_frames: 256,
            max_steps: 1000,
            ..Limits::default()
        };
        let t = Instant::now();
        let generated = pipeline.generate(&request, &limits, &mut |_| Flow::Continue)?;
        println!(
            "generation ({} steps, CFG, decode): {:.2}s",
            generated.steps_run,
            t.elapsed().as_secs_f64()
        );
    }
    report_memory(&device);
    Ok(())
}

fn report_memory(device: &Device) {
    if let Some(kib) = peak_rss_kib() {
        println!(
            "peak host memory (VmHWM): {:.2} GiB",
            kib as f64 / 1048576.0
        );
    }
    if !device.is_cpu() {
        println!("GPU memory: see nvidia-smi (candle does not expose the allocator's peak)");
    }
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
