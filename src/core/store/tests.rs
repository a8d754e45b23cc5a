//! The store's tests, run against every backend: SQLite always, PostgreSQL whenever a server
//! answers at `FLOOR33_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/postgres`, trust
//! auth, as on CI machines). Each test gets a fresh, uniquely named PostgreSQL database that is
//! dropped when the test ends, failed or not. With no server the PostgreSQL half is skipped with
//! a line on stderr — unless `FLOOR33_TEST_PG` is set, when an unreachable server fails the test.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Once, OnceLock};

use super::*;
use crate::core::jobs::{JobKind, VideoShape};
use crate::models::config::Variant;

const DEFAULT_TEST_PG: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub(crate) fn spec(prompt: &str) -> JobSpec {
    JobSpec {
        kind: JobKind::TextToVideo,
        variant: Variant::Tiny,
        prompt: prompt.into(),
        expanded_prompt: None,
        negative: Some("blurry".into()),
        seed: 42,
        steps: 2,
        cfg: 7.5,
        eta: 1.0,
        fps: 8,
        expand: false,
        shape: Some(VideoShape {
            height: 32,
            width: 48,
            frames: 4,
        }),
        image_fit: Default::default(),
        image: None,
    }
}

pub(crate) fn origin(user: u64) -> Origin {
    Origin {
        guild_id: Some(7),
        channel_id: 8,
        user_id: user,
        interaction_id: 9,
        interaction_token: "tok".into(),
        application_id: 10,
        message_id: None,
        attachment_size_limit: None,
    }
}

/// A PostgreSQL database made for one test and dropped (`WITH (FORCE)`, so open connections do
/// not keep it) when this guard goes, a panic included.
pub(crate) struct PgTestDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl PgTestDatabase {
    /// `None` when no server is reachable (and none was asked for explicitly).
    pub fn create() -> Option<PgTestDatabase> {
        let admin_url = test_server()?;
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "floor33_test_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = postgres::connect(&admin_url).expect("test PostgreSQL server");
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("create a test database");
        let url = with_database(&admin_url, &name);
        Some(PgTestDatabase {
            admin_url,
            name,
            url,
        })
    }

    pub fn exists(admin_url: &str, name: &str) -> bool {
        let mut admin = postgres::connect(admin_url).expect("test PostgreSQL server");
        admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .expect("list databases")
            .is_some()
    }
}

impl Drop for PgTestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // On a thread of its own: the guard may go on an async runtime thread, where the
        // blocking client would panic (a panic while unwinding aborts the test binary).
        let dropped = std::thread::spawn(move || {
            postgres::connect(&admin_url).and_then(|mut admin| {
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .map_err(StoreError::from)
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            let _ = writeln!(
                std::io::stderr(),
                "could not drop the test database {}",
                self.name
            );
        }
    }
}

/// The admin URL of the test server, checked once per test binary.
fn test_server() -> Option<String> {
    static SERVER: OnceLock<Option<String>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let explicit = std::env::var("FLOOR33_TEST_PG").ok();
            let url = explicit.clone().unwrap_or_else(|| DEFAULT_TEST_PG.into());
            let probe = format!(
                "{url}{}connect_timeout=3",
                if url.contains('?') { '&' } else { '?' }
            );
            match postgres::connect(&probe) {
                Ok(_) => Some(url),
                Err(e) if explicit.is_some() => {
                    panic!("FLOOR33_TEST_PG is set but the server does not answer: {e}")
                }
                Err(e) => {
                    static SKIP: Once = Once::new();
                    SKIP.call_once(|| {
                        // Straight to stderr: the test harness would capture `eprintln!`.
                        let _ = writeln!(
                            std::io::stderr(),
                            "SKIP: PostgreSQL store tests skipped: {e} \
                             (set FLOOR33_TEST_PG to a server to run them)"
                        );
                    });
                    None
                }
            }
        })
        .clone()
}

/// `url` with its database name replaced.
fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, query) = match rest.find(['/', '?']) {
        Some(i) => {
            let tail = &rest[i..];
            (&rest[..i], tail.find('?').map_or("", |q| &tail[q..]))
        }
        None => (rest, ""),
    };
    format!("{scheme}://{authority}/{name}{query}")
}

/// One database a test runs on.
pub(crate) enum TestDb {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Postgres(PgTestDatabase),
}

