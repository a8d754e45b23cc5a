//! The runner batching compatible waiting jobs (`ServiceConfig::max_batch`): the next job in
//! fair order and the waiting jobs that share its model, size, steps and eta go to the engine as
//! one batch, and each keeps its own life — progress, cancel, end, delivery. Every test first
//! occupies the runner with a blocker job so that the jobs under test are all waiting when the
//! runner next looks; cancelling the blocker lets it look.

use std::sync::Arc;
use std::time::Duration;

use super::support::engine_double::{RecordingEngineDouble, Script, ScriptedEngineDouble};
use super::support::golden::assert_frames_within_one_level;
use super::support::job_fakes::*;
use floor33::core::{
    CancelOutcome, Canceller, JobId, JobService, JobSpec, JobState, JobUpdate, ServiceConfig,
    ShutdownMode, VideoEngine, VideoShape,
};
use floor33::engine::JobOptions;
use floor33::models::config::Variant;

fn config(dir: &std::path::Path, max_batch: usize) -> ServiceConfig {
    let mut config = ServiceConfig::new(dir.join("floor33.db"));
    config.defaults.default_variant = Variant::Tiny;
    config.defaults.max_steps = 200;
    config.preview_every = Some(Duration::ZERO);
    config.max_batch = max_batch;
    config
}

async fn start(
    dir: &std::path::Path,
    max_batch: usize,
    engine: impl VideoEngine,
    notifier: &Arc<RecordingNotifier>,
) -> JobService {
    JobService::start(config(dir, max_batch), engine, notifier.clone(), None)
        .await
        .unwrap()
}

fn author(user_id: u64) -> Canceller {
    Canceller {
        user_id,
        guild_id: Some(1),
        is_admin: false,
    }
}

/// A tiny job of its own prompt, seed and guidance.
fn spec(prompt: &str, steps: usize, seed: u64, cfg: f64) -> JobSpec {
    JobSpec {
        seed,
        cfg,
        ..tiny_spec(prompt, steps)
    }
}

/// The scripted engine double holding every job at step 1 of 2 until it is cancelled (or its
/// script is changed).
fn held_engine() -> ScriptedEngineDouble {
    ScriptedEngineDouble::new(
        &[Variant::Tiny],
        Script::RunUntilCancelled { step: 1, total: 2 },
    )
}

/// Submits `spec` for `user` in guild 1.
async fn submit(service: &JobService, spec: JobSpec, user: u64) -> JobId {
    service.submit(spec, origin(1, user)).await.unwrap().id
}

/// A job of user 10 that runs until cancelled (200 steps of the tiny model, or the double's
/// script), started before the jobs under test are queued.
async fn occupy(service: &JobService, notifier: &RecordingNotifier) -> JobId {
    let busy = submit(service, tiny_spec("blocker", 200), 10).await;
    wait_until(60, "the blocker to run", || notifier.reached_step(busy, 1)).await;
    busy
}

/// Cancels the blocker and waits until it ended, so that the runner takes the next jobs.
async fn release(service: &JobService, notifier: &RecordingNotifier, busy: JobId) {
    assert_eq!(
        service.cancel(busy, author(10)).await,
        Ok(CancelOutcome::Stopping)
    );
    wait_until(60, "the blocker's end", || {
        notifier.has(busy, |u| matches!(u, JobUpdate::Cancelled { .. }))
    })
    .await;
}

/// The steps a job's member was shown, in order.
fn steps_shown(notifier: &RecordingNotifier, id: JobId) -> Vec<usize> {
    notifier
        .updates_of(id)
        .iter()
        .filter_map(|u| match u {
            JobUpdate::Running { step, .. } => Some(*step),
            _ => None,
        })
        .collect()
}

