//! `floor33 serve --role gateway` and `--role worker` processes on one fresh PostgreSQL
//! database, against the loopback fake Discord, with the tiny model on the CPU (one step, 2
//! frames of 16×16, no previews, a 4 s lease renewed every 0.25 s):
//! - a burst of 100 `/t2v` from 10 members on one gateway and two workers: every one
//!   acknowledged once, run once and delivered once, claimed in fair order (rounds per
//!   member) and spread over both workers; `/metrics` of the gateway and the workers agree;
//! - `/cancel` from Discord reaches the worker running the job: it ends cancelled, no video;
//! - SIGKILL of a worker between "done" and "delivered" (its upload hangs): the other worker
//!   delivers the video it kept in the database; one video;
//! - SIGKILL of the worker running a long job: its lease runs out and another worker runs the
//!   job again; one video.
//!
//! And, separately, one worker with `limits.max_batch = 4`: 8 compatible jobs waiting run as
//! two batches of four, round 1 first, each delivered once; two long jobs run as a batch of
//! two, where `/cancel` stops one and the other is delivered.
//!
//! Skipped (with a line on stderr) when no PostgreSQL server answers.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::json;

use super::support::discord_bot::{serve_engine_toml, spawn_role, videos, wait_video, Scratch};
use super::support::fake_discord::payloads::*;
use super::support::fake_discord::FakeDiscord;
use super::support::prometheus::{free_addr, scrape, value, Sample};
use super::support::test_pg::TestPg;

const MEMBERS: u64 = 10;
const PER_MEMBER: u64 = 10;
/// Steps of a job that must still run when the test cancels it or kills its worker (tens of
/// milliseconds each at this shape: seconds in all, while the test reacts within one poll).
const LONG: u64 = 150;

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

/// One process's config: a tiny run of the tiny model (one step, 2 frames of 16×16, no
/// previews; a long job is many steps) and short lease timings, so the burst costs little CI
/// time. The lease stays well above the poll: a loaded CI machine delays renewals.
fn write_config(dir: &Path, name: &str, pg: &TestPg, listen: Option<SocketAddr>) -> PathBuf {
    write_config_batched(dir, name, pg, listen, 1)
}

/// [`write_config`] with `limits.max_batch` set.
fn write_config_batched(
    dir: &Path,
    name: &str,
    pg: &TestPg,
    listen: Option<SocketAddr>,
    max_batch: usize,
) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let ops = listen.map_or(String::new(), |a| format!("[ops]\nlisten = \"{a}\"\n"));
    std::fs::write(
        &path,
        format!(
            r#"
{engine}
[database]
url = "{}"
results_dir = "{}"

[discord]
video_shape_for_tests = {{ height = 16, width = 16, frames = 2 }}

[limits]
preview_every_s = 0
max_steps = 1000
max_batch = {max_batch}

[cluster]
lease_ttl_s = 4.0
poll_s = 0.25

[defaults]
default_variant = "tiny"
default_steps = 1
max_steps = 1000
member_waiting_limit = {PER_MEMBER}
{ops}"#,
            pg.url,
            dir.join(format!("results-{name}")).display(),
            engine = serve_engine_toml(&["tiny"]),
        ),
    )
    .unwrap();
    path
}

/// Starts the gateway (serving `/metrics` at `ops` when given), logging to `gateway.log` in
/// `dir`, and waits until Discord sees it ready.
async fn start_gateway(
    fake: &FakeDiscord,
    dir: &Path,
    pg: &TestPg,
    ops: Option<SocketAddr>,
) -> Procs {
    let config = write_config(dir, "gateway", pg, ops);
    let gateway = spawn_role(fake, &config, "gateway", &dir.join("gateway.log"));
    let procs = Procs(vec![gateway]);
    fake.wait_ready(Duration::from_secs(90)).await;
    procs
}