impl TestDb {
    pub fn location(&self) -> Location {
        match self {
            TestDb::Sqlite { path, .. } => Location::Sqlite(path.clone()),
            TestDb::Postgres(db) => Location::Postgres(db.url.clone()),
        }
    }

    pub fn open(&self) -> Store {
        Store::open(self.location())
            .unwrap_or_else(|e| panic!("open the {} store: {e}", self.name()))
    }

    pub fn name(&self) -> &'static str {
        match self {
            TestDb::Sqlite { .. } => "SQLite",
            TestDb::Postgres(_) => "PostgreSQL",
        }
    }
}

/// A fresh SQLite database, and a fresh PostgreSQL one when a server is reachable.
pub(crate) fn test_dbs() -> Vec<TestDb> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("floor33.db");
    let mut dbs = vec![TestDb::Sqlite { _dir: dir, path }];
    dbs.extend(PgTestDatabase::create().map(TestDb::Postgres));
    dbs
}

/// Runs raw SQL (`?N` placeholders) on the store, as a test that damages rows needs.
fn raw(store: &Store, sql: &str, args: &[sql::Value]) -> u64 {
    store.with(|db| db.execute(sql, args)).unwrap()
}

#[test]
fn job_round_trips_with_image_and_state_changes() {
    for db in test_dbs() {
        let mut store = db.open();
        let mut s = spec("a cat");
        s.kind = JobKind::ImageToVideo;
        let image: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        s.image = Some(image.clone());
        let now = from_millis(1_700_000_000_000);
        let mut o = origin(1);
        o.guild_id = Some(i64::MAX as u64);
        o.user_id = (1 << 62) + 12345;
        let id = store.insert_job(&s, &o, 3, now).unwrap();
        let job = store.job(id).unwrap().unwrap();
        assert_eq!(job.state, JobState::Queued, "{}", db.name());
        assert_eq!(job.round, 3);
        assert_eq!(job.created_at, now);
        assert_eq!(
            job.spec,
            JobSpec {
                image: None,
                ..s.clone()
            }
        );
        assert_eq!(job.origin, o, "{}", db.name());
        assert_eq!(store.job_image(id).unwrap(), Some(image), "{}", db.name());

        store.set_expanded_prompt(id, Some("a fluffy cat")).unwrap();
        store.set_message_id(id, 99).unwrap();
        store.mark_running(id, now).unwrap();
        let later = now + Duration::from_secs(5);
        store
            .mark_done(id, later, Path::new("/r/1.mp4"), 2, true)
            .unwrap();
        let job = store.job(id).unwrap().unwrap();
        assert_eq!(job.spec.expanded_prompt.as_deref(), Some("a fluffy cat"));
        assert_eq!(job.origin.message_id, Some(99));
        assert_eq!(job.state, JobState::Done);
        assert_eq!(job.run_time(), Some(Duration::from_secs(5)));
        assert_eq!(job.result_path.as_deref(), Some(Path::new("/r/1.mp4")));
        assert!(job.prompt_truncated && !job.delivered, "{}", db.name());
        assert_eq!(store.undelivered().unwrap().len(), 1);
        store.mark_delivered(id, Some("upload refused")).unwrap();
        assert!(store.undelivered().unwrap().is_empty());
        assert_eq!(
            store.job(id).unwrap().unwrap().error.as_deref(),
            Some("delivery failed: upload refused")
        );
        assert!(store.job(JobId(999)).unwrap().is_none());
        assert!(matches!(
            store.mark_queued(JobId(999)),
            Err(StoreError::NoSuchJob(JobId(999)))
        ));
        assert!(store.job_image(JobId(999)).unwrap().is_none());
    }
}

