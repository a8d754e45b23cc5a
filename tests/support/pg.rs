//! A fresh PostgreSQL database for one test, dropped after it. The server is the one at
//! `FLOOR33_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/postgres`, trust auth, as on
//! CI machines); when none answers (and none was asked for explicitly) the test says so on
//! stderr and is skipped.

use std::sync::atomic::{AtomicU32, Ordering};

const DEFAULT_TEST_PG: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct FreshPg {
    admin_url: String,
    name: String,
    /// The URL of the fresh database.
    pub url: String,
}

impl FreshPg {
    /// `None` (with a line on stderr) when no server answers. Safe to call from async tests
    /// (the blocking client runs on a thread of its own).
    pub fn create(test: &str) -> Option<FreshPg> {
        let test = test.to_string();
        std::thread::spawn(move || Self::create_blocking(&test))
            .join()
            .unwrap()
    }

    fn create_blocking(test: &str) -> Option<FreshPg> {
        let explicit = std::env::var("FLOOR33_TEST_PG").ok();
        let admin_url = explicit.clone().unwrap_or_else(|| DEFAULT_TEST_PG.into());
        let mut admin = match postgres::Client::connect(
            &format!("{admin_url}?connect_timeout=3"),
            postgres::NoTls,
        ) {
            Ok(c) => c,
            Err(e) if explicit.is_some() => {
                panic!("FLOOR33_TEST_PG is set but the server does not answer: {e}")
            }
            Err(e) => {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {test}: no PostgreSQL at {admin_url} ({e}); set FLOOR33_TEST_PG"
                );
                return None;
            }
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "floor33_it_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("create a test database");
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&admin_url);
        Some(FreshPg {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        })
    }
}

impl Drop for FreshPg {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = self.admin_url.clone();
        // The sync client must not run on an async runtime thread.
        let _ = std::thread::spawn(move || {
            if let Ok(mut admin) = postgres::Client::connect(&admin_url, postgres::NoTls) {
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
            }
        })
        .join();
    }
}
