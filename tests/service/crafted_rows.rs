//! The crafted database-row corpus (`tests/fixtures/crafted/db_rows/`): job rows as an outsider
//! or a bad migration could leave them (JSON that does not parse, a variant no build knows,
//! NULL where a value must be, numbers far outside the engine's limits, a negative round...).
//! Each file is one `INSERT` whose header names what the stored error must say
//! (`-- expect: …`). All of them go into one fresh SQLite store beside sound jobs; the service
//! must start, fail every crafted row with its reason, tell each member it can still reach,
//! and run the sound jobs. `control_sound_row.sql` uses the same template with nothing wrong
//! and must be delivered, so the others fail for their flaw.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::support::job_fakes::*;
use floor33::core::{JobId, JobService, JobUpdate, ServiceConfig, ShutdownMode, Store};
use floor33::models::config::Variant;

struct Case {
    name: String,
    sql: String,
    expect: String,
}

fn corpus() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crafted/db_rows");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let sql = std::fs::read_to_string(&path).unwrap();
            let expect = sql
                .lines()
                .find_map(|l| l.strip_prefix("-- expect: "))
                .unwrap_or_else(|| panic!("{} has no `-- expect:` line", path.display()))
                .trim()
                .to_string();
            Case {
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                sql,
                expect,
            }
        })
        .collect()
}

fn config(dir: &Path) -> ServiceConfig {
    let mut config = ServiceConfig::new(dir.join("floor33.db"));
    config.defaults.default_variant = Variant::Tiny;
    config.preview_every = None;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_rows_are_failed_with_their_reason_and_the_service_starts() {
    let cases = corpus();
    assert!(cases.len() >= 15, "the corpus holds {} files", cases.len());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("floor33.db");

    // A fresh store (its schema), a sound job, the corpus, and another sound job.
    let mut store = Store::open(path.clone()).unwrap();
    let first = store
        .insert_job(
            &tiny_spec("before the corpus", 1),
            &origin(1, 10),
            1,
            SystemTime::now(),
        )
        .unwrap();
    drop(store);
    let db = rusqlite::Connection::open(&path).unwrap();
    let mut rows = Vec::new();
    for case in &cases {
        db.execute_batch(&case.sql)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        rows.push((case, JobId(db.last_insert_rowid())));
    }
    let mut store = Store::open(path.clone()).unwrap();
    let last = store
        .insert_job(
            &tiny_spec("after the corpus", 1),
            &origin(1, 11),
            1,
            SystemTime::now(),
        )
        .unwrap();
    drop(store);

    let notifier = shared(RecordingNotifier::default());
    let service = JobService::start(config(dir.path()), tiny_engine(), notifier.clone(), None)
        .await
        .expect("the service starts whatever the rows hold");

    let control = rows
        .iter()
        .find(|(c, _)| c.name == "control_sound_row")
        .expect("the corpus has its control")
        .1;
    wait_until(120, "the sound jobs delivered", || {
        let delivered = notifier.delivered();
        [first, last, control]
            .iter()
            .all(|id| delivered.contains(id))
    })
    .await;

    let mut failures = Vec::new();
    for (case, id) in rows.iter().filter(|(c, _)| c.name != "control_sound_row") {
        let (state, error): (String, Option<String>) = db
            .query_row("SELECT state, error FROM jobs WHERE id = ?1", [id.0], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        let error = error.unwrap_or_default();
        println!("{}: {state}: {error}", case.name); // the outcomes, with --nocapture
                                                     // Failed at start: none of them ever reached the engine.
        if notifier
            .updates_of(*id)
            .iter()
            .any(|u| matches!(u, JobUpdate::Running { .. }))
        {
            failures.push(format!("{}: it ran", case.name));
        }
        if state != "failed" || !error.contains(&case.expect) {
            failures.push(format!(
                "{}: expected failed with {:?}, got {state}: {error}",
                case.name, case.expect
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Every member whose origin still reads is told (a lost-job notice or a Failed update);
    // nobody is told twice.
    let told = |id: JobId| {
        let lost = notifier
            .lost
            .lock()
            .unwrap()
            .iter()
            .filter(|(j, _, _)| *j == id)
            .count();
        let failed = notifier
            .updates_of(id)
            .iter()
            .filter(|u| matches!(u, JobUpdate::Failed { .. }))
            .count();
        lost + failed
    };
    let reachable: Vec<_> = rows
        .iter()
        .filter(|(c, _)| c.name != "control_sound_row" && !c.name.starts_with("origin_"))
        .map(|(c, id)| (c.name.clone(), *id))
        .collect();
    wait_until(30, "every reachable member told", || {
        reachable.iter().all(|(_, id)| told(*id) >= 1)
    })
    .await;
    for (name, id) in &reachable {
        assert_eq!(told(*id), 1, "{name}");
    }
    for (case, id) in rows.iter().filter(|(c, _)| c.name.starts_with("origin_")) {
        assert_eq!(told(*id), 0, "{}: no origin, nobody to tell", case.name);
    }
    service.shutdown(ShutdownMode::Finish).await;
}