#[test]
fn origin_upload_limit_is_kept_and_old_rows_still_read() {
    for db in test_dbs() {
        let mut store = db.open();
        let now = SystemTime::now();
        let mut o = origin(1);
        o.attachment_size_limit = Some(25 * 1024 * 1024);
        let id = store.insert_job(&spec("a"), &o, 0, now).unwrap();
        store.set_message_id(id, 5).unwrap();
        let job = store.job(id).unwrap().unwrap();
        assert_eq!(job.origin.attachment_size_limit, Some(25 * 1024 * 1024));
        assert_eq!(job.origin.message_id, Some(5));

        // A row written before the field existed.
        let old = store.insert_job(&spec("b"), &origin(2), 0, now).unwrap();
        let legacy = r#"{"guild_id":7,"channel_id":8,"user_id":2,"interaction_id":9,
            "interaction_token":"tok","application_id":10,"message_id":null}"#;
        raw(
            &store,
            "UPDATE jobs SET origin = ?2 WHERE id = ?1",
            sql::args![old.0, legacy],
        );
        let job = store.job(old).unwrap().unwrap();
        assert_eq!(job.origin, origin(2), "{}", db.name());
        assert_eq!(job.origin.attachment_size_limit, None);
    }
}

#[test]
fn recover_requeues_running_jobs_and_finds_undelivered_ones() {
    for db in test_dbs() {
        let now = SystemTime::now();
        {
            let mut store = db.open();
            for (i, prompt) in ["a", "b", "c", "d"].iter().enumerate() {
                store
                    .insert_job(&spec(prompt), &origin(1), i as u64 + 1, now)
                    .unwrap();
            }
            store.mark_running(JobId(1), now).unwrap();
            store
                .mark_done(
                    JobId(1),
                    now + Duration::from_secs(4),
                    Path::new("x.mp4"),
                    2,
                    false,
                )
                .unwrap();
            store.mark_running(JobId(2), now).unwrap();
            store
                .mark_ended(
                    JobId(4),
                    JobState::Cancelled,
                    now,
                    "cancelled by its author",
                )
                .unwrap();
            store.mark_delivered(JobId(4), None).unwrap();
        }
        let mut store = db.open();
        let r = store.recover().unwrap();
        assert_eq!(r.interrupted, vec![JobId(2)], "{}", db.name());
        assert_eq!(
            r.queued.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![JobId(2), JobId(3)]
        );
        assert_eq!(
            r.undelivered.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![JobId(1)]
        );
        assert!(r.quarantined.is_empty());
        assert_eq!(store.last_started_round().unwrap(), 1);
        assert_eq!(
            store
                .jobs_in_state(JobState::Queued)
                .unwrap()
                .iter()
                .map(|j| j.id)
                .collect::<Vec<_>>(),
            vec![JobId(2), JobId(3)]
        );
        let counts = store.counts(Some(7), now).unwrap();
        assert_eq!(
            (counts.queued, counts.done, counts.cancelled),
            (2, 1, 1),
            "{}",
            db.name()
        );
        assert_eq!(counts.done_last_day, 1);
        assert_eq!(counts.mean_run_time, Some(Duration::from_secs(4)));
        assert_eq!(store.counts(None, now).unwrap(), counts);
        let next_week = now + Duration::from_secs(7 * 86_400);
        assert_eq!(store.counts(None, next_week).unwrap().done_last_day, 0);
        assert_eq!(store.counts(Some(8), now).unwrap(), JobCounts::default());
    }
}

/// Writes the schema version the way each backend keeps it.
fn force_version(store: &Store, version: i64) {
    match store.dialect() {
        Dialect::Sqlite => raw(store, &format!("PRAGMA user_version = {version}"), &[]),
        Dialect::Postgres => raw(
            store,
            "UPDATE floor33_schema_version SET version = ?1",
            sql::args![version],
        ),
    };
}

#[test]
fn migrations_upgrade_an_old_database_and_refuse_a_newer_one() {
    for db in test_dbs() {
        {
            let mut old = Store::open_at(db.location(), 1).unwrap();
            assert_eq!(old.schema_version().unwrap(), 1, "{}", db.name());
            old.insert_job(&spec("kept"), &origin(1), 1, SystemTime::now())
                .unwrap();
        }
        let store = db.open();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(store.job(JobId(1)).unwrap().unwrap().spec.prompt, "kept");
        assert!(store.setting_overrides(1).unwrap().is_empty());
        if let Backend::Sqlite(conn) = &store.backend {
            let journal: String = conn
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            assert_eq!(journal, "wal");
        }
        force_version(&store, SCHEMA_VERSION + 1);
        drop(store);
        let refused = Store::open(db.location())
            .err()
            .expect("a newer schema is refused");
        assert!(
            matches!(refused, StoreError::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1),
            "{}: {refused}",
            db.name()
        );
        assert!(refused.to_string().contains("upgrade floor33"));
    }
}

