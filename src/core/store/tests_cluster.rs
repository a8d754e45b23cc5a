//! The store's part of gateway + workers, on SQLite and (when reachable) PostgreSQL: lease-
//! guarded writes, cancelling only what still waits, the waiting ids, NOTIFY and LISTEN, and
//! the per-host device lock.

use std::time::{Duration, SystemTime};

use super::tests::{origin, spec, test_dbs, TestDb};
use super::*;

#[test]
fn a_worker_that_lost_its_lease_can_neither_end_nor_deliver_the_job() {
    for db in test_dbs() {
        let mut a = db.open();
        let mut b = db.open();
        a.guard_writes_with_lease("worker-a").unwrap();
        b.guard_writes_with_lease("worker-b").unwrap();
        let t0 = SystemTime::now();
        let id = a.insert_job(&spec("p"), &origin(1), 1, t0).unwrap();
        let ttl = Duration::from_secs(5);
        assert_eq!(a.claim_next("worker-a", t0, ttl).unwrap().unwrap().id, id);
        // worker-a stalls past its lease; worker-b gives it back and takes it.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.release_expired_leases(later).unwrap(), vec![id]);
        assert_eq!(
            b.claim_next("worker-b", later, ttl).unwrap().unwrap().id,
            id
        );
        let path = std::path::Path::new("/tmp/x.mp4");
        let err = a.mark_done(id, later, path, 2, false).unwrap_err();
        assert!(
            matches!(err, StoreError::LeaseLost(j) if j == id),
            "{}: {err}",
            db.name()
        );
        assert!(matches!(
            a.mark_delivered(id, None),
            Err(StoreError::LeaseLost(_))
        ));
        let job = b.job(id).unwrap().unwrap();
        assert_eq!(job.state, JobState::Running, "{}", db.name());
        // The holder's writes go through.
        b.mark_done(id, later, path, 2, false).unwrap();
        b.mark_delivered(id, None).unwrap();
        assert!(b.undelivered().unwrap().is_empty(), "{}", db.name());
        assert!(matches!(
            a.mark_ended(JobId(999), JobState::Failed, later, "x"),
            Err(StoreError::NoSuchJob(_))
        ));
    }
}

#[test]
fn worker_ids_outside_the_guard_alphabet_are_refused() {
    for db in test_dbs() {
        let mut s = db.open();
        for bad in ["", "a'b", "a b", &"x".repeat(65)] {
            assert!(s.guard_writes_with_lease(bad).is_err(), "{bad:?}");
        }
        s.guard_writes_with_lease("host-cuda.0-42").unwrap();
    }
}

