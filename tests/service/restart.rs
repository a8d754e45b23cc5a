//! Restart safety of the job service: a crash mid-job, a crash between the video and its
//! delivery, and a graceful shutdown. Each "process" is its own tokio runtime over the same
//! database; a crash is a runtime torn down with its tasks, without `shutdown`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::support::job_fakes::*;
use super::support::test_pg::TestPg;
use floor33::core::store::Location;
use floor33::core::{
    JobId, JobRecord, JobService, JobState, JobUpdate, ServiceConfig, ShutdownMode,
};
use floor33::engine::EngineHandle;
use floor33::models::config::Variant;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn start(dir: &Path, engine: &EngineHandle, notifier: &Arc<RecordingNotifier>) -> JobService {
    start_at(
        &Location::Sqlite(dir.join("floor33.db")),
        dir,
        engine,
        notifier,
    )
    .await
}

async fn start_at(
    database: &Location,
    dir: &Path,
    engine: &EngineHandle,
    notifier: &Arc<RecordingNotifier>,
) -> JobService {
    let mut config = ServiceConfig::new(dir.join("floor33.db"));
    config.database = database.clone();
    config.defaults.default_variant = Variant::Tiny;
    config.defaults.member_waiting_limit = 10;
    config.preview_every = None;
    JobService::start(config, engine.clone(), notifier.clone(), None)
        .await
        .unwrap()
}

async fn stored(service: &JobService, id: JobId) -> JobRecord {
    service.get(id).await.unwrap().unwrap()
}

async fn wait_delivered_flag(service: &JobService, id: JobId) {
    for _ in 0..500 {
        if stored(service, id).await.delivered {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {id} never marked delivered");
}

fn starts(notifier: &RecordingNotifier, id: JobId) -> usize {
    notifier
        .updates_of(id)
        .iter()
        .filter(|u| matches!(u, JobUpdate::Running { step: 0, .. }))
        .count()
}

#[test]
fn a_job_interrupted_by_a_crash_runs_again_once_and_is_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    crash_mid_job_then_restart(&Location::Sqlite(dir.path().join("floor33.db")), dir.path());
}

#[test]
fn on_postgres_a_job_interrupted_by_a_crash_runs_again_once_and_is_delivered_once() {
    let Some(pg) = TestPg::create("crash mid-job") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    crash_mid_job_then_restart(&Location::Postgres(pg.url.clone()), dir.path());
}

fn crash_mid_job_then_restart(database: &Location, dir: &Path) {
    let engine = tiny_engine();
    let notifier = shared(RecordingNotifier::default());

    let first = runtime();
    let id = first.block_on(async {
        let service = start_at(database, dir, &engine, &notifier).await;
        let id = service
            .submit(tiny_spec("interrupted", 4), origin(1, 10))
            .await
            .unwrap()
            .id;
        wait_until(60, "the first step", || notifier.reached_step(id, 1)).await;
        id
    });
    first.shutdown_background();
    assert!(notifier.delivered().is_empty());

    let second = runtime();
    second.block_on(async {
        let service = start_at(database, dir, &engine, &notifier).await;
        wait_until(120, "delivery", || !notifier.delivered().is_empty()).await;
        wait_delivered_flag(&service, id).await;
        assert_eq!(stored(&service, id).await.state, JobState::Done);
        service.shutdown(ShutdownMode::Finish).await;
    });
    drop(second);

    // A third start finds nothing left to run or deliver.
    let third = runtime();
    third.block_on(async {
        let service = start_at(database, dir, &engine, &notifier).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(service.queue_view(Some(1)).running.is_none());
        service.shutdown(ShutdownMode::Finish).await;
    });
    assert_eq!(notifier.delivered(), vec![id], "delivered exactly once");
    assert_eq!(
        starts(&notifier, id),
        2,
        "one interrupted run, one full run"
    );
}

#[test]
fn a_finished_but_undelivered_job_is_delivered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine();
    let notifier = shared(RecordingNotifier::default());
    notifier.fail_next.store(1, Ordering::SeqCst);

    let first = runtime();
    let id = first.block_on(async {
        let service = start(dir.path(), &engine, &notifier).await;
        let id = service
            .submit(tiny_spec("undelivered", 2), origin(1, 10))
            .await
            .unwrap()
            .id;
        wait_until(120, "the failed delivery", || {
            notifier.fail_next.load(Ordering::SeqCst) == 0
        })
        .await;
        service.shutdown(ShutdownMode::Finish).await;
        let job = stored(&service, id).await;
        assert_eq!((job.state, job.delivered), (JobState::Done, false));
        id
    });
    drop(first);
    assert!(notifier.delivered().is_empty());

    let second = runtime();
    second.block_on(async {
        let service = start(dir.path(), &engine, &notifier).await;
        wait_until(60, "redelivery", || !notifier.delivered().is_empty()).await;
        wait_delivered_flag(&service, id).await;
        service.shutdown(ShutdownMode::Finish).await;
    });
    assert_eq!(notifier.delivered(), vec![id]);
    assert_eq!(starts(&notifier, id), 1, "the video was not made twice");
}