#[test]
fn an_impossible_schema_version_is_refused_with_a_message() {
    for db in test_dbs() {
        let store = db.open();
        force_version(&store, -1);
        drop(store);
        let refused = Store::open(db.location())
            .err()
            .expect("version -1 is refused");
        assert!(
            matches!(refused, StoreError::UnknownSchema { found: -1, .. }),
            "{}: {refused}",
            db.name()
        );
        assert!(
            refused.to_string().contains("schema version -1"),
            "{refused}"
        );
    }
}

#[test]
fn settings_changes_are_stored_with_an_audit_line() {
    for db in test_dbs() {
        let mut store = db.open();
        let entry = |action: &str, old: &str, new: &str| AuditEntry {
            guild_id: 5,
            user_id: 6,
            at: from_millis(1000),
            action: action.into(),
            key: "max_steps".into(),
            old: old.into(),
            new: new.into(),
        };
        store
            .change_setting(&entry("set", "100", "60"), Some("60"))
            .unwrap();
        store
            .change_setting(&entry("set", "60", "70"), Some("70"))
            .unwrap();
        assert_eq!(
            store.setting_overrides(5).unwrap(),
            vec![("max_steps".into(), "70".into())],
            "{}",
            db.name()
        );
        store
            .change_setting(&entry("reset", "70", "100"), None)
            .unwrap();
        assert!(store.setting_overrides(5).unwrap().is_empty());
        let log = store.audit_log(5, 10).unwrap();
        assert_eq!(log.len(), 3);
        assert_eq!(log[0], entry("reset", "70", "100"));
        assert_eq!(store.audit_log(5, 1).unwrap().len(), 1);
    }
}

#[test]
fn unreadable_rows_are_quarantined_and_recovery_goes_on() {
    for db in test_dbs() {
        let now = SystemTime::now();
        let mut store = db.open();
        let ids: Vec<JobId> = (0..5)
            .map(|i| store.insert_job(&spec("p"), &origin(i), i, now).unwrap())
            .collect();
        // 2: the spec no longer parses; 3: neither does the origin; 4: a state no build knows;
        // 5 was running and is fine.
        raw(
            &store,
            "UPDATE jobs SET spec = '{not json' WHERE id = ?1",
            sql::args![ids[1].0],
        );
        raw(
            &store,
            "UPDATE jobs SET spec = 'x', origin = '[]' WHERE id = ?1",
            sql::args![ids[2].0],
        );
        raw(
            &store,
            "UPDATE jobs SET state = 'paused' WHERE id = ?1",
            sql::args![ids[3].0],
        );
        store.mark_running(ids[4], now).unwrap();
        drop(store);

        let mut store = db.open();
        let r = store.recover().unwrap();
        assert_eq!(
            r.queued.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![ids[0], ids[4]],
            "{}",
            db.name()
        );
        assert_eq!(r.interrupted, vec![ids[4]]);
        let quarantined: Vec<JobId> = r.quarantined.iter().map(|q| q.id).collect();
        assert_eq!(quarantined, vec![ids[1], ids[2], ids[3]], "{}", db.name());
        assert!(
            r.quarantined[0].reason.contains("spec"),
            "{}",
            r.quarantined[0].reason
        );
        assert_eq!(r.quarantined[0].origin, Some(origin(1)));
        assert_eq!(r.quarantined[1].origin, None);
        assert!(r.quarantined[2].reason.contains("paused"));

        // The rows are failed with the reason; lists skip what still does not read.
        let counts = store.counts(None, now).unwrap();
        assert_eq!((counts.queued, counts.failed), (2, 3), "{}", db.name());
        let failed = store.jobs_in_state(JobState::Failed).unwrap();
        assert_eq!(
            failed.len(),
            1,
            "only the bad state is repaired by failing it"
        );
        assert_eq!(failed[0].id, ids[3]);
        assert!(failed[0].error.as_deref().unwrap().contains("paused"));
        assert!(store.job(ids[1]).is_err());

        // A member who can be told stays undelivered until told; the next start reports only
        // what is still owed.
        store.mark_delivered(ids[3], None).unwrap();
        let again = store.recover().unwrap();
        assert_eq!(
            again.quarantined.iter().map(|q| q.id).collect::<Vec<_>>(),
            vec![ids[1]],
            "{}",
            db.name()
        );
        store.mark_delivered(ids[1], None).unwrap();
        let last = store.recover().unwrap();
        assert!(last.quarantined.is_empty() && last.undelivered.is_empty());
        assert_eq!(last.queued.len(), 2);
    }
}

