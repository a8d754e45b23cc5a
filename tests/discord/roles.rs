//! `floor33 serve --role gateway` and two `--role worker` processes on one fresh PostgreSQL
//! database, against the loopback fake Discord, with the tiny models on the CPU:
//! - a burst of 20 `/t2v` from 5 members: every one acknowledged, run once and delivered once,
//!   claimed in fair order (rounds per member) and spread over both workers;
//! - SIGKILL of the worker running a long job: its lease runs out and the other worker runs
//!   the job again; one video;
//! - `/cancel` from Discord reaches the worker running the job: it ends cancelled, no video.
//!
//! Skipped (with a line on stderr) when no PostgreSQL server answers.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::json;

use super::support::discord_bot::{serve_engine_toml, spawn_role, videos, wait_video, Scratch};
use super::support::fake_discord::payloads::*;
use super::support::fake_discord::FakeDiscord;
use super::support::test_pg::TestPg;

const MEMBERS: u64 = 5;
const PER_MEMBER: u64 = 4;

/// One row of `jobs` as the test reads it.
#[derive(Debug, Clone)]
struct Row {
    id: i64,
    state: String,
    round: i64,
    started_at: Option<i64>,
    lease_owner: Option<String>,
    delivered: bool,
    user_id: i64,
    token: String,
}

fn rows(pg: &TestPg) -> Vec<Row> {
    let url = pg.url.clone();
    // The sync client must not run on an async runtime thread.
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client
            .query(
                "SELECT id, state, round, started_at, lease_owner, delivered, origin, user_id
                 FROM jobs ORDER BY id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| {
                let origin: serde_json::Value = serde_json::from_str(r.get::<_, &str>(6)).unwrap();
                Row {
                    id: r.get(0),
                    state: r.get(1),
                    round: r.get(2),
                    started_at: r.get(3),
                    lease_owner: r.get(4),
                    delivered: r.get(5),
                    user_id: r.get(7),
                    token: origin["interaction_token"].as_str().unwrap().to_string(),
                }
            })
            .collect()
    })
    .join()
    .unwrap()
}

fn write_config(dir: &Path, name: &str, pg: &TestPg) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
{engine}
[database]
url = "{}"
results_dir = "{}"

[defaults]
default_variant = "tiny"
default_steps = 2
max_steps = 200
member_waiting_limit = {PER_MEMBER}
"#,
            pg.url,
            dir.join(format!("results-{name}")).display(),
            engine = serve_engine_toml(&["tiny"]),
        ),
    )
    .unwrap();
    path
}