#[test]
fn graceful_shutdown_requeues_the_running_job_at_the_head_and_keeps_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine();
    let notifier = shared(RecordingNotifier::default());

    let first = runtime();
    let (running, waiting) = first.block_on(async {
        let service = start(dir.path(), &engine, &notifier).await;
        let running = service
            .submit(tiny_spec("long", 4), origin(1, 10))
            .await
            .unwrap()
            .id;
        wait_until(60, "the first step", || notifier.reached_step(running, 1)).await;
        for (prompt, user) in [("b", 10), ("c", 10), ("d", 11), ("e", 12)] {
            service
                .submit(tiny_spec(prompt, 2), origin(1, user))
                .await
                .unwrap();
        }
        let waiting: Vec<JobId> = service
            .queue_view(Some(1))
            .waiting
            .iter()
            .map(|e| e.id)
            .collect();
        service.shutdown(ShutdownMode::Requeue).await;
        assert_eq!(stored(&service, running).await.state, JobState::Queued);
        (running, waiting)
    });
    drop(first);
    assert!(notifier.has(running, |u| *u == JobUpdate::Queued { position: 1 }));

    let second = runtime();
    second.block_on(async {
        let service = start(dir.path(), &engine, &notifier).await;
        let view = service.queue_view(Some(1));
        let mut order: Vec<JobId> = view.running.iter().map(|e| e.id).collect();
        order.extend(view.waiting.iter().map(|e| e.id));
        let mut expected = vec![running];
        expected.extend(&waiting);
        assert_eq!(order, expected);
        wait_until(120, "all deliveries", || notifier.delivered().len() == 5).await;
        service.shutdown(ShutdownMode::Finish).await;
    });
    assert_eq!(notifier.delivered(), [vec![running], waiting].concat());
}

