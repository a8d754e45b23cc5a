//! The job service end to end with the tiny real engine and a recording notifier: a job's life
//! from submit to delivery, refusals, cancellation, settings and the queue views.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::support::job_fakes::*;
use floor33::core::{
    CancelError, CancelOutcome, Canceller, JobKind, JobService, JobSpec, JobState, JobUpdate,
    Refusal, ServiceConfig, SettingError, ShutdownMode,
};
use floor33::engine::EngineHandle;
use floor33::models::config::Variant;

fn config(dir: &std::path::Path) -> ServiceConfig {
    let mut config = ServiceConfig::new(dir.join("floor33.db"));
    config.defaults.default_variant = Variant::Tiny;
    config.defaults.max_steps = 200;
    config.preview_every = Some(Duration::ZERO);
    config
}

async fn start(
    dir: &std::path::Path,
    engine: &EngineHandle,
    notifier: &Arc<RecordingNotifier>,
) -> JobService {
    JobService::start(config(dir), engine.clone(), notifier.clone(), None)
        .await
        .unwrap()
}

fn user(user_id: u64, guild: u64) -> Canceller {
    Canceller {
        user_id,
        guild_id: Some(guild),
        is_admin: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_to_video_job_runs_and_is_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let service = start(dir.path(), &tiny_engine(), &notifier).await;

    let submitted = service
        .submit(tiny_spec("a red fox", 2), origin(1, 10))
        .await
        .unwrap();
    assert_eq!(submitted.position, 1);
    let id = submitted.id;
    wait_until(120, "delivery", || notifier.delivered() == vec![id]).await;

    let updates = notifier.updates_of(id);
    let steps: Vec<usize> = updates
        .iter()
        .filter_map(|u| match u {
            JobUpdate::Running { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, vec![0, 1, 2], "{updates:?}");
    assert!(
        updates.iter().any(|u| matches!(u, JobUpdate::Running { preview_png: Some(png), .. } if png.starts_with(b"\x89PNG"))),
        "a preview arrives"
    );
    assert!(updates.contains(&JobUpdate::Encoding));

    let (_, video) = notifier.deliveries.lock().unwrap()[0].clone();
    assert_eq!(&video.mp4[4..8], b"ftyp");
    assert_eq!((video.width, video.height, video.frames), (48, 32, 4));
    assert_eq!(video.prompt, "a red fox");

    let job = wait_for_delivered_flag(&service, id).await;
    assert_eq!(job.state, JobState::Done);
    assert_eq!(job.steps_run, Some(2));
    assert!(job.result_path.unwrap().exists());
    let stats = service.stats(Some(1)).await.unwrap();
    assert_eq!(stats.counts.done, 1);
    assert!(stats.counts.mean_run_time.is_some());
    service.shutdown(ShutdownMode::Finish).await;
    assert_eq!(notifier.delivered(), vec![id], "delivered exactly once");
}

/// The notifier saw the video before the service recorded it: give the store a moment.
async fn wait_for_delivered_flag(
    service: &JobService,
    id: floor33::core::JobId,
) -> floor33::core::JobRecord {
    for _ in 0..500 {
        let job = service.get(id).await.unwrap().unwrap();
        if job.delivered {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {id} never marked delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outside_the_rules_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let service = start(dir.path(), &tiny_engine(), &notifier).await;
    service
        .set_setting(1, 99, "blocked_words", "gore, red wine")
        .await
        .unwrap();
    service
        .set_setting(1, 99, "default_steps", "2")
        .await
        .unwrap();
    service.set_setting(1, 99, "max_steps", "10").await.unwrap();
    service
        .set_setting(1, 99, "allowed_channels", "1001")
        .await
        .unwrap();

    let refused = |r: Result<_, Refusal>| r.unwrap_err();
    let r = refused(
        service
            .submit(tiny_spec("a glass of Red Wine", 2), origin(1, 10))
            .await,
    );
    assert_eq!(
        r,
        Refusal::BlockedWord {
            word: "red wine".into()
        }
    );
    assert!(r.to_string().contains("red wine"));
    let r = refused(service.submit(tiny_spec("a cat", 50), origin(1, 10)).await);
    assert_eq!(
        r.to_string(),
        "steps must be between 1 and 10 on this server"
    );
    let mut elsewhere = origin(1, 10);
    elsewhere.channel_id = 5;
    let r = refused(service.submit(tiny_spec("a cat", 2), elsewhere).await);
    assert_eq!(
        r,
        Refusal::ChannelNotAllowed {
            allowed: vec![1001]
        }
    );
    let mut spec = tiny_spec("a cat", 2);
    spec.variant = Variant::Vc2;
    assert!(matches!(
        refused(service.submit(spec, origin(1, 10)).await),
        Refusal::ModelNotLoaded { .. }
    ));
    let mut spec = tiny_spec("a cat", 2);
    spec.shape.as_mut().unwrap().width = 50;
    let r = refused(service.submit(spec, origin(1, 10)).await);
    assert!(
        r.to_string().starts_with("Width 50 is not a multiple"),
        "{r}"
    );
    let mut spec = tiny_spec("a cat", 2);
    spec.kind = JobKind::ImageToVideo;
    assert!(matches!(
        refused(service.submit(spec, origin(1, 10)).await),
        Refusal::Invalid(_)
    ));

    // Cooldown: the second request within the window names the wait.
    service
        .set_setting(2, 99, "cooldown_s", "60")
        .await
        .unwrap();
    service
        .submit(tiny_spec("a cat", 2), origin(2, 20))
        .await
        .unwrap();
    let r = refused(service.submit(tiny_spec("a dog", 2), origin(2, 20)).await);
    assert!(matches!(r, Refusal::Cooldown { .. }), "{r:?}");
    assert!(r.to_string().contains("cooldown is 1m"), "{r}");

    service.shutdown(ShutdownMode::Requeue).await;
    let r = refused(service.submit(tiny_spec("late", 2), origin(3, 30)).await);
    assert_eq!(r, Refusal::ShuttingDown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_waiting_and_running_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let service = start(dir.path(), &tiny_engine(), &notifier).await;

    let long = service
        .submit(tiny_spec("a long one", 200), origin(1, 10))
        .await
        .unwrap()
        .id;
    let waiting = service
        .submit(tiny_spec("a waiting one", 2), origin(1, 11))
        .await
        .unwrap()
        .id;
    wait_until(60, "the first step", || notifier.reached_step(long, 1)).await;

    // Only the author or an admin of the same guild may cancel.
    assert_eq!(
        service.cancel(waiting, user(12, 1)).await,
        Err(CancelError::NotYours(waiting))
    );
    let foreign_admin = Canceller {
        is_admin: true,
        ..user(12, 2)
    };
    assert_eq!(
        service.cancel(waiting, foreign_admin).await,
        Err(CancelError::NotYours(waiting))
    );
    assert_eq!(
        service.cancel(waiting, user(11, 1)).await,
        Ok(CancelOutcome::Removed)
    );
    assert_eq!(service.queue_view(Some(1)).waiting, vec![]);

    let admin = Canceller {
        is_admin: true,
        ..user(12, 1)
    };
    assert_eq!(
        service.cancel(long, admin).await,
        Ok(CancelOutcome::Stopping)
    );
    wait_until(60, "the cancel notice", || {
        notifier.has(long, |u| {
            matches!(u, JobUpdate::Cancelled { by_user: Some(12) })
        })
    })
    .await;
    let job = service.get(long).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert!(
        !notifier.reached_step(long, 150),
        "stopped at the next step"
    );
    assert_eq!(
        service.get(waiting).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    assert_eq!(
        service.cancel(long, user(10, 1)).await,
        Err(CancelError::AlreadyFinished {
            id: long,
            state: JobState::Cancelled
        })
    );
    assert!(notifier.delivered().is_empty());
    service.shutdown(ShutdownMode::Finish).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_view_shows_fair_positions_and_hides_other_guilds_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let service = start(dir.path(), &tiny_engine(), &notifier).await;
    service
        .set_setting(1, 99, "member_waiting_limit", "5")
        .await
        .unwrap();

    let blocker = service
        .submit(tiny_spec("blocker", 200), origin(2, 20))
        .await
        .unwrap()
        .id;
    wait_until(60, "the blocker to run", || {
        notifier.reached_step(blocker, 1)
    })
    .await;
    let mut heavy = Vec::new();
    for i in 0..5 {
        heavy.push(
            service
                .submit(tiny_spec(&format!("heavy {i}"), 2), origin(1, 10))
                .await
                .unwrap(),
        );
    }
    let light = service
        .submit(tiny_spec("light", 2), origin(1, 11))
        .await
        .unwrap();
    assert_eq!(
        light.position, 2,
        "one member's five jobs do not delay another's first"
    );
    let r = service
        .submit(tiny_spec("sixth", 2), origin(1, 10))
        .await
        .unwrap_err();
    assert_eq!(r, Refusal::WaitingLimit { limit: 5 });

    let view = service.queue_view(Some(1));
    let running = view.running.unwrap();
    assert_eq!((running.id, running.prompt.as_deref()), (blocker, None));
    assert!(running.progress.is_some());
    let order: Vec<_> = view.waiting.iter().map(|e| (e.id, e.position)).collect();
    assert_eq!(order[..2], [(heavy[0].id, 1), (light.id, 2)]);
    assert_eq!(view.total_waiting, 6);
    assert_eq!(view.waiting[1].prompt.as_deref(), Some("light"));
    assert_eq!(service.queue_view(Some(2)).waiting, vec![]);
    service.shutdown(ShutdownMode::Requeue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_set_reset_and_show_with_an_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let service = start(dir.path(), &tiny_engine(), &notifier).await;

    let change = service
        .set_setting(5, 77, "default_steps", "20")
        .await
        .unwrap();
    assert_eq!((change.old.as_str(), change.new.as_str()), ("50", "20"));
    let err = service
        .set_setting(5, 77, "default_steps", "500")
        .await
        .unwrap_err();
    assert!(matches!(err, SettingError::Invalid { .. }), "{err}");
    assert!(service.set_setting(5, 77, "nonsense", "1").await.is_err());
    let spec = service
        .default_spec(Some(5), JobKind::TextToVideo, "x")
        .await
        .unwrap();
    assert_eq!((spec.steps, spec.variant), (20, Variant::Tiny));

    let view = service.settings_view(5).await.unwrap();
    let steps = view
        .iter()
        .find(|v| v.key.name() == "default_steps")
        .unwrap();
    assert!(steps.overridden && steps.value == "20" && steps.default == "50");

    let change = service.reset_setting(5, 78, "default_steps").await.unwrap();
    assert_eq!((change.old.as_str(), change.new.as_str()), ("20", "50"));
    assert_eq!(service.settings(Some(5)).await.unwrap().default_steps, 50);
    let log = service.audit_log(5, 10).await.unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!((log[0].user_id, log[0].action.as_str()), (78, "reset"));
    assert_eq!((log[1].old.as_str(), log[1].new.as_str()), ("50", "20"));
    service.set_setting(5, 77, "cfg", "9").await.unwrap();
    service.shutdown(ShutdownMode::Finish).await;

    // Settings outlive the process.
    let again = start(dir.path(), &tiny_engine(), &notifier).await;
    assert_eq!(again.settings(Some(5)).await.unwrap().cfg, 9.0);
    again.shutdown(ShutdownMode::Finish).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_expansion_runs_before_generation_and_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let expander = Arc::new(SuffixExpander {
        suffix: "cinematic lighting".into(),
        ..Default::default()
    });
    let service = JobService::start(
        config(dir.path()),
        tiny_engine(),
        notifier.clone(),
        Some(expander.clone()),
    )
    .await
    .unwrap();
    let mut spec = tiny_spec("a lighthouse", 2);
    spec.expand = true;
    let id = service.submit(spec, origin(1, 10)).await.unwrap().id;
    wait_until(120, "delivery", || notifier.delivered() == vec![id]).await;
    let updates = notifier.updates_of(id);
    let expanded = JobUpdate::Expanded {
        prompt: "a lighthouse, cinematic lighting".into(),
    };
    let at = |u: &JobUpdate| updates.iter().position(|x| x == u).unwrap();
    assert!(at(&JobUpdate::Expanding) < at(&expanded));
    assert_eq!(expander.calls.load(Ordering::SeqCst), 1);
    let job = service.get(id).await.unwrap().unwrap();
    assert_eq!(
        job.spec.expanded_prompt.as_deref(),
        Some("a lighthouse, cinematic lighting")
    );
    assert_eq!(
        notifier.deliveries.lock().unwrap()[0].1.prompt,
        "a lighthouse, cinematic lighting"
    );
    service.shutdown(ShutdownMode::Finish).await;
}

/// Waits for `id` (an expanding job whose expansion adds "gore") to be delivered; true when
/// the expansion was refused for a blocked word (the member's own prompt ran).
async fn expansion_blocked(notifier: &RecordingNotifier, id: floor33::core::JobId) -> bool {
    wait_until(120, "delivery", || notifier.delivered().contains(&id)).await;
    let blocked = notifier.has(
        id,
        |u| matches!(u, JobUpdate::ExpansionSkipped { reason } if reason.contains("blocks")),
    );
    let ran = notifier
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .find(|(j, _)| *j == id)
        .map(|(_, v)| v.prompt.clone())
        .unwrap();
    assert_eq!(ran.contains("gore"), !blocked, "ran with: {ran}");
    blocked
}

/// Queues a long job for user 10 and waits until it runs, so the next job waits behind it.
async fn occupy_runner(service: &JobService, notifier: &RecordingNotifier) -> floor33::core::JobId {
    let busy = service
        .submit(tiny_spec("keeps the runner busy", 100), origin(1, 10))
        .await
        .unwrap()
        .id;
    wait_until(60, "the busy job to start", || {
        notifier.reached_step(busy, 1)
    })
    .await;
    busy
}

fn expanding(prompt: &str) -> JobSpec {
    JobSpec {
        expand: true,
        ..tiny_spec(prompt, 1)
    }
}

/// The settings cache is empty when a waiting job is expanded after `/config set` (the set
/// drops it) and after a restart (nothing read it yet): the server's list must still apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expanded_prompt_meets_the_servers_blocked_words_after_a_set_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let expander = Arc::new(SuffixExpander {
        suffix: "gore everywhere".into(),
        ..Default::default()
    });
    let engine = tiny_engine();
    let start_expanding = || {
        JobService::start(
            config(dir.path()),
            engine.clone(),
            notifier.clone(),
            Some(expander.clone()),
        )
    };
    let service = start_expanding().await.unwrap();
    // The operator's defaults block nothing: only the server's own list can catch "gore".
    let free = service
        .submit(expanding("a calm sea"), origin(1, 11))
        .await
        .unwrap()
        .id;
    assert!(!expansion_blocked(&notifier, free).await);

    let busy = occupy_runner(&service, &notifier).await;
    let waiting = service
        .submit(expanding("a quiet harbour"), origin(1, 11))
        .await
        .unwrap()
        .id;
    service
        .set_setting(1, 99, "blocked_words", "gore")
        .await
        .unwrap();
    service.cancel(busy, user(10, 1)).await.unwrap();
    assert!(
        expansion_blocked(&notifier, waiting).await,
        "a job waiting across /config set"
    );

    let busy = occupy_runner(&service, &notifier).await;
    let waiting = service
        .submit(expanding("a misty pier"), origin(1, 12))
        .await
        .unwrap()
        .id;
    service.shutdown(ShutdownMode::Requeue).await;
    let again = start_expanding().await.unwrap();
    again.cancel(busy, user(10, 1)).await.unwrap();
    assert!(
        expansion_blocked(&notifier, waiting).await,
        "a job recovered after a restart"
    );
    again.shutdown(ShutdownMode::Finish).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_to_video_job_runs_from_the_stored_image() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let service = start(dir.path(), &tiny_engine(), &notifier).await;
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_fn(60, 40, |x, y| image::Rgb([x as u8 * 4, y as u8 * 6, 200]))
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let spec = JobSpec {
        kind: JobKind::ImageToVideo,
        variant: Variant::TinyI2v,
        image: Some(png.into_inner()),
        ..tiny_spec("the clouds drift", 2)
    };
    let id = service
        .submit(spec.clone(), origin(1, 11))
        .await
        .unwrap()
        .id;
    wait_until(120, "i2v delivery", || notifier.delivered() == vec![id]).await;
    let (_, video) = notifier.deliveries.lock().unwrap()[0].clone();
    assert_eq!((video.width, video.height, video.frames), (48, 32, 4));

    // A corrupt image is refused at submit, with a reason the member can act on.
    let corrupt = JobSpec {
        image: Some(b"\x89PNG\r\n\x1a\nnot really".to_vec()),
        ..spec
    };
    let refusal = service.submit(corrupt, origin(1, 12)).await.unwrap_err();
    assert!(
        refusal.to_string().to_lowercase().contains("image"),
        "{refusal}"
    );
    service.shutdown(ShutdownMode::Finish).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_returns_the_stored_record_and_tells_the_place_first() {
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let service = start(dir.path(), &tiny_engine(), &notifier).await;
    let spec = tiny_spec("a quiet harbour", 2);
    let submitted = service.submit(spec.clone(), origin(1, 10)).await.unwrap();
    let id = submitted.id;
    // The first thing the member hears is the job's place, sent by the service itself.
    assert_eq!(
        notifier.updates_of(id).first(),
        Some(&JobUpdate::Queued {
            position: submitted.position
        })
    );
    let record = &submitted.record;
    assert_eq!(record.id, id);
    assert_eq!(record.spec, spec);
    assert_eq!(record.origin, origin(1, 10));
    assert_eq!(record.state, JobState::Queued);
    let stored = service.get(id).await.unwrap().unwrap();
    assert_eq!(
        (stored.round, stored.created_at),
        (record.round, record.created_at),
        "the record is the stored one, not a rebuilt copy"
    );
    wait_until(120, "delivery", || notifier.delivered() == vec![id]).await;
    service.shutdown(ShutdownMode::Finish).await;
}
