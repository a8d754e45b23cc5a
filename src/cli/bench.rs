//! `floor33 bench`: times each stage of a generation for a variant's shapes with random weights
//! — text encode (prompt + negative), one guided UNet step (batch 2: cond + uncond), the VAE
//! decode of a whole video — then optionally one full generation, with the peak memory of each
//! stage as the program measures it (see `engine::memory`). `--json` prints one JSON object so
//! runs can be tabulated; the text form says the same in lines.

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, DeviceLocation, Tensor};
use clap::Args;
use serde::Serialize;

use super::DeviceArgs;
use crate::engine::memory::{self, MemoryPeaks};
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
    /// Timed runs of the text encoder and of the UNet step (after one warm-up each).
    #[arg(long, default_value_t = 3)]
    pub unet_runs: usize,
    /// Timed VAE decodes of the whole video (after a one-frame warm-up).
    #[arg(long, default_value_t = 1)]
    pub decode_runs: usize,
    /// Throughput at queue depth N: N jobs of `--steps` steps run one by one (batch 1), then
    /// the same N as one sampler batch; reports jobs per hour for both (0 skips it).
    #[arg(long, default_value_t = 0)]
    pub batch: usize,
    /// Print the report as one JSON object on stdout (nothing else goes to stdout).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub compute: DeviceArgs,
}

/// Everything one bench run measured; the `--json` output.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub variant: String,
    pub device: String,
    pub dtype: String,
    pub height: usize,
    pub width: usize,
    pub frames: usize,
    /// Building the networks with random weights.
    pub build: Stage,
    /// `text_encode`, `unet_step`, `vae_decode`, in that order.
    pub stages: Vec<Stage>,
    pub generation: Option<Generation>,
    pub throughput: Option<Throughput>,
}

/// Jobs per hour of `jobs` compatible jobs, alone and as one batch (`--batch`).
#[derive(Debug, Serialize)]
pub struct Throughput {
    pub jobs: usize,
    pub steps: usize,
    /// The jobs one after another, each its own sampler loop.
    pub sequential_s: f64,
    pub sequential_jobs_per_hour: f64,
    /// The same jobs in one sampler batch.
    pub batched_s: f64,
    pub batched_jobs_per_hour: f64,
    /// Peak memory of the batched run.
    pub batched_memory: MemoryPeaks,
}

/// Timings of one stage in seconds, and its peak memory.
#[derive(Debug, Serialize)]
pub struct Stage {
    pub name: &'static str,
    pub runs: usize,
    pub median_s: f64,
    pub min_s: f64,
    pub memory: MemoryPeaks,
}