/// A queued job whose model is no longer loaded after a restart: the service still starts, the
/// other jobs run, that one is failed with the reason and its member is told.
#[test]
fn a_queued_job_whose_model_is_gone_is_failed_and_its_member_told_at_start() {
    use floor33::core::{JobKind, JobSpec};
    use floor33::engine::{Limits, Pipeline};
    use floor33::models::config::ModelConfig;

    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_fn(60, 40, |x, y| image::Rgb([x as u8 * 4, y as u8 * 6, 200]))
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();

    let first = runtime();
    let (busy, orphan, behind) = first.block_on(async {
        let service = start(dir.path(), &tiny_engine(), &notifier).await;
        let busy = service
            .submit(tiny_spec("keeps the runner busy", 100), origin(1, 10))
            .await
            .unwrap()
            .id;
        wait_until(60, "the busy job to start", || {
            notifier.reached_step(busy, 1)
        })
        .await;
        let i2v = JobSpec {
            kind: JobKind::ImageToVideo,
            variant: Variant::TinyI2v,
            image: Some(png.into_inner()),
            ..tiny_spec("the clouds drift", 1)
        };
        let orphan = service.submit(i2v, origin(1, 11)).await.unwrap().id;
        let behind = service
            .submit(tiny_spec("still runs", 1), origin(1, 12))
            .await
            .unwrap()
            .id;
        (busy, orphan, behind)
    });
    first.shutdown_background();

    // The operator dropped the image-to-video model.
    let text_only = EngineHandle::spawn(
        || {
            Ok(vec![Pipeline::random(
                ModelConfig::tiny(),
                &candle_core::Device::Cpu,
                candle_core::DType::F32,
            )?])
        },
        Limits::default(),
    )
    .unwrap();
    let second = runtime();
    second.block_on(async {
        let service = start(dir.path(), &text_only, &notifier).await;
        let job = stored(&service, orphan).await;
        assert_eq!(job.state, JobState::Failed);
        let error = job.error.unwrap();
        assert!(
            error.contains("tiny-i2v") && error.contains("no longer loaded"),
            "{error}"
        );
        wait_until(30, "the member told", || {
            notifier.has(orphan, |u| {
                matches!(u, JobUpdate::Failed { error } if error.contains("could not be resumed"))
            })
        })
        .await;
        wait_delivered_flag(&service, orphan).await;
        let author = floor33::core::Canceller {
            user_id: 10,
            guild_id: Some(1),
            is_admin: false,
        };
        service.cancel(busy, author).await.unwrap();
        wait_until(120, "the other job", || {
            notifier.delivered().contains(&behind)
        })
        .await;
        service.shutdown(ShutdownMode::Requeue).await;
    });
}

/// A job row whose spec no longer parses: the service starts, the other jobs run, the row is
/// failed with the reason, and its member (the origin still reads) is told.
#[test]
fn an_unreadable_job_row_is_failed_and_its_member_told_while_the_rest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine();
    let notifier = shared(RecordingNotifier::default());

    let first = runtime();
    let (busy, bad, good) = first.block_on(async {
        let service = start(dir.path(), &engine, &notifier).await;
        let busy = service
            .submit(tiny_spec("keeps the runner busy", 100), origin(1, 10))
            .await
            .unwrap()
            .id;
        wait_until(60, "the busy job to start", || {
            notifier.reached_step(busy, 1)
        })
        .await;
        let bad = service
            .submit(tiny_spec("will be unreadable", 1), origin(1, 11))
            .await
            .unwrap()
            .id;
        let good = service
            .submit(tiny_spec("still runs", 1), origin(1, 12))
            .await
            .unwrap()
            .id;
        (busy, bad, good)
    });
    first.shutdown_background();
    let db = rusqlite::Connection::open(dir.path().join("floor33.db")).unwrap();
    db.execute(
        "UPDATE jobs SET spec = '{\"kind\": \"t2v\", broken' WHERE id = ?1",
        [bad.0],
    )
    .unwrap();

    let second = runtime();
    second.block_on(async {
        let service = start(dir.path(), &engine, &notifier).await;
        wait_until(30, "the member told", || {
            notifier
                .lost
                .lock()
                .unwrap()
                .iter()
                .any(|(id, user, reason)| {
                    *id == bad && *user == 11 && reason.contains("could not be resumed")
                })
        })
        .await;
        let author = floor33::core::Canceller {
            user_id: 10,
            guild_id: Some(1),
            is_admin: false,
        };
        service.cancel(busy, author).await.unwrap();
        wait_until(120, "the good job", || notifier.delivered().contains(&good)).await;
        service.shutdown(ShutdownMode::Requeue).await;
    });
    let (state, error, delivered): (String, String, bool) = db
        .query_row(
            "SELECT state, error, delivered FROM jobs WHERE id = ?1",
            [bad.0],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(state, "failed");
    assert!(error.contains("could not be read"), "{error}");
    assert!(delivered, "the notice is recorded as given");
}