fn kill(child: &Child, signal: &str) {
    assert!(Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

async fn wait_rows(pg: &TestPg, what: &str, timeout: Duration, cond: impl Fn(&[Row]) -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let now = rows(pg);
        if cond(&now) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_and_two_workers_share_fair_order_survive_a_killed_worker_and_cancel() {
    let Some(pg) = TestPg::create("roles") else {
        return;
    };
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("roles");
    let log = |n: &str| dir.0.join(format!("{n}.log"));
    let gateway_cfg = write_config(&dir.0, "gateway", &pg);
    let mut procs = Procs(vec![spawn_role(
        &fake,
        &gateway_cfg,
        "gateway",
        &log("gateway"),
    )]);
    fake.wait_ready(Duration::from_secs(90)).await;

    // The burst is stored before any worker runs, so the claim order shows the fair order
    // alone (not which job happened to arrive while a worker was idle).
    let mut sent = Vec::new();
    for m in 0..MEMBERS {
        for k in 0..PER_MEMBER {
            let mut spec = CommandSpec::new(
                "t2v",
                vec![option("prompt", json!(format!("member {m} scene {k}")))],
            );
            spec.invoker = Invoker::numbered(m);
            sent.push((m, fake.send_command(&spec).0));
        }
    }
    let total = (MEMBERS * PER_MEMBER) as usize;
    wait_rows(&pg, "the burst stored", Duration::from_secs(60), |r| {
        r.len() == total
    })
    .await;
    for (_, token) in &sent {
        let acks = fake
            .requests()
            .iter()
            .filter(|r| r.path.ends_with(&format!("/{token}/callback")))
            .count();
        assert_eq!(acks, 1, "{token} acknowledged once");
    }

    let worker_cfg = [
        write_config(&dir.0, "worker-a", &pg),
        write_config(&dir.0, "worker-b", &pg),
    ];
    procs.0.push(spawn_role(
        &fake,
        &worker_cfg[0],
        "worker",
        &log("worker-a"),
    ));
    procs.0.push(spawn_role(
        &fake,
        &worker_cfg[1],
        "worker",
        &log("worker-b"),
    ));

    for (_, token) in &sent {
        wait_video(&fake, token, Duration::from_secs(300)).await;
    }
    wait_rows(
        &pg,
        "every job done and delivered",
        Duration::from_secs(30),
        |r| r.iter().all(|j| j.state == "done" && j.delivered),
    )
    .await;
    let done = rows(&pg);
    for (_, token) in &sent {
        assert_eq!(videos(&fake, Some(token)).len(), 1, "{token}: one video");
    }
    // Fair order: claims follow (round, id); two workers claiming within a few milliseconds
    // of each other may record their starts in either order, nothing more.
    let mut started: Vec<&Row> = done.iter().collect();
    started.sort_by_key(|r| (r.started_at.unwrap(), r.round, r.id));
    for (i, a) in started.iter().enumerate() {
        for b in &started[i + 1..] {
            if a.round > b.round {
                let gap = b.started_at.unwrap() - a.started_at.unwrap();
                assert!(
                    gap < 1000,
                    "round {} started {gap} ms before round {}: {started:#?}",
                    a.round,
                    b.round
                );
            }
        }
    }
    // Round 1 holds each member's first job (later rounds depend on how the gateway
    // interleaved one member's concurrent submits); all of them ran before any second job.
    let firsts: HashSet<i64> = done
        .iter()
        .filter(|r| r.round == 1)
        .map(|r| r.user_id)
        .collect();
    let first_count = done.iter().filter(|r| r.round == 1).count();
    assert_eq!(
        (first_count, firsts.len()),
        (MEMBERS as usize, MEMBERS as usize),
        "one first job per member: {done:#?}"
    );
    let workers: HashSet<String> = done.iter().filter_map(|r| r.lease_owner.clone()).collect();
    assert_eq!(workers.len(), 2, "both workers ran jobs: {workers:?}");

    // SIGKILL of the worker running a long job: the other one runs it again, one video.
    let long = |prompt: &str| {
        let mut spec = CommandSpec::new(
            "t2v",
            vec![option("prompt", json!(prompt)), option("steps", json!(25))],
        );
        spec.invoker = Invoker::numbered(9);
        fake.send_command(&spec).0
    };
    let token = long("survives a dead worker");
    wait_rows(&pg, "the long job running", Duration::from_secs(60), |r| {
        r.iter().any(|j| j.token == token && j.state == "running")
    })
    .await;
    let holder = rows(&pg)
        .into_iter()
        .find(|j| j.token == token)
        .and_then(|j| j.lease_owner)
        .expect("a lease holder");
    let victim = procs
        .0
        .iter()
        .position(|c| holder.ends_with(&format!("-{}", c.id())))
        .expect("the holder is one of our workers");
    assert_ne!(victim, 0, "the gateway runs no job");
    let mut dead = procs.0.remove(victim);
    kill(&dead, "-KILL");
    let _ = dead.wait();
    wait_video(&fake, &token, Duration::from_secs(300)).await;
    // Marked delivered once the upload is confirmed, a moment after the fake recorded it.
    wait_rows(
        &pg,
        "the job done and delivered",
        Duration::from_secs(30),
        |r| {
            r.iter()
                .any(|j| j.token == token && j.state == "done" && j.delivered)
        },
    )
    .await;
    let after = rows(&pg).into_iter().find(|j| j.token == token).unwrap();
    assert_ne!(
        after.lease_owner.as_deref(),
        Some(holder.as_str()),
        "the other worker ran it"
    );
    assert_eq!(
        videos(&fake, Some(&token)).len(),
        1,
        "one video after the kill"
    );

    // `/cancel` from Discord reaches the worker that runs the job.
    let token = long("cancelled while running");
    wait_rows(
        &pg,
        "the job to cancel running",
        Duration::from_secs(60),
        |r| r.iter().any(|j| j.token == token && j.state == "running"),
    )
    .await;
    let id = rows(&pg).into_iter().find(|j| j.token == token).unwrap().id;
    let mut spec = CommandSpec::new("cancel", vec![option("job", json!(id))]);
    spec.invoker = Invoker::admin();
    let (cancel_token, _) = fake.send_command(&spec);
    fake.wait_for(Duration::from_secs(30), "the cancel answer", |r| {
        r.path.contains(&cancel_token) && r.text().contains("stops at its next step")
    })
    .await;
    wait_rows(
        &pg,
        "the job cancelled by its worker",
        Duration::from_secs(60),
        |r| {
            r.iter()
                .any(|j| j.token == token && j.state == "cancelled" && j.delivered)
        },
    )
    .await;
    assert!(
        videos(&fake, Some(&token)).is_empty(),
        "a cancelled job sends no video"
    );

    for c in &procs.0 {
        kill(c, "-TERM");
    }
    for c in &mut procs.0 {
        let status = c.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
    procs.0.clear();
}

/// A role its configuration cannot serve stops before Discord is contacted, with a line that
/// names the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_its_database_is_refused_before_discord_is_contacted() {
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("roles-bad");
    let sqlite = dir.0.join("sqlite.toml");
    std::fs::write(
        &sqlite,
        format!(
            "[database]\npath = \"{}\"\n",
            dir.0.join("floor33.db").display()
        ),
    )
    .unwrap();
    let unreachable = dir.0.join("unreachable.toml");
    std::fs::write(
        &unreachable,
        "[database]\nurl = \"postgres://floor33:hunter2@127.0.0.1:9/floor33?connect_timeout=2\"\n",
    )
    .unwrap();
    let cases = [
        (&sqlite, "gateway", "PostgreSQL"),
        (&sqlite, "worker", "PostgreSQL"),
        (&sqlite, "gpu", "unknown role \"gpu\""),
        (&unreachable, "gateway", "cannot connect to the database"),
        (&unreachable, "worker", "cannot connect to the database"),
    ];
    for (config, role, expected) in cases {
        let log = dir.0.join(format!("{role}.log"));
        let status = spawn_role(&fake, config, role, &log).wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!status.success(), "{role}: {text}");
        assert!(
            text.contains(expected),
            "{role}: expected {expected:?} in {text}"
        );
        assert!(!text.contains("hunter2"), "the password stays out: {text}");
    }
    assert!(
        fake.requests().is_empty() && fake.identifies().is_empty(),
        "Discord was contacted: {}",
        fake.dump()
    );
}
