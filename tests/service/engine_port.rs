//! The runner against the engine port alone: a scripted test double
//! (tests/support/engine_double.rs) stands where the engine would, so what the core does with
//! each engine event is checked exactly, without a model: the order of the member's updates,
//! a cancel reaching the engine, and an engine error ending the job failed with its reason.

use std::sync::Arc;
use std::time::Duration;

use super::support::engine_double::{small_video, Script, ScriptedEngineDouble};
use super::support::job_fakes::*;
use floor33::core::{
    CancelOutcome, Canceller, JobService, JobState, JobUpdate, ServiceConfig, ShutdownMode,
};
use floor33::engine::EngineError;
use floor33::models::config::Variant;

async fn start(
    dir: &std::path::Path,
    engine: &ScriptedEngineDouble,
    notifier: &Arc<RecordingNotifier>,
) -> JobService {
    let mut config = ServiceConfig::new(dir.join("floor33.db"));
    config.defaults.default_variant = Variant::Tiny;
    config.preview_every = Some(Duration::from_millis(250));
    JobService::start(config, engine.clone(), notifier.clone(), None)
        .await
        .unwrap()
}

/// An update without its timings, to compare sequences.
fn shape(u: &JobUpdate) -> String {
    match u {
        JobUpdate::Queued { position } => format!("queued {position}"),
        JobUpdate::Running { step, total, .. } => format!("running {step}/{total}"),
        JobUpdate::Encoding => "encoding".into(),
        JobUpdate::Failed { error } => format!("failed: {error}"),
        JobUpdate::Cancelled { by_user } => format!("cancelled by {by_user:?}"),
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_progress_becomes_the_members_updates_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let engine = ScriptedEngineDouble::new(&[Variant::Tiny], Script::Succeed { total: 3 });
    let service = start(dir.path(), &engine, &notifier).await;

    let id = service
        .submit(tiny_spec("a red fox", 3), origin(1, 10))
        .await
        .unwrap()
        .id;
    wait_until(30, "delivery", || notifier.delivered() == vec![id]).await;
    let updates: Vec<String> = notifier.updates_of(id).iter().map(shape).collect();
    assert_eq!(
        updates,
        [
            "queued 1",
            "running 0/3",
            "running 1/3",
            "running 2/3",
            "running 3/3",
            "encoding"
        ]
    );
    // What the core asked of the engine: the stored spec, the configured preview rate.
    {
        let submissions = engine.submissions.lock().unwrap();
        assert_eq!(submissions.len(), 1);
        let asked = &submissions[0];
        assert_eq!(
            (
                asked.request.prompt.as_str(),
                asked.request.steps,
                asked.request.seed
            ),
            ("a red fox", 3, 7)
        );
        assert_eq!(
            (
                asked.request.height,
                asked.request.width,
                asked.request.frames
            ),
            (32, 48, 4)
        );
        assert_eq!(
            asked.options.preview_every,
            Some(Duration::from_millis(250))
        );
    }
    // The engine's video is what is delivered (the MP4 holds the double's 16×8 frames).
    let (_, video) = notifier.deliveries.lock().unwrap()[0].clone();
    assert_eq!(video.steps_run, 3);
    let frames = floor33::video::decode_mp4(&video.path).unwrap();
    assert_eq!(frames.len(), small_video(8).frames.len());
    assert!(frames.iter().all(|f| f.dimensions() == (16, 8)));
    let job = service.get(id).await.unwrap().unwrap();
    assert_eq!((job.state, job.steps_run), (JobState::Done, Some(3)));
    service.shutdown(ShutdownMode::Finish).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_cancel_reaches_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let engine = ScriptedEngineDouble::new(
        &[Variant::Tiny],
        Script::RunUntilCancelled { step: 2, total: 50 },
    );
    let service = start(dir.path(), &engine, &notifier).await;

    let id = service
        .submit(tiny_spec("a long one", 50), origin(1, 10))
        .await
        .unwrap()
        .id;
    wait_until(30, "step 2", || notifier.reached_step(id, 2)).await;
    assert!(!engine.cancelled(0), "nobody cancelled yet");
    let author = Canceller {
        user_id: 10,
        guild_id: Some(1),
        is_admin: false,
    };
    assert_eq!(
        service.cancel(id, author).await,
        Ok(CancelOutcome::Stopping)
    );
    assert!(engine.cancelled(0), "the cancel reached the engine's token");
    wait_until(30, "the cancel notice", || {
        notifier.has(id, |u| {
            matches!(u, JobUpdate::Cancelled { by_user: Some(10) })
        })
    })
    .await;
    let updates: Vec<String> = notifier.updates_of(id).iter().map(shape).collect();
    assert_eq!(
        updates,
        [
            "queued 1",
            "running 0/50",
            "running 1/50",
            "running 2/50",
            "cancelled by Some(10)"
        ]
    );
    assert_eq!(
        service.get(id).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    assert!(notifier.delivered().is_empty());
    service.shutdown(ShutdownMode::Finish).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_error_ends_the_job_failed_with_its_reason_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let engine = ScriptedEngineDouble::new(
        &[Variant::Tiny],
        Script::Fail(EngineError::OutOfMemory("CUDA_ERROR_OUT_OF_MEMORY".into())),
    );
    let service = start(dir.path(), &engine, &notifier).await;

    let oom = service
        .submit(tiny_spec("too big", 2), origin(1, 10))
        .await
        .unwrap()
        .id;
    let failed = |id| notifier.has(id, |u| matches!(u, JobUpdate::Failed { .. }));
    wait_until(30, "the failure notice", || failed(oom)).await;
    let job = service.get(oom).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(
        job.error.as_deref(),
        Some("the GPU ran out of memory: CUDA_ERROR_OUT_OF_MEMORY")
    );
    assert_eq!(
        notifier.updates_of(oom).last().map(shape).as_deref(),
        Some("failed: the GPU ran out of memory: CUDA_ERROR_OUT_OF_MEMORY")
    );

    // An engine that drops a job without an answer fails it too, in words; the next job runs.
    engine.set_script(Script::Vanish);
    let vanished = service
        .submit(tiny_spec("lost", 2), origin(1, 11))
        .await
        .unwrap()
        .id;
    wait_until(30, "the second failure", || failed(vanished)).await;
    assert_eq!(
        service
            .get(vanished)
            .await
            .unwrap()
            .unwrap()
            .error
            .as_deref(),
        Some("the engine stopped")
    );
    engine.set_script(Script::Succeed { total: 1 });
    let next = service
        .submit(tiny_spec("still runs", 1), origin(1, 12))
        .await
        .unwrap()
        .id;
    wait_until(30, "the next delivery", || {
        notifier.delivered() == vec![next]
    })
    .await;
    assert_eq!(engine.submitted(), 3);
    service.shutdown(ShutdownMode::Finish).await;
}