#[derive(Debug, Serialize)]
pub struct Generation {
    pub steps: usize,
    pub total_s: f64,
    pub memory: MemoryPeaks,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let report = measure(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn device_name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".into(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Runs `f` once untimed (kernel loading, allocator warm-up), then `runs` times timed, each
/// ended by a device synchronisation; the memory window covers all of it.
fn stage(
    name: &'static str,
    device: &Device,
    runs: usize,
    mut warm_up: impl FnMut() -> Result<()>,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Stage> {
    memory::reset_peaks(device);
    warm_up()?;
    device.synchronize()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(Stage {
        name,
        runs,
        median_s: times.get(times.len() / 2).copied().unwrap_or(f64::NAN),
        min_s: times.first().copied().unwrap_or(f64::NAN),
        memory: memory::peaks(device),
    })
}

fn measure(args: &BenchArgs) -> Result<BenchReport> {
    let variant = Variant::parse(&args.variant)?;
    let (device, dtype) = args.compute.select()?;
    let mut config = variant.config();
    config.defaults.height = args.height.unwrap_or(config.defaults.height);
    config.defaults.width = args.width.unwrap_or(config.defaults.width);
    config.defaults.frames = args.frames.unwrap_or(config.defaults.frames);
    let d = config.defaults.clone();
    if !args.json {
        println!(
            "variant {variant}, {}x{}, {} frames, device {}, dtype {dtype:?}",
            d.height,
            d.width,
            d.frames,
            device_name(&device)
        );
    }

    memory::reset_peaks(&device);
    let t = Instant::now();
    let pipeline = Pipeline::random(config.clone(), &device, dtype)?;
    device.synchronize()?;
    let build = Stage {
        name: "build",
        runs: 1,
        median_s: t.elapsed().as_secs_f64(),
        min_s: t.elapsed().as_secs_f64(),
        memory: memory::peaks(&device),
    };

    let prompts = ["a benchmark of a fox in the snow", ""];
    let encode = || -> Result<()> {
        pipeline.encode_prompts(&prompts)?;
        Ok(())
    };
    let text = stage("text_encode", &device, args.unet_runs, encode, encode)?;

    // One UNet call as guided sampling makes it: batch 2 (cond + uncond).
    let factor = config.vae.downsample_factor();
    let latent_shape = (2, 4, d.frames, d.height / factor, d.width / factor);
    let x = SeededNoise::new(1)
        .next(&latent_shape.into(), &device)?
        .to_dtype(dtype)?;
    let (mut context, _) = pipeline.encode_prompts(&prompts)?;
    if let Some(image) = &config.image {
        // i2v context: 77 text tokens then the Resampler's image tokens.
        let tokens = image.resampler.num_queries;
        let extra = Tensor::zeros((2, tokens, context.dim(2)?), context.dtype(), &device)?;
        context = Tensor::cat(&[&context, &extra], 1)?;
    }
    let unet_call = || -> Result<()> {
        pipeline
            .unet()
            .forward(&x, &[981.0, 981.0], &context, &[d.fps as f64; 2])?;
        Ok(())
    };
    let unet = stage("unet_step", &device, args.unet_runs, unet_call, unet_call)?;

    // The decode of one video, as a generation ends (f32 latents in, frame by frame).
    let latents = x.narrow(0, 0, 1)?.to_dtype(DType::F32)?;
    let decode = stage(
        "vae_decode",
        &device,
        args.decode_runs,
        || {
            pipeline.decode(&latents.narrow(2, 0, 1)?)?;
            Ok(())
        },
        || {
            pipeline.decode(&latents)?;
            Ok(())
        },
    )?;

    let generation = if args.steps > 0 {
        Some(generate(&pipeline, variant, &device, args.steps)?)
    } else {
        None
    };
    let throughput = match (args.batch, args.steps) {
        (0, _) => None,
        (_, 0) => anyhow::bail!("--batch needs --steps > 0"),
        (jobs, steps) => Some(throughput(&pipeline, variant, &device, steps, jobs)?),
    };
    Ok(BenchReport {
        variant: variant.to_string(),
        device: device_name(&device),
        dtype: format!("{dtype:?}").to_lowercase(),
        height: d.height,
        width: d.width,
        frames: d.frames,
        build,
        stages: vec![text, unet, decode],
        generation,
        throughput,
    })
}

/// A request of the bench's shapes (an image for i2v), and limits that admit it.
fn bench_request(
    pipeline: &Pipeline,
    variant: Variant,
    steps: usize,
    seed: u64,
) -> (GenerationRequest, Limits) {
    let d = &pipeline.config().defaults;
    let request = GenerationRequest {
        steps,
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
        ..GenerationRequest::with_defaults(variant, "a benchmark of a fox in the snow", seed)
    };
    let limits = Limits {
        max_side: 4096,
        max_frames: 256,
        max_steps: 1000,
        ..Limits::default()
    };
    (request, limits)
}

fn generate(
    pipeline: &Pipeline,
    variant: Variant,
    device: &Device,
    steps: usize,
) -> Result<Generation> {
    let (request, limits) = bench_request(pipeline, variant, steps, 7);
    memory::reset_peaks(device);
    let t = Instant::now();
    let generated = pipeline.generate(&request, &limits, &mut |_| Flow::Continue)?;
    device.synchronize()?;
    Ok(Generation {
        steps: generated.steps_run,
        total_s: t.elapsed().as_secs_f64(),
        memory: memory::peaks(device),
    })
}

fn throughput(
    pipeline: &Pipeline,
    variant: Variant,
    device: &Device,
    steps: usize,
    jobs: usize,
) -> Result<Throughput> {
    let (first, limits) = bench_request(pipeline, variant, steps, 7);
    let requests: Vec<GenerationRequest> = (0..jobs as u64)
        .map(|i| GenerationRequest {
            seed: 7 + i,
            ..first.clone()
        })
        .collect();
    let t = Instant::now();
    for request in &requests {
        pipeline.generate(request, &limits, &mut |_| Flow::Continue)?;
    }
    device.synchronize()?;
    let sequential_s = t.elapsed().as_secs_f64();
    memory::reset_peaks(device);
    let t = Instant::now();
    for result in pipeline.generate_batch(&requests, &limits, &mut |_, _| Flow::Continue)? {
        result?;
    }
    device.synchronize()?;
    let batched_s = t.elapsed().as_secs_f64();
    let per_hour = |seconds: f64| jobs as f64 * 3600.0 / seconds;
    Ok(Throughput {
        jobs,
        steps,
        sequential_s,
        sequential_jobs_per_hour: per_hour(sequential_s),
        batched_s,
        batched_jobs_per_hour: per_hour(batched_s),
        batched_memory: memory::peaks(device),
    })
}

fn gib(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        None => "n/a".into(),
    }
}

fn memory_line(m: &MemoryPeaks) -> String {
    let mut line = format!("host peak RSS {}", gib(m.host_peak_rss));
    if m.gpu_tensors_peak.is_some() || m.gpu_device_used.is_some() {
        line.push_str(&format!(
            ", GPU tensors peak {}, pool reserved peak {}, device in use {}",
            gib(m.gpu_tensors_peak),
            gib(m.gpu_pool_reserved_peak),
            gib(m.gpu_device_used)
        ));
    }
    line
}

fn print_text(r: &BenchReport) {
    println!(
        "build (random weights): {:.2}s; {}",
        r.build.median_s,
        memory_line(&r.build.memory)
    );
    for s in &r.stages {
        println!(
            "{}: median {:.3}s over {} runs (min {:.3}s); {}",
            s.name,
            s.median_s,
            s.runs,
            s.min_s,
            memory_line(&s.memory)
        );
    }
    if let Some(g) = &r.generation {
        println!(
            "generation ({} steps, CFG, decode): {:.2}s; {}",
            g.steps,
            g.total_s,
            memory_line(&g.memory)
        );
    }
    if let Some(t) = &r.throughput {
        println!(
            "{} jobs of {} steps: one by one {:.2}s ({:.0} jobs/hour), one batch {:.2}s \
             ({:.0} jobs/hour); batch {}",
            t.jobs,
            t.steps,
            t.sequential_s,
            t.sequential_jobs_per_hour,
            t.batched_s,
            t.batched_jobs_per_hour,
            memory_line(&t.batched_memory)
        );
    }
}
