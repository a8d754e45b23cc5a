//! A worker process's heartbeat (`[cluster] poll_s`), in-process against PostgreSQL:
//! - a member's cancel of a running job reaches the worker even when the NOTIFY that announces
//!   it does not (the job was claimed but not yet started, or the worker's listener was
//!   reconnecting): the gateway records the request in the database, and the worker reads it at
//!   its next lease renewal;
//! - a worker cut off from the database stops its job once its lease has run out, since another
//!   worker may run the job by then, and leaves the job to the database: it neither ends it nor
//!   runs it again itself.

use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::support::engine_double::{Script, ScriptedEngineDouble};
use super::support::job_fakes::*;
use super::support::test_pg::TestPg;
use floor33::core::cluster::WorkerOptions;
use floor33::core::store::Location;
use floor33::core::{
    JobId, JobService, JobState, JobUpdate, ServiceConfig, ShutdownMode, StoreHandle,
};
use floor33::models::config::Variant;

const MEMBER: u64 = 7;

/// A worker on `url` whose engine holds every job at step 1 until it is cancelled.
async fn held_worker(
    url: &str,
    lease_ttl: Duration,
    notifier: &std::sync::Arc<RecordingNotifier>,
    dir: &std::path::Path,
) -> (JobService, ScriptedEngineDouble) {
    let mut config = ServiceConfig::new(dir.join("unused.db"));
    config.defaults.default_variant = Variant::Tiny;
    let engine = ScriptedEngineDouble::new(
        &[Variant::Tiny],
        Script::RunUntilCancelled { step: 1, total: 2 },
    );
    let store = StoreHandle::open(Location::Postgres(url.into()))
        .await
        .unwrap();
    let worker = JobService::start_worker(
        config,
        store,
        engine.clone(),
        notifier.clone(),
        None,
        WorkerOptions {
            id: "w-heartbeat-test".into(),
            url: url.into(),
            lease_ttl,
            poll: Duration::from_millis(200),
        },
    )
    .await
    .unwrap();
    (worker, engine)
}

/// Stores a job of [`MEMBER`] as the gateway does, on its own connection, and waits until the
/// worker runs it.
async fn submit_and_wait_running(gateway: &StoreHandle, notifier: &RecordingNotifier) -> JobId {
    let id = gateway
        .call(move |s| {
            let id = s.insert_job(
                &tiny_spec("held", 2),
                &origin(1, MEMBER),
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
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stops_a_job_whose_cancel_it_finds_only_in_the_database() {
    let Some(pg) = TestPg::create("cluster_cancel") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let (worker, engine) =
        held_worker(&pg.url, Duration::from_secs(10), &notifier, dir.path()).await;
    let gateway = StoreHandle::open(Location::Postgres(pg.url.clone()))
        .await
        .unwrap();
    let id = submit_and_wait_running(&gateway, &notifier).await;

    // The request only, without the NOTIFY: the lost announcement.
    assert!(gateway
        .call(move |s| s.request_cancel(id, MEMBER))
        .await
        .unwrap());
    wait_until(30, "the recorded cancel to stop the job", || {
        notifier.has(
            id,
            |u| matches!(u, JobUpdate::Cancelled { by_user: Some(by) } if *by == MEMBER),
        )
    })
    .await;
    assert!(engine.cancelled(0), "the engine's run was cancelled");
    let stored = gateway.call(move |s| s.job(id)).await.unwrap().unwrap();
    assert_eq!(stored.state, JobState::Cancelled);
    worker.shutdown(ShutdownMode::Requeue).await;
}

/// A TCP relay to the PostgreSQL server of `url` that the test can cut, as a network partition
/// does: open connections break and new ones are refused. Returns `url` through the relay.
async fn cuttable_relay(url: &str) -> (String, watch::Sender<bool>) {
    let (base, database) = url.rsplit_once('/').expect("a URL with a database");
    let (scheme, authority) = base.split_once("://").expect("a URL with a scheme");
    let (user, server) = match authority.rsplit_once('@') {
        Some((user, server)) => (format!("{user}@"), server.to_string()),
        None => (String::new(), authority.to_string()),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relayed = format!(
        "{scheme}://{user}{}/{database}",
        listener.local_addr().unwrap()
    );
    let (cut, cut_seen) = watch::channel(false);
    tokio::spawn(async move {
        let mut cut_seen = cut_seen;
        loop {
            let mut inbound = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((inbound, _)) => inbound,
                    Err(_) => return,
                },
                // Dropping the listener refuses every later connection.
                _ = cut_seen.wait_for(|cut| *cut) => return,
            };
            let (server, mut cut_seen) = (server.clone(), cut_seen.clone());
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(&server).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut_seen.wait_for(|cut| *cut) => {}
                }
            });
        }
    });
    (relayed, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_the_database_stops_its_job_when_the_lease_runs_out() {
    let Some(pg) = TestPg::create("cluster_lease") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let notifier = shared(RecordingNotifier::default());
    let (relayed, cut) = cuttable_relay(&pg.url).await;
    let ttl = Duration::from_secs(2);
    let (worker, engine) = held_worker(&relayed, ttl, &notifier, dir.path()).await;
    let gateway = StoreHandle::open(Location::Postgres(pg.url.clone()))
        .await
        .unwrap();
    let id = submit_and_wait_running(&gateway, &notifier).await;

    cut.send_replace(true);
    let cut_at = std::time::Instant::now();
    wait_until(30, "the worker to stop the job", || engine.cancelled(0)).await;
    let waited = cut_at.elapsed();
    assert!(
        waited >= ttl - Duration::from_millis(400),
        "stopped after {waited:?}, before its lease of {ttl:?} could have run out"
    );
    // Nothing ended it: no member notice, and the row still holds the worker's lapsed lease,
    // which gives the job back to the queue for the next worker.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !notifier.has(id, |u| matches!(
            u,
            JobUpdate::Cancelled { .. } | JobUpdate::Failed { .. } | JobUpdate::Queued { .. }
        )),
        "{:?}",
        notifier.updates_of(id)
    );
    assert_eq!(
        engine.submitted(),
        1,
        "the worker did not run the job again"
    );
    let requeued = gateway
        .call(|s| s.release_expired_leases(SystemTime::now()))
        .await
        .unwrap();
    assert_eq!(requeued, vec![id]);
    // The worker cannot reach the database to stop cleanly; its tasks end with the runtime.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        worker.shutdown(ShutdownMode::Requeue),
    )
    .await;
}