#[cfg(unix)]
#[test]
fn sqlite_files_are_created_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("floor33.db");
    let mut store = Store::open(&path).unwrap();
    store
        .insert_job(&spec("a"), &origin(1), 1, SystemTime::now())
        .unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        let mode = std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "{} has mode {:o}",
            file.display(),
            mode
        );
    }
}

#[test]
fn an_unwritable_sqlite_path_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"").unwrap();
    let err = Store::open(blocker.join("floor33.db"))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("file"), "{err}");
}

#[test]
fn an_unreachable_postgres_server_is_a_clear_error_without_the_password() {
    // A port nobody listens on (reserved, refused at once on loopback).
    let url = "postgres://floor33:hunter2@127.0.0.1:9/floor33?connect_timeout=2";
    let err = Store::open(Location::Postgres(url.into()))
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Connect { .. }), "{text}");
    assert!(
        text.contains("127.0.0.1:9") && !text.contains("hunter2"),
        "{text}"
    );
    assert!(!format!("{:?}", Location::Postgres(url.into())).contains("hunter2"));
}

#[test]
fn stores_opening_one_fresh_postgres_database_together_migrate_it_once() {
    let Some(pg) = PgTestDatabase::create() else {
        return;
    };
    let opened: Vec<i64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    Store::open(Location::Postgres(pg.url.clone()))
                        .unwrap()
                        .schema_version()
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(opened, vec![SCHEMA_VERSION; 4]);
}

#[test]
fn a_test_database_is_dropped_even_when_its_test_panics() {
    let Some(server) = test_server() else {
        return;
    };
    let name = std::panic::catch_unwind(|| {
        let pg = PgTestDatabase::create().unwrap();
        let _store = Store::open(Location::Postgres(pg.url.clone())).unwrap();
        assert!(PgTestDatabase::exists(&server, &pg.name));
        std::panic::panic_any(pg.name.clone());
    })
    .err()
    .and_then(|p| p.downcast::<String>().ok())
    .expect("the test body panicked with its database name");
    assert!(
        !PgTestDatabase::exists(&server, &name),
        "{name} is left behind"
    );
}

#[test]
fn workers_claim_in_fair_order_and_expired_leases_come_back() {
    for db in test_dbs() {
        let mut store = db.open();
        let now = from_millis(1_700_000_000_000);
        // Rounds as the scheduler gives them: member 1 queued three, member 2 two, later.
        let a1 = store.insert_job(&spec("a1"), &origin(1), 1, now).unwrap();
        let a2 = store.insert_job(&spec("a2"), &origin(1), 2, now).unwrap();
        let a3 = store.insert_job(&spec("a3"), &origin(1), 3, now).unwrap();
        let b1 = store.insert_job(&spec("b1"), &origin(2), 1, now).unwrap();
        let b2 = store.insert_job(&spec("b2"), &origin(2), 2, now).unwrap();
        let ttl = Duration::from_secs(30);
        let first = store.claim_next("w1", now, ttl).unwrap().unwrap();
        assert_eq!(first.id, a1, "{}", db.name());
        assert_eq!(first.state, JobState::Running);
        assert_eq!(
            store.lease(a1).unwrap(),
            Some(claims::Lease {
                worker: "w1".into(),
                expires_at: now + ttl
            })
        );
        let second = store.claim_next("w2", now, ttl).unwrap().unwrap();
        assert_eq!(
            second.id,
            b1,
            "{}: member 2 goes before member 1's second",
            db.name()
        );

        // w1 renews; w2 does not and loses its job once the lease runs out.
        let later = now + Duration::from_secs(20);
        assert!(store.renew_lease(a1, "w1", later, ttl).unwrap());
        assert!(!store.renew_lease(a1, "w2", later, ttl).unwrap());
        let expired = now + Duration::from_secs(31);
        assert_eq!(store.release_expired_leases(expired).unwrap(), vec![b1]);
        assert!(!store.renew_lease(b1, "w2", expired, ttl).unwrap());
        assert_eq!(store.lease(b1).unwrap(), None);
        let job = store.job(b1).unwrap().unwrap();
        assert_eq!((job.state, job.round), (JobState::Queued, 1));

        // It keeps its place: next in line, then rounds 2, 2, 3.
        let order: Vec<JobId> =
            std::iter::from_fn(|| store.claim_next("w3", expired, ttl).unwrap().map(|j| j.id))
                .collect();
        assert_eq!(order, vec![b1, a2, b2, a3], "{}", db.name());
        assert!(store.claim_next("w3", expired, ttl).unwrap().is_none());
        // A lease renewed in time is not released.
        assert!(store.release_expired_leases(expired).unwrap().is_empty());
    }
}

