//! Views: what the adapters may show of the service's state (`/queue`, `/stats`, a settings
//! change), built from the live queue and the store without exposing either.

use std::time::{Duration, SystemTime};

use super::jobs::{JobId, JobKind, JobRecord};
use super::service::JobService;
use super::settings::SettingKey;
use super::store::{JobCounts, StoreError};
use crate::models::config::Variant;

/// One line of `/queue`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueEntry {
    pub id: JobId,
    /// 0 for the running job, else 1 = next.
    pub position: usize,
    pub user_id: u64,
    pub guild_id: Option<u64>,
    pub kind: JobKind,
    pub variant: Variant,
    /// `None` for a job of another guild: prompts stay within their server.
    pub prompt: Option<String>,
    pub steps: usize,
    pub queued_at: SystemTime,
    /// `(step, total)` of the running job.
    pub progress: Option<(usize, usize)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueView {
    /// The running job (the first in fair order of a running batch).
    pub running: Option<QueueEntry>,
    /// The other jobs of a running sampler batch, in fair order (empty without batching).
    pub also_running: Vec<QueueEntry>,
    /// This guild's waiting jobs, in running order, with their bot-wide positions.
    pub waiting: Vec<QueueEntry>,
    /// Waiting jobs across the bot.
    pub total_waiting: usize,
    pub cap: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// This guild's jobs (all guilds' for `None`), by state.
    pub counts: JobCounts,
    pub total_waiting: usize,
    pub running: Option<JobId>,
    pub cap: usize,
    pub uptime: Duration,
}

/// A settings change, as `/config set` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingChange {
    pub key: SettingKey,
    pub old: String,
    pub new: String,
}

impl JobService {
    /// The queue as `guild` may see it.
    pub fn queue_view(&self, guild: Option<u64>) -> QueueView {
        let state = self.inner.state.lock().unwrap();
        let entry = |job: &JobRecord, position: usize, progress| QueueEntry {
            id: job.id,
            position,
            user_id: job.origin.user_id,
            guild_id: job.origin.guild_id,
            kind: job.spec.kind,
            variant: job.spec.variant,
            prompt: (job.origin.guild_id == guild).then(|| job.spec.prompt.clone()),
            steps: job.spec.steps,
            queued_at: job.created_at,
            progress,
        };
        let mut running = state.running.iter().filter_map(|run| {
            state
                .active
                .get(&run.id)
                .map(|job| entry(job, 0, run.progress))
        });
        let (running, also_running) = (running.next(), running.collect());
        let waiting = state
            .scheduler
            .order()
            .into_iter()
            .enumerate()
            .filter_map(|(i, (id, _))| state.active.get(&id).map(|job| (i + 1, job)))
            .filter(|(_, job)| job.origin.guild_id == guild)
            .map(|(position, job)| entry(job, position, None))
            .collect();
        QueueView {
            running,
            also_running,
            waiting,
            total_waiting: state.scheduler.waiting_len(),
            cap: state.scheduler.cap(),
        }
    }

    pub async fn stats(&self, guild: Option<u64>) -> Result<Stats, StoreError> {
        let counts = self
            .inner
            .store
            .call(move |s| s.counts(guild, SystemTime::now()))
            .await?;
        let state = self.inner.state.lock().unwrap();
        Ok(Stats {
            counts,
            total_waiting: state.scheduler.waiting_len(),
            running: state.scheduler.running(),
            cap: state.scheduler.cap(),
            uptime: self.inner.started.elapsed(),
        })
    }
}
