//! A member's cancel of a job that a worker runs reaches that worker even when the NOTIFY that
//! announces it does not (the job was claimed but not yet started, or the worker's listener
//! was reconnecting): the gateway records the request in the database, and the worker reads
//! it at its next heartbeat (`[cluster] poll_s`).

use std::time::{Duration, SystemTime};

use super::support::engine_double::{Script, ScriptedEngineDouble};
use super::support::job_fakes::*;
use super::support::test_pg::TestPg;
use floor33::core::cluster::WorkerOptions;
use floor33::core::store::Location;
use floor33::core::{JobService, JobState, JobUpdate, ServiceConfig, ShutdownMode, StoreHandle};
use floor33::models::config::Variant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stops_a_job_whose_cancel_it_finds_only_in_the_database() {
    let Some(pg) = TestPg::create("cluster_cancel") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServiceConfig::new(dir.path().join("unused.db"));
    config.defaults.default_variant = Variant::Tiny;
    let notifier = shared(RecordingNotifier::default());
    // Holds the job at step 1 until the engine's cancel token fires.
    let engine = ScriptedEngineDouble::new(
        &[Variant::Tiny],
        Script::RunUntilCancelled { step: 1, total: 2 },
    );
    let open = || StoreHandle::open(Location::Postgres(pg.url.clone()));
    let worker = JobService::start_worker(
        config,
        open().await.unwrap(),
        engine.clone(),
        notifier.clone(),
        None,
        WorkerOptions {
            id: "w-cancel-test".into(),
            url: pg.url.clone(),
            lease_ttl: Duration::from_secs(10),
            poll: Duration::from_millis(200),
        },
    )
    .await
    .unwrap();

    // The gateway's side, on its own connection: it stores the job, and later records the
    // cancel without any NOTIFY (the lost announcement).
    let gateway = open().await.unwrap();
    let member = 7;
    let id = gateway
        .call(move |s| {
            let id = s.insert_job(
                &tiny_spec("held", 2),
                &origin(1, member),
                1,
                SystemTime::now(),
            )?;
            s.notify("new")?;
            Ok(id)
        })
        .await
        .unwrap();
    wait_until(30, "the worker to run the job", || {
        notifier.reached_step(id, 1)
    })
    .await;
    assert!(gateway
        .call(move |s| s.request_cancel(id, member))
        .await
        .unwrap());
    wait_until(30, "the recorded cancel to stop the job", || {
        notifier.has(
            id,
            |u| matches!(u, JobUpdate::Cancelled { by_user: Some(by) } if *by == member),
        )
    })
    .await;
    assert!(engine.cancelled(0), "the engine's run was cancelled");
    let stored = gateway.call(move |s| s.job(id)).await.unwrap().unwrap();
    assert_eq!(stored.state, JobState::Cancelled);
    worker.shutdown(ShutdownMode::Requeue).await;
}