#[test]
fn a_claim_skips_an_unreadable_row() {
    for db in test_dbs() {
        let mut store = db.open();
        let now = SystemTime::now();
        let bad = store.insert_job(&spec("a"), &origin(1), 1, now).unwrap();
        let good = store.insert_job(&spec("b"), &origin(2), 1, now).unwrap();
        raw(
            &store,
            "UPDATE jobs SET spec = '{' WHERE id = ?1",
            sql::args![bad.0],
        );
        let job = store.claim_next("w", now, Duration::from_secs(5)).unwrap();
        assert_eq!(job.map(|j| j.id), Some(good), "{}", db.name());
        assert_eq!(store.counts(None, now).unwrap().failed, 1);
    }
}

#[test]
fn two_concurrent_claimers_never_take_the_same_job() {
    for db in test_dbs() {
        let mut store = db.open();
        let now = SystemTime::now();
        let all: Vec<JobId> = (0..60)
            .map(|i| {
                store
                    .insert_job(&spec("p"), &origin(i % 7), i / 7, now)
                    .unwrap()
            })
            .collect();
        drop(store);
        let location = db.location();
        let claimed: Vec<Vec<JobId>> = std::thread::scope(|s| {
            let handles: Vec<_> = ["w1", "w2"]
                .into_iter()
                .map(|worker| {
                    let location = location.clone();
                    s.spawn(move || {
                        let mut store = Store::open(location).unwrap();
                        let mut mine = Vec::new();
                        while let Some(job) = store
                            .claim_next(worker, SystemTime::now(), Duration::from_secs(60))
                            .unwrap()
                        {
                            assert_eq!(store.lease(job.id).unwrap().unwrap().worker, worker);
                            mine.push(job.id);
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut every: Vec<JobId> = claimed.concat();
        every.sort();
        assert_eq!(every, all, "{}: each job claimed exactly once", db.name());
    }
}

#[test]
fn a_postgres_claim_skips_a_row_another_transaction_holds() {
    let Some(pg) = PgTestDatabase::create() else {
        return;
    };
    let mut store = Store::open(Location::Postgres(pg.url.clone())).unwrap();
    let now = SystemTime::now();
    let first = store.insert_job(&spec("a"), &origin(1), 1, now).unwrap();
    let second = store.insert_job(&spec("b"), &origin(2), 1, now).unwrap();
    let mut other = postgres::connect(&pg.url).unwrap();
    let mut tx = other.transaction().unwrap();
    tx.query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE", &[&first.0])
        .unwrap();
    // Not blocked by the held row: takes the next one at once.
    let job = store
        .claim_next("w", now, Duration::from_secs(5))
        .unwrap()
        .unwrap();
    assert_eq!(job.id, second);
    tx.rollback().unwrap();
    let job = store
        .claim_next("w", now, Duration::from_secs(5))
        .unwrap()
        .unwrap();
    assert_eq!(job.id, first);
}

#[tokio::test]
async fn a_postgres_store_closes_cleanly_when_dropped_inside_the_runtime() {
    let Some(pg) = tokio::task::spawn_blocking(PgTestDatabase::create)
        .await
        .unwrap()
    else {
        return;
    };
    let handle = StoreHandle::open(Location::Postgres(pg.url.clone()))
        .await
        .unwrap();
    let id = handle
        .call(|s| s.insert_job(&spec("a"), &origin(1), 1, SystemTime::now()))
        .await
        .unwrap();
    assert_eq!(id, JobId(1));
    // The last handle goes on an async thread: closing the client must not panic.
    drop(handle);
    drop(pg);
}
