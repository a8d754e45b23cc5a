//! The inference actor with the random-weight tiny models: progress events, cancellation,
//! typed refusals, reproducible seeds, image-to-video jobs beside text-to-video ones, and
//! batches of compatible jobs (`submit_batch`), each with its own events and cancel.

use std::sync::Arc;

use super::support::golden::assert_frames_within_one_level;

use candle_core::{DType, Device};
use floor33::engine::image_input::ImageFit;
use floor33::engine::loader::load_pipeline;
use floor33::engine::{
    EngineError, EngineEvent, EngineHandle, Generated, GenerationRequest, JobHandle, JobOptions,
    Limits,
};
use floor33::models::config::Variant;

fn engine() -> EngineHandle {
    EngineHandle::spawn(
        || {
            Ok(vec![
                load_pipeline(Variant::Tiny, &[], &Device::Cpu, DType::F32)?,
                load_pipeline(Variant::TinyI2v, &[], &Device::Cpu, DType::F32)?,
            ])
        },
        Limits::default(),
    )
    .expect("engine starts")
}

/// Small and quick: 3 steps, 4 frames, 16×24 pixels.
fn quick(variant: Variant, seed: u64) -> GenerationRequest {
    GenerationRequest {
        steps: 3,
        frames: 4,
        height: 16,
        width: 24,
        ..GenerationRequest::with_defaults(variant, "a red fox jumping over a snowy log", seed)
    }
}

fn no_previews() -> JobOptions {
    JobOptions {
        preview_every: None,
    }
}

#[test]
fn a_job_streams_every_step_then_the_video() {
    let engine = engine();
    let mut job = engine.submit(quick(Variant::Tiny, 1), JobOptions::default());
    let mut steps = Vec::new();
    let mut previews = 0;
    let result = loop {
        match job.events.blocking_recv().expect("events until Finished") {
            EngineEvent::Started => assert!(steps.is_empty()),
            EngineEvent::Progress(p) => {
                assert_eq!(p.total, 3);
                previews += p.preview.is_some() as usize;
                steps.push(p.step);
            }
            EngineEvent::Finished(result) => break result,
        }
    };
    let generated = result.expect("tiny generation succeeds");
    assert_eq!(steps, vec![1, 2, 3]);
    assert!(previews >= 1, "the first step carries a preview");
    assert_eq!(generated.video.frames.len(), 4);
    assert_eq!((generated.video.width, generated.video.height), (24, 16));
    assert_eq!(generated.steps_run, 3);
}

#[test]
fn the_same_seed_gives_the_same_video_and_another_seed_does_not() {
    let engine = engine();
    let run = |seed| {
        engine
            .submit(quick(Variant::Tiny, seed), no_previews())
            .wait_blocking(|_| {})
            .unwrap()
            .video
    };
    let (a, b, c) = (run(7), run(7), run(8));
    assert_eq!(a.frames, b.frames);
    assert_ne!(a.frames, c.frames);
}

#[test]
fn cancelling_a_running_job_stops_it_between_steps() {
    let engine = engine();
    let request = GenerationRequest {
        steps: 50,
        ..quick(Variant::Tiny, 3)
    };
    let mut job = engine.submit(request, no_previews());
    let (result, last_step) = cancel_at_step_2(&mut job);
    assert_eq!(result.unwrap_err(), EngineError::Cancelled);
    assert!(last_step < 5, "stopped at step {last_step}");
}

#[test]
fn a_job_cancelled_while_queued_never_runs() {
    let engine = engine();
    let first = engine.submit(
        GenerationRequest {
            steps: 20,
            ..quick(Variant::Tiny, 1)
        },
        no_previews(),
    );
    let second = engine.submit(quick(Variant::Tiny, 2), no_previews());
    second.cancel.cancel();
    let mut events = second.events;
    let mut saw_progress = false;
    let result = loop {
        match events.blocking_recv().unwrap() {
            EngineEvent::Progress(_) => saw_progress = true,
            EngineEvent::Finished(r) => break r,
            EngineEvent::Started => {}
        }
    };
    assert_eq!(result.unwrap_err(), EngineError::Cancelled);
    assert!(!saw_progress);
    first.cancel.cancel();
}