#[test]
fn cancel_if_queued_takes_only_a_waiting_job_and_queued_ids_follow() {
    for db in test_dbs() {
        let mut s = db.open();
        let now = SystemTime::now();
        let waiting = s.insert_job(&spec("a"), &origin(1), 1, now).unwrap();
        let running = s.insert_job(&spec("b"), &origin(2), 1, now).unwrap();
        let third = s.insert_job(&spec("c"), &origin(3), 2, now).unwrap();
        assert_eq!(
            s.queued_ids().unwrap(),
            [waiting, running, third].into_iter().collect()
        );
        // Claims go in (round, id) order: `waiting` first; cancel it while it still waits.
        assert!(s.cancel_if_queued(waiting, now, "by its author").unwrap());
        assert_eq!(s.job(waiting).unwrap().unwrap().state, JobState::Cancelled);
        let claimed = s
            .claim_next("w", now, Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert_eq!(claimed.id, running, "{}", db.name());
        assert!(!s.cancel_if_queued(running, now, "too late").unwrap());
        assert_eq!(s.job(running).unwrap().unwrap().state, JobState::Running);
        assert_eq!(s.queued_ids().unwrap(), [third].into_iter().collect());
    }
}

#[test]
fn a_cancel_request_is_kept_for_a_running_job_only() {
    for db in test_dbs() {
        let mut s = db.open();
        let now = SystemTime::now();
        let running = s.insert_job(&spec("a"), &origin(1), 1, now).unwrap();
        let waiting = s.insert_job(&spec("b"), &origin(2), 2, now).unwrap();
        s.claim_next("w", now, Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert_eq!(s.cancel_request(running).unwrap(), None, "{}", db.name());
        // A waiting job is cancelled outright (`cancel_if_queued`), never through a request.
        assert!(!s.request_cancel(waiting, 2).unwrap(), "{}", db.name());
        assert_eq!(s.cancel_request(waiting).unwrap(), None);
        // Discord user ids use all 64 bits.
        let by = u64::MAX - 5;
        assert!(s.request_cancel(running, by).unwrap(), "{}", db.name());
        assert_eq!(
            s.cancel_request(running).unwrap(),
            Some(by),
            "{}",
            db.name()
        );
        assert_eq!(s.job(running).unwrap().unwrap().state, JobState::Running);
        assert_eq!(s.cancel_request(JobId(9999)).unwrap(), None);
    }
}

#[test]
fn notify_reaches_a_listener_and_the_device_lock_is_exclusive() {
    for db in test_dbs() {
        let s = db.open();
        match &db {
            TestDb::Sqlite { .. } => {
                s.notify("new").unwrap();
                assert!(s.try_lock_name("host/cuda:0").unwrap());
            }
            TestDb::Postgres(pg) => {
                let mut events = listen::listen(&pg.url).unwrap();
                s.notify("cancel 7 42").unwrap();
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                let got = loop {
                    if let Ok(p) = events.try_recv() {
                        break p;
                    }
                    assert!(std::time::Instant::now() < deadline, "no notification");
                    std::thread::sleep(Duration::from_millis(20));
                };
                assert_eq!(got, "cancel 7 42");
                assert!(s.try_lock_name("host/cuda:0").unwrap());
                let other = db.open();
                assert!(!other.try_lock_name("host/cuda:0").unwrap());
                assert!(other.try_lock_name("host/cuda:1").unwrap());
                drop(s);
                // The lock goes with the connection that held it.
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while !other.try_lock_name("host/cuda:0").unwrap() {
                    assert!(std::time::Instant::now() < deadline, "lock not released");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

#[test]
fn a_dead_workers_finished_job_is_delivered_once_by_another_from_the_kept_video() {
    for db in test_dbs() {
        let name = db.name();
        let files = tempfile::tempdir().unwrap();
        let mut a = db.open();
        let mut b = db.open();
        for (s, w) in [(&mut a, "worker-a"), (&mut b, "worker-b")] {
            s.guard_writes_with_lease(w).unwrap();
            s.keep_videos_until_delivered();
        }
        let ttl = Duration::from_secs(5);
        let t0 = SystemTime::now();
        let id = a.insert_job(&spec("p"), &origin(1), 1, t0).unwrap();
        a.claim_next("worker-a", t0, ttl).unwrap().unwrap();
        // worker-a's result sits on its own disk; `done` keeps a copy in the database.
        let mp4 = files.path().join("1.mp4");
        std::fs::write(&mp4, b"\0\0\0\x18ftypisom fake video").unwrap();
        a.mark_done(id, t0, &mp4, 2, false).unwrap();
        std::fs::remove_file(&mp4).unwrap();
        // While worker-a renews its lease (it is delivering), nobody takes the job over.
        let t1 = t0 + Duration::from_secs(4);
        assert!(a.renew_lease(id, "worker-a", t1, ttl).unwrap(), "{name}");
        let t2 = t0 + Duration::from_secs(8);
        assert!(b
            .claim_undelivered("worker-b", t2, ttl, 4)
            .unwrap()
            .is_empty());
        // worker-a dies before "delivered": once its lease has run out, worker-b takes it.
        let t3 = t1 + ttl + Duration::from_secs(1);
        assert!(b.release_expired_leases(t3).unwrap().is_empty(), "{name}");
        let taken = b.claim_undelivered("worker-b", t3, ttl, 4).unwrap();
        assert_eq!(taken.len(), 1, "{name}");
        assert_eq!((taken[0].id, taken[0].state), (id, JobState::Done));
        assert_eq!(
            b.job_video(id).unwrap().as_deref(),
            Some(&b"\0\0\0\x18ftypisom fake video"[..]),
            "{name}: the video comes from the database, not worker-a's disk"
        );
        // Taken once: neither a second look nor a third worker gets it again.
        assert!(b
            .claim_undelivered("worker-b", t3, ttl, 4)
            .unwrap()
            .is_empty());
        let mut c = db.open();
        c.guard_writes_with_lease("worker-c").unwrap();
        assert!(c
            .claim_undelivered("worker-c", t3, ttl, 4)
            .unwrap()
            .is_empty());
        // worker-a, had it only stalled, can no longer say "delivered"; worker-b can.
        assert!(matches!(
            a.mark_delivered(id, None),
            Err(StoreError::LeaseLost(_))
        ));
        b.mark_delivered(id, None).unwrap();
        assert_eq!(
            b.job_video(id).unwrap(),
            None,
            "{name}: dropped once delivered"
        );
        assert!(b.undelivered().unwrap().is_empty(), "{name}");
        let later = t3 + Duration::from_secs(60);
        assert!(c
            .claim_undelivered("worker-c", later, ttl, 4)
            .unwrap()
            .is_empty());
        assert!(!b.renew_lease(id, "worker-b", t3, ttl).unwrap(), "{name}");
    }
}

#[test]
fn only_leased_finished_jobs_are_taken_over_and_a_missing_video_fails_done() {
    for db in test_dbs() {
        let name = db.name();
        let mut single = db.open();
        let now = SystemTime::now();
        // A single process's undelivered job has no lease: its own restart delivers it.
        let own = single.insert_job(&spec("p"), &origin(1), 1, now).unwrap();
        single
            .mark_ended(own, JobState::Failed, now, "engine said no")
            .unwrap();
        assert_eq!(single.undelivered_without_lease().unwrap().len(), 1);
        let mut w = db.open();
        w.guard_writes_with_lease("w").unwrap();
        w.keep_videos_until_delivered();
        let later = now + Duration::from_secs(3600);
        let ttl = Duration::from_secs(5);
        assert!(
            w.claim_undelivered("w", later, ttl, 4).unwrap().is_empty(),
            "{name}"
        );
        // A worker whose result file is gone cannot mark the job done without its video.
        let id = w.insert_job(&spec("q"), &origin(2), 1, now).unwrap();
        w.claim_next("w", now, ttl).unwrap().unwrap();
        let err = w
            .mark_done(
                id,
                now,
                std::path::Path::new("/nonexistent/9.mp4"),
                2,
                false,
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{name}: {err}");
        assert_eq!(w.job(id).unwrap().unwrap().state, JobState::Running);
        // A failed job of a dead worker is taken over too (its notice), without a video.
        w.mark_ended(id, JobState::Failed, now, "boom").unwrap();
        let taken = w.claim_undelivered("w", later, ttl, 4).unwrap();
        assert_eq!(taken.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
        assert_eq!(w.job_video(id).unwrap(), None);
        assert_eq!(
            single.undelivered_without_lease().unwrap().len(),
            1,
            "{name}"
        );
    }
}

/// A claim of up to four takes the next job and the waiting jobs behind it that can share its
/// sampler batch (the runner's rule), in fair order, each under the claimer's own lease; the
/// ones it passes over keep waiting in their order, and a claim of one takes one.
#[test]
fn a_batch_claim_takes_the_first_job_and_its_compatible_followers_in_fair_order() {
    let mates = crate::core::runner::batch_mates;
    for db in test_dbs() {
        let mut s = db.open();
        let now = SystemTime::now();
        let ttl = Duration::from_secs(30);
        let other_steps = |prompt: &str| {
            let mut other = spec(prompt);
            other.steps = 3;
            other
        };
        let expanding = |prompt: &str| {
            let mut other = spec(prompt);
            other.expand = true;
            other
        };
        // Fair order is (round, id): inserted out of round order on purpose.
        let late = s.insert_job(&spec("late"), &origin(1), 3, now).unwrap();
        let first = s.insert_job(&spec("first"), &origin(1), 1, now).unwrap();
        let odd = s
            .insert_job(&other_steps("odd"), &origin(2), 1, now)
            .unwrap();
        let mate1 = s.insert_job(&spec("mate1"), &origin(3), 1, now).unwrap();
        let asks = s
            .insert_job(&expanding("asks"), &origin(4), 1, now)
            .unwrap();
        let mate2 = s.insert_job(&spec("mate2"), &origin(2), 2, now).unwrap();
        let odd2 = s
            .insert_job(&other_steps("odd2"), &origin(3), 2, now)
            .unwrap();
        let mate3 = s.insert_job(&spec("mate3"), &origin(4), 2, now).unwrap();

        let batch = s.claim_batch("w1", now, ttl, 4, mates).unwrap();
        let ids: Vec<JobId> = batch.iter().map(|j| j.id).collect();
        assert_eq!(ids, vec![first, mate1, mate2, mate3], "{}", db.name());
        for job in &batch {
            assert_eq!(job.state, JobState::Running, "{}", db.name());
            assert_eq!(job.started_at, Some(from_millis(to_millis(now))));
            assert_eq!(
                s.lease(job.id).unwrap(),
                Some(claims::Lease {
                    worker: "w1".into(),
                    expires_at: from_millis(to_millis(now + ttl)),
                }),
                "{}",
                db.name()
            );
        }
        // Each lease is its own: renewed or lost one job at a time.
        let later = now + Duration::from_secs(20);
        assert!(s.renew_lease(first, "w1", later, ttl).unwrap());
        let expired = now + Duration::from_secs(31);
        assert_eq!(
            s.release_expired_leases(expired).unwrap(),
            vec![mate1, mate2, mate3],
            "{}",
            db.name()
        );
        // The jobs passed over kept their place, the released ones got theirs back: odd is
        // next and takes its own mate; then mate1 with its mates (late too, now that the cap
        // leaves room); the job that asks for expansion runs alone.
        let ids = |b: Vec<JobRecord>| b.into_iter().map(|j| j.id).collect::<Vec<_>>();
        let expected = [vec![odd, odd2], vec![mate1, mate2, mate3, late], vec![asks]];
        for want in expected {
            let got = ids(s.claim_batch("w2", expired, ttl, 4, mates).unwrap());
            assert_eq!(got, want, "{}", db.name());
        }
        // A claim of one takes one, compatible followers or not.
        let extra1 = s.insert_job(&spec("extra1"), &origin(5), 4, now).unwrap();
        let extra2 = s.insert_job(&spec("extra2"), &origin(6), 4, now).unwrap();
        let got = ids(s.claim_batch("w2", expired, ttl, 1, mates).unwrap());
        assert_eq!(got, vec![extra1], "{}", db.name());
        let got = ids(s.claim_batch("w2", expired, ttl, 4, mates).unwrap());
        assert_eq!(got, vec![extra2], "{}", db.name());
        assert!(s
            .claim_batch("w2", expired, ttl, 4, mates)
            .unwrap()
            .is_empty());
    }
}

/// Two claimers taking batches of up to four in a loop over 40 waiting jobs (some of them
/// incompatible with the others) never take the same job, and every job is taken.
#[test]
fn two_concurrent_batch_claimers_take_every_job_exactly_once() {
    for db in test_dbs() {
        let mut store = db.open();
        let now = SystemTime::now();
        let all: Vec<JobId> = (0..40u64)
            .map(|i| {
                let mut job = spec("p");
                job.steps = 2 + (i % 3) as usize;
                store.insert_job(&job, &origin(i % 7), i / 7, now).unwrap()
            })
            .collect();
        drop(store);
        let location = db.location();
        let claimed: Vec<(Vec<JobId>, usize)> = std::thread::scope(|s| {
            let handles: Vec<_> = ["w1", "w2"]
                .into_iter()
                .map(|worker| {
                    let location = location.clone();
                    s.spawn(move || {
                        let mut store = Store::open(location).unwrap();
                        let (mut mine, mut largest) = (Vec::new(), 0);
                        loop {
                            let batch = store
                                .claim_batch(
                                    worker,
                                    SystemTime::now(),
                                    Duration::from_secs(60),
                                    4,
                                    crate::core::runner::batch_mates,
                                )
                                .unwrap();
                            if batch.is_empty() {
                                break;
                            }
                            assert!(batch.len() <= 4);
                            largest = largest.max(batch.len());
                            for job in batch {
                                assert_eq!(store.lease(job.id).unwrap().unwrap().worker, worker);
                                mine.push(job.id);
                            }
                        }
                        (mine, largest)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut every: Vec<JobId> = claimed.iter().flat_map(|(m, _)| m.clone()).collect();
        every.sort();
        assert_eq!(every, all, "{}: each job claimed exactly once", db.name());
        assert!(
            claimed.iter().any(|&(_, largest)| largest > 1),
            "{}: batches were claimed",
            db.name()
        );
    }
}

/// What a server restart does to every session of the database at `url`: the administrator
/// ends them. Returns how many it ended.
fn end_sessions(url: &str) -> u64 {
    let mut admin = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
}

#[test]
fn a_connection_the_server_closed_is_opened_again_for_the_next_call() {
    for db in test_dbs() {
        let TestDb::Postgres(pg) = &db else { continue };
        let mut s = db.open();
        let now = SystemTime::now();
        let id = s.insert_job(&spec("a"), &origin(1), 1, now).unwrap();
        assert_eq!(end_sessions(&pg.url), 1, "the store's one session");
        // The call that meets the closed connection may fail; the one after it works, on a
        // new session, and the data is all there.
        let first = s.job(id);
        let job = match first {
            Ok(job) => job,
            Err(e) => {
                assert!(matches!(e, StoreError::Postgres(_)), "{e:?}");
                s.job(id).unwrap()
            }
        };
        assert_eq!(job.unwrap().spec.prompt, "a");
        assert!(s
            .claim_next("w", now, Duration::from_secs(5))
            .unwrap()
            .is_some());
    }
}

#[test]
fn a_held_device_lock_is_confirmed_once_and_taken_again_after_a_lost_connection() {
    for db in test_dbs() {
        let TestDb::Postgres(pg) = &db else { continue };
        let name = "host/cuda:3";
        let s = db.open();
        assert!(s.try_lock_name(name).unwrap());
        assert!(s.try_lock_name(name).unwrap(), "confirmed while held");
        // Taken once, not twice: one unlock frees it for another session.
        let key = cluster::lock_key(name);
        let unlocked = s
            .with(|d| {
                d.query_one("SELECT pg_advisory_unlock(?1)", args![key])?
                    .bool(0)
            })
            .unwrap();
        assert!(unlocked);
        let other = db.open();
        assert!(other.try_lock_name(name).unwrap(), "free after one unlock");
        assert!(!s.try_lock_name(name).unwrap(), "held by the other session");
        drop(other);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !s.try_lock_name(name).unwrap() {
            assert!(std::time::Instant::now() < deadline, "lock not released");
            std::thread::sleep(Duration::from_millis(50));
        }
        // A database restart ends the session and its lock; the next calls take it again.
        end_sessions(&pg.url);
        let retaken = match s.try_lock_name(name) {
            Ok(held) => held,
            Err(_) => s.try_lock_name(name).unwrap(),
        };
        assert!(retaken, "taken again on the new connection");
        assert!(
            !db.open().try_lock_name(name).unwrap(),
            "and exclusive again"
        );
    }
}
