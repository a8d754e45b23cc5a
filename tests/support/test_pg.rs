//! A PostgreSQL database for one test, on the server at `FLOOR33_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, trust auth, as CI machines run it). Created
//! with a unique name and dropped (`WITH (FORCE)`) when the guard goes, a failed test included.
//! With no server the test is skipped with a line on stderr, unless `FLOOR33_TEST_PG` is set.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};

const DEFAULT_TEST_PG: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct TestPg {
    admin_url: String,
    name: String,
    /// The URL of the fresh database.
    pub url: String,
}

impl TestPg {
    /// `None` (with a line on stderr) when no server answers. Safe to call from async tests:
    /// the blocking client runs on a thread of its own.
    pub fn create(test: &str) -> Option<TestPg> {
        let test = test.to_string();
        std::thread::spawn(move || Self::create_blocking(&test))
            .join()
            .unwrap()
    }

    fn create_blocking(test: &str) -> Option<TestPg> {
        let explicit = std::env::var("FLOOR33_TEST_PG").ok();
        let admin_url = explicit.clone().unwrap_or_else(|| DEFAULT_TEST_PG.into());
        let mut config: postgres::Config = admin_url.parse().expect("FLOOR33_TEST_PG is a URL");
        config.connect_timeout(std::time::Duration::from_secs(3));
        let mut admin = match config.connect(postgres::NoTls) {
            Ok(admin) => admin,
            Err(e) if explicit.is_some() => panic!("FLOOR33_TEST_PG does not answer: {e}"),
            Err(e) => {
                // Straight to stderr: the test harness captures `eprintln!`.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIP: {test} on PostgreSQL: no server at {admin_url} ({e})"
                );
                return None;
            }
        };
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "floor33_itest_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("create a test database");
        let base = admin_url.rsplit_once('/').expect("a URL with a database").0;
        let url = format!("{base}/{name}");
        Some(TestPg {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = self.admin_url.clone();
        // On a thread of its own: the guard may go on an async runtime thread.
        let dropped = std::thread::spawn(move || {
            postgres::Client::connect(&admin_url, postgres::NoTls)?
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            let _ = writeln!(
                std::io::stderr(),
                "could not drop test database {}",
                self.name
            );
        }
    }
}
