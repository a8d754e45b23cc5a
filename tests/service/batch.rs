//! Batched generation of compatible jobs (`Pipeline::generate_batch`) with the random-weight
//! tiny model: each job's video equals the one it gets alone, cancelling one job lets the others
//! finish, and incompatible or invalid requests are refused without losing the rest.

use candle_core::{DType, Device};
use floor33::engine::loader::load_pipeline;
use floor33::engine::{
    batch_compatible, EngineError, Generated, GenerationRequest, Limits, Pipeline,
};
use floor33::models::config::Variant;
use floor33::sampler::ddim::Flow;

fn tiny() -> Pipeline {
    load_pipeline(Variant::Tiny, &[], &Device::Cpu, DType::F32).expect("tiny model")
}

/// 3 steps, 4 frames, 16×24 pixels; each job its own seed, prompts, guidance and fps.
fn job(seed: u64, prompt: &str, negative: Option<&str>, cfg: f64, fps: u32) -> GenerationRequest {
    GenerationRequest {
        steps: 3,
        frames: 4,
        height: 16,
        width: 24,
        negative: negative.map(str::to_owned),
        cfg,
        fps,
        ..GenerationRequest::with_defaults(Variant::Tiny, prompt, seed)
    }
}

fn jobs() -> Vec<GenerationRequest> {
    vec![
        job(1, "a red fox jumping over a snowy log", None, 12.0, 8),
        job(2, "waves at dusk", Some("blurry"), 7.5, 24),
        // Unguided: its unconditional row is computed in the batch and ignored.
        job(3, "a lighthouse", None, 1.0, 8),
    ]
}

fn alone(pipeline: &Pipeline, req: &GenerationRequest) -> Generated {
    pipeline
        .generate(req, &Limits::default(), &mut |_| Flow::Continue)
        .expect("generates alone")
}

/// Largest difference of any pixel channel between two videos (0..=255).
fn max_pixel_diff(a: &Generated, b: &Generated) -> u8 {
    assert_eq!(a.video.frames.len(), b.video.frames.len());
    a.video
        .frames
        .iter()
        .zip(&b.video.frames)
        .flat_map(|(x, y)| x.as_raw().iter().zip(y.as_raw()))
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

/// Batched and lone runs differ only in the floating-point order of a larger GEMM batch:
/// at most one 8-bit level after quantisation.
const PIXEL_TOLERANCE: u8 = 1;

#[test]
fn each_job_of_a_batch_gets_the_video_it_gets_alone() {
    let pipeline = tiny();
    let reqs = jobs();
    let mut seen = vec![Vec::new(); reqs.len()];
    let results = pipeline
        .generate_batch(&reqs, &Limits::default(), &mut |i, p| {
            seen[i].push(p.step);
            Flow::Continue
        })
        .expect("compatible batch");
    assert_eq!(results.len(), reqs.len());
    for (i, (req, result)) in reqs.iter().zip(results).enumerate() {
        let batched = result.expect("job finishes");
        assert_eq!(seen[i], vec![1, 2, 3], "job {i} reports every step");
        assert_eq!(batched.steps_run, 3);
        let diff = max_pixel_diff(&batched, &alone(&pipeline, req));
        assert!(diff <= PIXEL_TOLERANCE, "job {i}: pixel diff {diff}");
    }
    // Different seeds and prompts give different videos: the jobs did not share their inputs.
    let (a, b) = (alone(&pipeline, &reqs[0]), alone(&pipeline, &reqs[1]));
    assert!(max_pixel_diff(&a, &b) > 10);
}

#[test]
fn cancelling_one_job_of_a_batch_lets_the_others_finish() {
    let pipeline = tiny();
    let reqs = jobs();
    let mut steps_after_stop = 0;
    let results = pipeline
        .generate_batch(&reqs, &Limits::default(), &mut |i, p| {
            if i == 1 {
                // Stopped at its second step; it must not be reported again.
                steps_after_stop += (p.step > 2) as usize;
                if p.step == 2 {
                    return Flow::Stop;
                }
            }
            Flow::Continue
        })
        .expect("compatible batch");
    assert_eq!(steps_after_stop, 0);
    assert!(matches!(results[1], Err(EngineError::Cancelled)));
    for i in [0, 2] {
        let batched = results[i].as_ref().expect("the others finish");
        let diff = max_pixel_diff(batched, &alone(&pipeline, &reqs[i]));
        assert!(diff <= PIXEL_TOLERANCE, "job {i}: pixel diff {diff}");
    }
}

#[test]
fn an_invalid_job_gets_its_own_error_and_the_batch_runs() {
    let pipeline = tiny();
    let mut reqs = jobs();
    reqs[0].cfg = 1000.0;
    let results = pipeline
        .generate_batch(&reqs, &Limits::default(), &mut |_, _| Flow::Continue)
        .expect("the valid jobs form a batch");
    assert!(matches!(results[0], Err(EngineError::BadRequest(_))));
    assert!(results[1].is_ok() && results[2].is_ok());
}

#[test]
fn incompatible_jobs_are_refused_as_a_batch() {
    let pipeline = tiny();
    let mut reqs = jobs();
    reqs[2].steps = 4;
    assert!(!batch_compatible(&reqs[0], &reqs[2]));
    assert!(batch_compatible(&reqs[0], &reqs[1]));
    let err = pipeline
        .generate_batch(&reqs, &Limits::default(), &mut |_, _| Flow::Continue)
        .expect_err("different step counts cannot share a sampler loop");
    assert!(matches!(err, EngineError::BadRequest(_)), "{err}");
    let none = pipeline
        .generate_batch(&[], &Limits::default(), &mut |_, _| Flow::Continue)
        .expect("an empty batch is nothing to do");
    assert!(none.is_empty());
}