#[test]
fn bad_requests_get_typed_errors_not_panics() {
    let engine = engine();
    let cases = [
        (
            GenerationRequest {
                width: 25,
                ..quick(Variant::Tiny, 1)
            },
            "multiple of 4",
        ),
        (
            GenerationRequest {
                steps: 0,
                ..quick(Variant::Tiny, 1)
            },
            "steps",
        ),
        (quick(Variant::TinyI2v, 1), "needs an image"),
        (quick(Variant::Vc2, 1), "not loaded"),
    ];
    for (request, words) in cases {
        let err = engine
            .submit(request, no_previews())
            .wait_blocking(|_| {})
            .unwrap_err();
        assert!(
            err.to_string().contains(words),
            "{err} should mention {words}"
        );
    }
}

#[test]
fn image_to_video_jobs_run_beside_text_to_video_ones() {
    let engine = engine();
    let gradient = || {
        image::RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 8) as u8, 90])
        })
    };
    let request = GenerationRequest {
        image: Some(Arc::new(gradient())),
        image_fit: ImageFit::Stretch,
        ..quick(Variant::TinyI2v, 5)
    };
    let generated = engine
        .submit(request, no_previews())
        .wait_blocking(|_| {})
        .unwrap();
    assert_eq!(generated.video.frames.len(), 4);
    assert_eq!(generated.image_fit, Some(ImageFit::Stretch));
    // The image drives the output: the same request (seed, prompt) with the same image gives
    // the same frames, with another image different ones.
    let with_image = |image: image::RgbImage| {
        let request = GenerationRequest {
            image: Some(Arc::new(image)),
            image_fit: ImageFit::Stretch,
            ..quick(Variant::TinyI2v, 5)
        };
        engine
            .submit(request, no_previews())
            .wait_blocking(|_| {})
            .unwrap()
            .video
            .frames
    };
    assert_eq!(
        with_image(gradient()),
        generated.video.frames,
        "same image, same frames"
    );
    let other = image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([200 - (y * 5) as u8, 40, (x * 5) as u8])
    });
    assert_ne!(
        with_image(other),
        generated.video.frames,
        "another image, other frames"
    );
    let t2v = engine
        .submit(quick(Variant::Tiny, 5), no_previews())
        .wait_blocking(|_| {})
        .unwrap();
    assert_eq!(t2v.image_fit, None);
}

#[test]
fn models_that_cannot_load_are_reported_and_the_rest_served() {
    use floor33::engine::loader::load_pipelines;
    let requested = vec![
        (Variant::Tiny, vec![]),
        (
            Variant::Vc2,
            vec![std::path::PathBuf::from("/nonexistent/vc2/model.ckpt")],
        ),
    ];
    let (loaded, failed) = load_pipelines(&requested, &Device::Cpu, DType::F32);
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].config().variant, Variant::Tiny);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, Variant::Vc2);
    assert!(
        matches!(failed[0].1, EngineError::WeightsMissing(_)),
        "{:?}",
        failed[0].1
    );
}

/// Drains a handle: its steps in order and its result.
fn follow(
    job: floor33::engine::JobHandle,
) -> (
    Vec<usize>,
    usize,
    Result<floor33::engine::Generated, EngineError>,
) {
    let mut events = job.events;
    let (mut steps, mut previews, mut started) = (Vec::new(), 0, false);
    let result = loop {
        match events.blocking_recv().expect("events until Finished") {
            EngineEvent::Started => {
                assert!(!started && steps.is_empty(), "one Started, first");
                started = true;
            }
            EngineEvent::Progress(p) => {
                assert!(started);
                previews += p.preview.is_some() as usize;
                steps.push(p.step);
            }
            EngineEvent::Finished(r) => break r,
        }
    };
    (steps, previews, result)
}