/// An admin's `/cancel` of the running job `id`, answered "stops at its next step".
async fn cancel_running_from_discord(fake: &FakeDiscord, id: i64) {
    let mut spec = CommandSpec::new("cancel", vec![option("job", json!(id))]);
    spec.invoker = Invoker::admin();
    let (cancel_token, _) = fake.send_command(&spec);
    fake.wait_for(Duration::from_secs(30), "the cancel answer", |r| {
        r.path.contains(&cancel_token) && r.text().contains("stops at its next step")
    })
    .await;
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

/// Scrapes `addr` until `cond` holds on what it serves (a gateway learns from the database
/// every poll), and returns that scrape.
async fn wait_metrics(
    addr: SocketAddr,
    what: &str,
    cond: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let samples = scrape(addr).await;
        if cond(&samples) {
            return samples;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what} on {addr}: {samples:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn tiny(samples: &[Sample], name: &str, state: &str) -> f64 {
    value(samples, name, &[("variant", "tiny"), ("state", state)])
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

impl Procs {
    /// SIGTERMs every process and asserts each one stopped cleanly.
    fn stop_all(&mut self) {
        for c in &self.0 {
            kill(c, "-TERM");
        }
        for c in &mut self.0 {
            let status = c.wait().unwrap();
            assert!(status.success(), "{status:?}");
        }
        self.0.clear();
    }

    /// SIGKILLs the worker that holds `token`'s job and returns its lease owner id.
    fn kill_holder(&mut self, pg: &TestPg, token: &str) -> String {
        let holder = rows(pg)
            .into_iter()
            .find(|j| j.token == token)
            .and_then(|j| j.lease_owner)
            .expect("a lease holder");
        let victim = self
            .0
            .iter()
            .position(|c| holder.ends_with(&format!("-{}", c.id())))
            .expect("the holder is one of our workers");
        assert_ne!(victim, 0, "the gateway runs no job");
        let mut dead = self.0.remove(victim);
        kill(&dead, "-KILL");
        let _ = dead.wait();
        holder
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_and_two_workers_share_fair_order_survive_killed_workers_and_cancel() {
    let Some(pg) = TestPg::create("roles") else {
        return;
    };
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("roles");
    let log = |n: &str| dir.0.join(format!("{n}.log"));
    let ops = [free_addr(), free_addr(), free_addr()];
    let mut procs = start_gateway(&fake, &dir.0, &pg, Some(ops[0])).await;

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
            sent.push(fake.send_command(&spec).0);
        }
    }
    let total = (MEMBERS * PER_MEMBER) as usize;
    wait_rows(&pg, "the burst stored", Duration::from_secs(60), |r| {
        r.len() == total
    })
    .await;
    let requests = fake.requests();
    for token in &sent {
        let acks = requests
            .iter()
            .filter(|r| r.path.ends_with(&format!("/{token}/callback")))
            .count();
        assert_eq!(acks, 1, "{token} acknowledged once");
    }
    let gateway = wait_metrics(ops[0], "the burst queued", |m| {
        value(m, "floor33_queue_depth", &[]) == total as f64
    })
    .await;
    assert_eq!(tiny(&gateway, "floor33_jobs_total", "queued"), total as f64);

    for (i, name) in ["worker-a", "worker-b"].into_iter().enumerate() {
        let cfg = write_config(&dir.0, name, &pg, Some(ops[i + 1]));
        procs.0.push(spawn_role(&fake, &cfg, "worker", &log(name)));
    }

    // One wait for all (not one per job): every job done and its delivery confirmed.
    wait_rows(
        &pg,
        "every job done and delivered",
        Duration::from_secs(300),
        |r| r.iter().all(|j| j.state == "done" && j.delivered),
    )
    .await;
    let done = rows(&pg);
    let requests = fake.requests();
    for token in &sent {
        let posted = requests
            .iter()
            .filter(|r| {
                r.path.contains(token.as_str())
                    && r.status == 200
                    && r.files.iter().any(|f| f.filename.ends_with(".mp4"))
            })
            .count();
        assert_eq!(posted, 1, "{token}: one video");
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

    // What each process serves: the gateway sees the whole queue (from the database), each
    // worker its own runs; together they count every job started once and done once. Queue
    // depth is read from the database once per poll, so each process gets a moment to see 0.
    let empty = |m: &[Sample]| value(m, "floor33_queue_depth", &[]) == 0.0;
    let gateway = wait_metrics(ops[0], "the gateway's view of the started jobs", |m| {
        empty(m)
            && value(
                m,
                "floor33_queue_wait_seconds_count",
                &[("variant", "tiny")],
            ) == total as f64
    })
    .await;
    assert_eq!(
        tiny(&gateway, "floor33_jobs_total", "done"),
        0.0,
        "the gateway runs none"
    );
    let a = wait_metrics(ops[1], "worker 1's queue depth of 0", empty).await;
    let b = wait_metrics(ops[2], "worker 2's queue depth of 0", empty).await;
    for (state, want) in [("running", total), ("done", total), ("failed", 0)] {
        let sum = tiny(&a, "floor33_jobs_total", state) + tiny(&b, "floor33_jobs_total", state);
        assert_eq!(sum, want as f64, "jobs entering {state} across the workers");
    }
    assert_eq!(
        tiny(&a, "floor33_job_duration_seconds_count", "done")
            + tiny(&b, "floor33_job_duration_seconds_count", "done"),
        total as f64
    );
    for w in [&a, &b] {
        assert!(tiny(w, "floor33_jobs_total", "done") > 0.0, "{w:#?}");
        // On a CPU there is no GPU memory to report: no series rather than a 0.
        assert!(!w.iter().any(|s| s.name == "floor33_gpu_memory_used_bytes"));
    }

    let send = |prompt: &str, steps: u64| {
        let mut spec = CommandSpec::new(
            "t2v",
            vec![
                option("prompt", json!(prompt)),
                option("steps", json!(steps)),
            ],
        );
        spec.invoker = Invoker::numbered(MEMBERS + 1);
        fake.send_command(&spec).0
    };
    let running =
        |token: String| move |r: &[Row]| r.iter().any(|j| j.token == token && j.state == "running");
    let delivered = |token: String, state: &'static str| {
        move |r: &[Row]| {
            r.iter()
                .any(|j| j.token == token && j.state == state && j.delivered)
        }
    };

    // `/cancel` from Discord reaches the worker that runs the job.
    let token = send("cancelled while running", LONG);
    let wait = Duration::from_secs(60);
    wait_rows(
        &pg,
        "the job to cancel running",
        wait,
        running(token.clone()),
    )
    .await;
    let id = rows(&pg).into_iter().find(|j| j.token == token).unwrap().id;
    cancel_running_from_discord(&fake, id).await;
    let cancelled = delivered(token.clone(), "cancelled");
    wait_rows(&pg, "the job cancelled by its worker", wait, cancelled).await;
    assert!(
        videos(&fake, Some(&token)).is_empty(),
        "a cancelled job sends no video"
    );

    // SIGKILL between "done" and "delivered": its upload hangs, the worker dies; the other
    // worker delivers the video the dead one kept in the database.
    fake.stall_videos(true);
    let token = send("delivered by the survivor", 1);
    fake.wait_for(wait, "the first upload, hanging", |r| {
        r.path.contains(&token) && r.status == 0
    })
    .await;
    let holder = procs.kill_holder(&pg, &token);
    fake.stall_videos(false);
    wait_video(&fake, &token, wait).await;
    let done = delivered(token.clone(), "done");
    wait_rows(&pg, "the job delivered by the survivor", wait, done).await;
    let after = rows(&pg).into_iter().find(|j| j.token == token).unwrap();
    assert_ne!(after.lease_owner.as_deref(), Some(holder.as_str()));
    assert_eq!(videos(&fake, Some(&token)).len(), 1, "one video");

    // SIGKILL of the worker running a long job: another one runs it again, one video.
    let cfg = write_config(&dir.0, "worker-c", &pg, None);
    procs
        .0
        .push(spawn_role(&fake, &cfg, "worker", &log("worker-c")));
    let token = send("survives a dead worker", LONG);
    wait_rows(&pg, "the long job running", wait, running(token.clone())).await;
    let holder = procs.kill_holder(&pg, &token);
    wait_video(&fake, &token, Duration::from_secs(300)).await;
    // Marked delivered once the upload is confirmed, a moment after the fake recorded it.
    let done = delivered(token.clone(), "done");
    wait_rows(&pg, "the job done and delivered", wait, done).await;
    let after = rows(&pg).into_iter().find(|j| j.token == token).unwrap();
    assert_ne!(
        after.lease_owner.as_deref(),
        Some(holder.as_str()),
        "another worker ran it"
    );
    assert_eq!(
        videos(&fake, Some(&token)).len(),
        1,
        "one video after the kill"
    );
    let gateway = wait_metrics(ops[0], "an empty queue", |m| {
        value(m, "floor33_queue_depth", &[]) == 0.0
    })
    .await;
    assert_eq!(
        tiny(&gateway, "floor33_jobs_total", "queued"),
        total as f64 + 3.0
    );

    procs.stop_all();
}

/// A worker with `max_batch = 4` claims the next job with its compatible waiting jobs, each
/// under its own lease, and its runner starts them as one sampler batch: 8 jobs (the test
/// shape, one step) from 4 members run as two batches of four, the 4 first jobs (round 1)
/// before any second one; then two long jobs stored after them (incompatible: more steps) run
/// as a batch of two, where a `/cancel` from Discord stops one and the other still finishes.
/// Every job delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_max_batch_claims_and_runs_compatible_jobs_as_one_batch() {
    const JOBS: usize = 8;
    let Some(pg) = TestPg::create("roles_batch") else {
        return;
    };
    let fake = FakeDiscord::start().await;
    let dir = Scratch::new("roles-batch");
    let log = |n: &str| dir.0.join(format!("{n}.log"));
    let mut procs = start_gateway(&fake, &dir.0, &pg, None).await;
    let send = |member: u64, prompt: String, steps: u64| {
        let mut spec = CommandSpec::new(
            "t2v",
            vec![
                option("prompt", json!(prompt)),
                option("steps", json!(steps)),
            ],
        );
        spec.invoker = Invoker::numbered(member);
        fake.send_command(&spec).0
    };
    // All stored before the worker starts: its claims see the whole queue.
    let short: Vec<String> = (0..JOBS as u64)
        .map(|k| send(k % 4, format!("batched scene {k}"), 1))
        .collect();
    wait_rows(&pg, "the short jobs stored", Duration::from_secs(60), |r| {
        r.len() == JOBS
    })
    .await;
    let long: Vec<String> = (0..2)
        .map(|k| send(k, format!("long batched scene {k}"), LONG))
        .collect();
    wait_rows(&pg, "the long jobs stored", Duration::from_secs(60), |r| {
        r.len() == JOBS + 2
    })
    .await;
    let cfg = write_config_batched(&dir.0, "worker", &pg, None, 4);
    procs
        .0
        .push(spawn_role(&fake, &cfg, "worker", &log("worker")));

    let wait = Duration::from_secs(120);
    let cancelled = long[0].clone();
    wait_rows(&pg, "the long jobs running", wait, |r| {
        r.iter()
            .filter(|j| long.contains(&j.token) && j.state == "running")
            .count()
            == 2
    })
    .await;
    let id = rows(&pg)
        .into_iter()
        .find(|j| j.token == cancelled)
        .unwrap()
        .id;
    cancel_running_from_discord(&fake, id).await;
    wait_rows(&pg, "every job ended and delivered", wait, |r| {
        r.iter().all(|j| {
            let want = if j.token == cancelled {
                "cancelled"
            } else {
                "done"
            };
            j.state == want && j.delivered
        })
    })
    .await;
    for token in short.iter().chain(&long[1..]) {
        assert_eq!(videos(&fake, Some(token)).len(), 1, "{token}: one video");
    }
    assert!(
        videos(&fake, Some(&cancelled)).is_empty(),
        "a cancelled job sends no video"
    );

    let text = std::fs::read_to_string(log("worker")).unwrap();
    let batches: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("jobs started as one batch"))
        .collect();
    let of = |n: &str| batches.iter().filter(|l| l.ends_with(n)).count();
    assert_eq!(
        (batches.len(), of("jobs=4"), of("jobs=2")),
        (3, 2, 1),
        "two batches of four, one of two: {text}"
    );
    assert!(
        !text.contains("job claimed"),
        "no job claimed alone: {text}"
    );
    // Fair order across the batches: the first one is round 1 (each member's first job).
    let done = rows(&pg);
    let started = |first: bool| {
        done.iter()
            .filter(move |j| (j.round == 1) == first)
            .map(|j| j.started_at.unwrap())
    };
    assert_eq!(started(true).count(), 4, "{done:#?}");
    assert!(
        started(true).max() < started(false).min(),
        "round 1 ran first: {done:#?}"
    );
    let owners: HashSet<String> = done.iter().filter_map(|j| j.lease_owner.clone()).collect();
    assert_eq!(owners.len(), 1, "{owners:?}");

    procs.stop_all();
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
    let short_lease = dir.0.join("short-lease.toml");
    std::fs::write(
        &short_lease,
        "[database]\nurl = \"postgres://floor33:hunter2@127.0.0.1:9/floor33\"\n\
         [cluster]\nlease_ttl_s = 1.5\npoll_s = 1.0\n",
    )
    .unwrap();
    let cases = [
        (
            &short_lease,
            "worker",
            "`cluster.lease_ttl_s` (1.5) must be more than twice",
        ),
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