async fn state_of(service: &JobService, id: JobId) -> JobState {
    service.get(id).await.unwrap().unwrap().state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_compatible_jobs_run_as_one_batch_and_each_gets_its_solo_video() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let engine = RecordingEngineDouble::new(tiny_engine());
    let service = start(dir.path(), 4, engine.clone(), &notifier).await;
    let busy = occupy(&service, &notifier).await;

    let specs = [
        spec("a red fox in the snow", 3, 21, 7.5),
        spec("waves at dusk", 3, 22, 12.0),
        spec("a lighthouse", 3, 23, 1.0),
        JobSpec {
            negative: Some("blurry".into()),
            fps: 24,
            ..spec("a corgi on a beach", 3, 24, 9.0)
        },
    ];
    let mut ids = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        ids.push(submit(&service, spec.clone(), 11 + i as u64).await);
    }
    release(&service, &notifier, busy).await;
    wait_until(180, "four deliveries", || notifier.delivered().len() == 4).await;

    // The blocker alone, then one engine call for the four.
    assert_eq!(engine.call_sizes(), vec![1, 4]);
    let batch = engine.calls.lock().unwrap()[1].clone();
    let seeds: Vec<u64> = batch.iter().map(|r| r.seed).collect();
    assert_eq!(seeds, vec![21, 22, 23, 24], "fair order within the batch");
    for (id, spec) in ids.iter().zip(&specs) {
        assert_eq!(state_of(&service, *id).await, JobState::Done);
        let total = spec.sampling_steps();
        assert_eq!(
            steps_shown(&notifier, *id),
            (0..=total).collect::<Vec<_>>(),
            "job {id} shows its own steps"
        );
        assert!(
            notifier.has(*id, |u| matches!(
                u,
                JobUpdate::Running {
                    preview_png: Some(_),
                    ..
                }
            )),
            "job {id} gets its own previews"
        );
    }
    let mut delivered = notifier.delivered();
    delivered.sort();
    assert_eq!(delivered, ids);

    // Each job's video is the one the same request makes alone on the same engine.
    for request in batch {
        let seed = request.seed;
        let batched = engine.video_of(seed).expect("a video per job");
        let alone_engine = engine.engine.clone();
        let alone = tokio::task::spawn_blocking(move || {
            alone_engine
                .submit(
                    request,
                    JobOptions {
                        preview_every: None,
                    },
                )
                .wait_blocking(|_| {})
        })
        .await
        .unwrap()
        .expect("runs alone");
        assert_frames_within_one_level(&format!("seed {seed}"), &batched.video, &alone.video);
    }
    // The jobs did not share their inputs.
    let (a, b) = (engine.video_of(21).unwrap(), engine.video_of(22).unwrap());
    let differ = a.video.frames[0]
        .as_raw()
        .iter()
        .zip(b.video.frames[0].as_raw())
        .any(|(x, y)| x.abs_diff(*y) > 10);
    assert!(differ, "different prompts and seeds give different videos");
    service.shutdown(ShutdownMode::Finish).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_one_job_of_a_running_batch_stops_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let engine = RecordingEngineDouble::new(tiny_engine());
    let service = start(dir.path(), 4, engine.clone(), &notifier).await;
    let busy = occupy(&service, &notifier).await;

    // Enough steps left after the first for the cancel to land mid-run (about half a second
    // each for a batch of three here).
    let steps = 10;
    let mut ids = Vec::new();
    for i in 0..3u64 {
        let spec = spec(&format!("job {i}"), steps, 31 + i, 7.5);
        ids.push(submit(&service, spec, 11 + i).await);
    }
    release(&service, &notifier, busy).await;
    wait_until(120, "the batch's first step", || {
        ids.iter().all(|&id| notifier.reached_step(id, 1))
    })
    .await;
    assert_eq!(
        service.cancel(ids[1], author(12)).await,
        Ok(CancelOutcome::Stopping)
    );
    wait_until(120, "the cancel notice", || {
        notifier.has(ids[1], |u| {
            matches!(u, JobUpdate::Cancelled { by_user: Some(12) })
        })
    })
    .await;
    wait_until(240, "the two others delivered", || {
        notifier.delivered().len() == 2
    })
    .await;

    assert_eq!(
        engine.call_sizes(),
        vec![1, 3],
        "the three ran as one batch"
    );
    assert_eq!(state_of(&service, ids[1]).await, JobState::Cancelled);
    let total = tiny_spec("", steps).sampling_steps();
    assert!(
        !notifier.reached_step(ids[1], total),
        "the cancelled job stopped before its last step"
    );
    for id in [ids[0], ids[2]] {
        assert_eq!(state_of(&service, id).await, JobState::Done);
        assert!(notifier.reached_step(id, total));
        assert!(!notifier.has(id, |u| matches!(u, JobUpdate::Cancelled { .. })));
    }
    let mut delivered = notifier.delivered();
    delivered.sort();
    assert_eq!(delivered, vec![ids[0], ids[2]]);
    service.shutdown(ShutdownMode::Finish).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_jobs_are_not_batched_and_run_in_fair_order() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let engine = held_engine();
    let service = start(dir.path(), 4, engine.clone(), &notifier).await;
    let busy = occupy(&service, &notifier).await;

    let wide = JobSpec {
        shape: Some(VideoShape {
            height: 32,
            width: 64,
            frames: 4,
        }),
        ..tiny_spec("j4", 2)
    };
    // Fair order: j1, j2, j3, j4, j5 (one job each of five members).
    let j1 = submit(&service, tiny_spec("j1", 2), 11).await;
    let j2 = submit(&service, tiny_spec("j2", 3), 12).await;
    let j3 = submit(&service, tiny_spec("j3", 2), 13).await;
    let j4 = submit(&service, wide, 14).await;
    let j5 = submit(&service, tiny_spec("j5", 2), 15).await;
    release(&service, &notifier, busy).await;
    wait_until(60, "the batch to run", || {
        [j1, j3, j5].iter().all(|&id| notifier.reached_step(id, 1))
    })
    .await;
    assert_eq!(engine.batch_prompts(), vec![vec!["j1", "j3", "j5"]]);

    // Those left waiting keep their order and hear their new places.
    let view = service.queue_view(Some(1));
    assert_eq!(view.running.map(|r| r.id), Some(j1));
    let also: Vec<JobId> = view.also_running.iter().map(|r| r.id).collect();
    assert_eq!(also, vec![j3, j5]);
    let waiting: Vec<(JobId, usize)> = view.waiting.iter().map(|e| (e.id, e.position)).collect();
    assert_eq!(waiting, vec![(j2, 1), (j4, 2)]);
    wait_until(30, "the new places", || {
        notifier.has(j2, |u| *u == JobUpdate::Queued { position: 1 })
            && notifier.has(j4, |u| *u == JobUpdate::Queued { position: 2 })
    })
    .await;

    // The batch ends (its members cancel it); the others then run one by one, in order.
    engine.set_script(Script::Succeed { total: 2 });
    for (id, user) in [(j1, 11), (j3, 13), (j5, 15)] {
        assert_eq!(
            service.cancel(id, author(user)).await,
            Ok(CancelOutcome::Stopping)
        );
    }
    wait_until(60, "j2 and j4 delivered", || {
        notifier.delivered().len() == 2
    })
    .await;
    let mut delivered = notifier.delivered();
    delivered.sort();
    assert_eq!(delivered, vec![j2, j4]);
    assert_eq!(
        engine.prompts(),
        vec!["blocker", "j1", "j3", "j5", "j2", "j4"]
    );
    assert_eq!(
        engine.batches.lock().unwrap().len(),
        1,
        "j2 and j4 ran alone"
    );
    for id in [j1, j3, j5] {
        assert_eq!(state_of(&service, id).await, JobState::Cancelled);
    }
    service.shutdown(ShutdownMode::Finish).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_batch_one_runs_compatible_jobs_one_at_a_time_in_fair_order() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let engine = held_engine();
    let service = start(dir.path(), 1, engine.clone(), &notifier).await;
    let busy = occupy(&service, &notifier).await;

    // Member 11 queues two jobs, member 12 one: fair order j1, j3, j2.
    let j1 = submit(&service, tiny_spec("j1", 2), 11).await;
    let j2 = submit(&service, tiny_spec("j2", 2), 11).await;
    let j3 = submit(&service, tiny_spec("j3", 2), 12).await;
    engine.set_script(Script::Succeed { total: 2 });
    release(&service, &notifier, busy).await;
    wait_until(60, "three deliveries", || notifier.delivered().len() == 3).await;

    // The engine saw them in fair order, one submit each.
    assert_eq!(engine.prompts(), vec!["blocker", "j1", "j3", "j2"]);
    let mut delivered = notifier.delivered();
    delivered.sort();
    assert_eq!(delivered, vec![j1, j2, j3]);
    assert!(engine.batches.lock().unwrap().is_empty(), "no batch call");
    service.shutdown(ShutdownMode::Finish).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_requeues_every_job_of_a_running_batch() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let engine = held_engine();
    let service = start(dir.path(), 4, engine.clone(), &notifier).await;
    let busy = occupy(&service, &notifier).await;
    let mut ids = Vec::new();
    for user in 11..14 {
        ids.push(submit(&service, tiny_spec(&format!("j{user}"), 2), user).await);
    }
    release(&service, &notifier, busy).await;
    wait_until(60, "the batch to run", || {
        ids.iter().all(|&id| notifier.reached_step(id, 1))
    })
    .await;
    assert_eq!(engine.batches.lock().unwrap().len(), 1);

    service.shutdown(ShutdownMode::Requeue).await;
    for (n, &id) in ids.iter().enumerate() {
        assert!(engine.cancelled(n + 1), "job {id}'s engine run was stopped");
        assert_eq!(state_of(&service, id).await, JobState::Queued);
    }
    assert!(notifier.delivered().is_empty());

    // The next start runs them again, in the same fair order, as one batch.
    engine.set_script(Script::Succeed { total: 2 });
    let again = start(dir.path(), 4, engine.clone(), &notifier).await;
    wait_until(60, "three deliveries", || notifier.delivered().len() == 3).await;
    assert_eq!(
        engine.batch_prompts()[1],
        vec!["j11", "j12", "j13"],
        "requeued in their order"
    );
    again.shutdown(ShutdownMode::Finish).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_prompt_needs_expanding_runs_alone() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let engine = held_engine();
    let expander = Arc::new(SuffixExpander {
        suffix: "cinematic".into(),
        ..Default::default()
    });
    let service = JobService::start(
        config(dir.path(), 4),
        engine.clone(),
        notifier.clone(),
        Some(expander.clone()),
    )
    .await
    .unwrap();
    let busy = occupy(&service, &notifier).await;
    let expanding = JobSpec {
        expand: true,
        ..tiny_spec("j1", 2)
    };
    submit(&service, expanding, 11).await;
    submit(&service, tiny_spec("j2", 2), 12).await;
    submit(&service, tiny_spec("j3", 2), 13).await;
    engine.set_script(Script::Succeed { total: 2 });
    release(&service, &notifier, busy).await;
    wait_until(60, "three deliveries", || notifier.delivered().len() == 3).await;

    assert_eq!(
        engine.prompts(),
        vec!["blocker", "j1, cinematic", "j2", "j3"]
    );
    assert_eq!(engine.batch_prompts(), vec![vec!["j2", "j3"]]);
    service.shutdown(ShutdownMode::Finish).await;
}