#[test]
fn a_batch_gives_each_job_its_own_events_and_its_solo_video() {
    let engine = engine();
    let mut invalid = quick(Variant::Tiny, 3);
    invalid.cfg = 1000.0;
    let requests = vec![
        quick(Variant::Tiny, 1),
        GenerationRequest {
            prompt: "waves at dusk".into(),
            cfg: 4.0,
            ..quick(Variant::Tiny, 2)
        },
        invalid,
    ];
    let handles = engine.submit_batch(
        requests
            .iter()
            .map(|r| (r.clone(), JobOptions::default()))
            .collect(),
    );
    assert_eq!(handles.len(), 3);
    let mut results: Vec<_> = handles.into_iter().map(follow).collect();
    let (_, _, refused) = results.pop().unwrap();
    assert!(
        matches!(refused, Err(EngineError::BadRequest(_))),
        "the invalid job gets its own error: {refused:?}"
    );
    for ((steps, previews, result), request) in results.into_iter().zip(&requests) {
        assert_eq!(steps, vec![1, 2, 3]);
        assert!(previews >= 1, "each job gets its own previews");
        let batched = result.expect("the valid jobs finish");
        assert_same_as_alone(&engine, request, &batched);
    }
}

#[test]
fn cancelling_one_job_of_a_batch_ends_it_at_once_and_the_other_finishes() {
    let engine = engine();
    let long = |seed| GenerationRequest {
        steps: 40,
        ..quick(Variant::Tiny, seed)
    };
    let mut handles = engine.submit_batch(vec![(long(1), no_previews()), (long(2), no_previews())]);
    let other = handles.pop().unwrap();
    let mut stopped = handles.pop().unwrap();
    let (result, last_step) = cancel_at_step_2(&mut stopped);
    assert_eq!(result.unwrap_err(), EngineError::Cancelled);
    assert!(last_step < 5, "stopped at step {last_step}");
    assert!(!other.cancel.is_cancelled());
    // It heard its `Finished` while the other was still sampling, not when the batch ended.
    let mut events = other.events;
    let mut steps = Vec::new();
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, EngineEvent::Finished(_)),
            "the other job ended before the stopped one heard of it"
        );
        if let EngineEvent::Progress(p) = event {
            steps.push(p.step);
        }
    }
    assert!(steps.len() < 10, "the other ran on meanwhile: {steps:?}");
    let result = loop {
        match events.blocking_recv().unwrap() {
            EngineEvent::Progress(p) => steps.push(p.step),
            EngineEvent::Finished(r) => break r,
            EngineEvent::Started => {}
        }
    };
    assert_eq!(steps, (1..=40).collect::<Vec<_>>());
    assert!(result.is_ok(), "{result:?}");
}

#[test]
fn image_to_video_jobs_share_a_batch_and_each_keeps_its_image() {
    let engine = engine();
    let request = |seed, shade: u8| GenerationRequest {
        image: Some(Arc::new(image::RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 8) as u8, shade])
        }))),
        image_fit: ImageFit::Stretch,
        ..quick(Variant::TinyI2v, seed)
    };
    let requests = [request(5, 90), request(6, 200)];
    let handles = engine.submit_batch(
        requests
            .iter()
            .map(|r| (r.clone(), no_previews()))
            .collect(),
    );
    for (handle, request) in handles.into_iter().zip(&requests) {
        let batched = handle.wait_blocking(|_| {}).expect("i2v in a batch");
        assert_eq!(batched.image_fit, Some(ImageFit::Stretch));
        assert_same_as_alone(&engine, request, &batched);
    }
}

/// `batched`, the video `request` got in a batch, is the one it gets alone (within one level).
fn assert_same_as_alone(engine: &EngineHandle, request: &GenerationRequest, batched: &Generated) {
    let alone = engine
        .submit(request.clone(), no_previews())
        .wait_blocking(|_| {})
        .unwrap();
    let what = format!("seed {}", request.seed);
    assert_frames_within_one_level(&what, &batched.video, &alone.video);
}

/// Follows `job`, cancels it once it reports step 2, and returns its result and the last step
/// it reported.
fn cancel_at_step_2(job: &mut JobHandle) -> (Result<Generated, EngineError>, usize) {
    let mut last_step = 0;
    loop {
        match job.events.blocking_recv().unwrap() {
            EngineEvent::Progress(p) => {
                last_step = p.step;
                if p.step == 2 {
                    job.cancel.cancel();
                }
            }
            EngineEvent::Finished(r) => return (r, last_step),
            EngineEvent::Started => {}
        }
    }
}
