//! Which job runs next, and whether a new one may join: fair round-robin across members, a
//! per-member waiting limit and cooldown, and a global cap. Pure data, no I/O and no clock: the
//! caller passes `now`, so every rule is unit-testable and the property test can drive it.
//!
//! Fairness comes from rounds. A member's n-th waiting job gets the round after their previous
//! one (and never earlier than the round after the job that last started); jobs run in
//! `(round, id)` order. So five jobs from one member take rounds r+1..r+5, and another member's
//! first job lands in round r+1, ahead of the first member's second. The round is persisted with
//! the job, which makes the order survive a restart unchanged.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use super::jobs::JobId;
use super::refusal::Refusal;

/// A member is a Discord user; fairness is across the whole bot (there is one GPU).
pub type MemberId = u64;

/// The per-member rules in force for a request (they come from its guild's settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberLimits {
    /// Most jobs a member may have waiting (not counting the one running).
    pub max_waiting: usize,
    /// Least time between two accepted requests of a member.
    pub cooldown: Duration,
}

/// A place held for a request that is being written to the store; it counts against the limits
/// already, so two concurrent requests cannot both slip under one.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "confirm or release the reservation"]
pub struct Reservation {
    pub member: MemberId,
    pub round: u64,
    previous_submit: Option<SystemTime>,
}

/// Where a cancelled job was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It was waiting and is gone from the queue.
    Removed,
    /// It is running; the caller must stop the engine.
    Running,
}

#[derive(Debug, Clone)]
pub struct Scheduler {
    cap: usize,
    /// Waiting jobs in running order.
    queue: BTreeMap<(u64, JobId), MemberId>,
    rounds: HashMap<JobId, u64>,
    /// The running jobs: one, or the jobs of one sampler batch (the first in fair order
    /// first).
    running: Vec<(JobId, MemberId, u64)>,
    /// Round of the job that started last.
    current_round: u64,
    reserved: HashMap<MemberId, usize>,
    last_submit: HashMap<MemberId, SystemTime>,
}

impl Scheduler {
    /// `cap`: most jobs waiting across the bot.
    pub fn new(cap: usize) -> Self {
        Scheduler {
            cap,
            queue: BTreeMap::new(),
            rounds: HashMap::new(),
            running: Vec::new(),
            current_round: 0,
            reserved: HashMap::new(),
            last_submit: HashMap::new(),
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
    }

    /// Checks the limits for a new request of `member` and holds a place for it.
    pub fn reserve(
        &mut self,
        member: MemberId,
        limits: MemberLimits,
        now: SystemTime,
    ) -> Result<Reservation, Refusal> {
        self.check(member, limits, now)?;
        let previous_submit = self.last_submit.get(&member).copied();
        let round =
            self.next_round_of(member) + self.reserved.get(&member).copied().unwrap_or(0) as u64;
        *self.reserved.entry(member).or_default() += 1;
        self.last_submit.insert(member, now);
        Ok(Reservation {
            member,
            round,
            previous_submit,
        })
    }

    /// Whether a new request of `member` would pass the queue cap, the member's waiting limit
    /// and cooldown now, holding nothing (the cheap look before costly intake work).
    pub fn check(
        &self,
        member: MemberId,
        limits: MemberLimits,
        now: SystemTime,
    ) -> Result<(), Refusal> {
        let reserved_total: usize = self.reserved.values().sum();
        if self.queue.len() + reserved_total >= self.cap {
            return Err(Refusal::QueueFull { cap: self.cap });
        }
        let waiting = self.waiting_of(member) + self.reserved.get(&member).copied().unwrap_or(0);
        if waiting >= limits.max_waiting {
            return Err(Refusal::WaitingLimit {
                limit: limits.max_waiting,
            });
        }
        let previous_submit = self.last_submit.get(&member).copied();
        if let Some(last) = previous_submit {
            let since = now.duration_since(last).unwrap_or(Duration::ZERO);
            if since < limits.cooldown {
                return Err(Refusal::Cooldown {
                    cooldown: limits.cooldown,
                    retry_in: limits.cooldown - since,
                });
            }
        }
        Ok(())
    }

    /// The request was stored as job `id`: it joins the queue. Returns its 1-based position.
    pub fn confirm(&mut self, reservation: Reservation, id: JobId) -> usize {
        self.unreserve(reservation.member);
        self.insert(id, reservation.member, reservation.round);
        self.position(id).unwrap_or(0)
    }

    /// The request was not stored: give the place back (and the cooldown, since it never ran).
    pub fn release(&mut self, reservation: Reservation) {
        self.unreserve(reservation.member);
        match reservation.previous_submit {
            Some(t) => self.last_submit.insert(reservation.member, t),
            None => self.last_submit.remove(&reservation.member),
        };
    }

    /// Start-up: the round of the job that started last before the restart, so newcomers
    /// do not jump ahead of jobs that were already waiting.
    pub fn resume_from_round(&mut self, round: u64) {
        self.current_round = self.current_round.max(round);
    }

    /// Puts a stored waiting job back (at start-up), bypassing the limits.
    pub fn restore(&mut self, id: JobId, member: MemberId, round: u64) {
        self.insert(id, member, round);
    }

    /// Takes the next job off the queue and marks it running. `None` when nothing waits or a job
    /// already runs (one GPU, one job).
    pub fn start_next(&mut self) -> Option<JobId> {
        self.start_batch(1, |_, _| false).into_iter().next()
    }

    /// Takes the next job off the queue and, to share its sampler batch, up to `max - 1`
    /// further waiting jobs for which `compatible(first, other)` holds, in fair order; all are
    /// marked running, the first in fair order first. Empty when nothing waits or jobs already
    /// run. The jobs passed over keep their places (and their order).
    pub fn start_batch(
        &mut self,
        max: usize,
        compatible: impl Fn(JobId, JobId) -> bool,
    ) -> Vec<JobId> {
        if !self.running.is_empty() {
            return Vec::new();
        }
        let Some(((round, first), member)) = self.queue.pop_first() else {
            return Vec::new();
        };
        let mut taken = vec![((round, first), member)];
        let mates: Vec<(u64, JobId)> = self
            .queue
            .keys()
            .filter(|&&(_, id)| compatible(first, id))
            .take(max.saturating_sub(1))
            .copied()
            .collect();
        for key in mates {
            if let Some(member) = self.queue.remove(&key) {
                taken.push((key, member));
            }
        }
        for &((round, id), member) in &taken {
            self.rounds.remove(&id);
            self.running.push((id, member, round));
            self.current_round = self.current_round.max(round);
        }
        taken.into_iter().map(|((_, id), _)| id).collect()
    }

    /// A running job ended (whichever way). Returns false if `id` was not running.
    pub fn finish(&mut self, id: JobId) -> bool {
        let before = self.running.len();
        self.running.retain(|&(running, ..)| running != id);
        self.running.len() < before
    }

    /// Puts every running job back at the head of the queue, in their fair order (shutdown, or
    /// an interrupted run). Returns the first.
    pub fn requeue_running(&mut self) -> Option<JobId> {
        let running = std::mem::take(&mut self.running);
        let first = running.first().map(|&(id, ..)| id);
        for (id, member, round) in running {
            self.insert(id, member, round);
        }
        first
    }

    /// Puts the running job `id` back in the queue at its old place. Returns false if `id` was
    /// not running.
    pub fn requeue(&mut self, id: JobId) -> bool {
        let Some(at) = self.running.iter().position(|&(r, ..)| r == id) else {
            return false;
        };
        let (id, member, round) = self.running.remove(at);
        self.insert(id, member, round);
        true
    }

    pub fn cancel(&mut self, id: JobId) -> Option<Cancelled> {
        if let Some(round) = self.rounds.remove(&id) {
            self.queue.remove(&(round, id));
            return Some(Cancelled::Removed);
        }
        self.running
            .iter()
            .any(|&(running, ..)| running == id)
            .then_some(Cancelled::Running)
    }

    /// The running job (the first in fair order of a running batch).
    pub fn running(&self) -> Option<JobId> {
        self.running.first().map(|&(id, ..)| id)
    }

    /// Every running job: one, or the jobs of a batch.
    pub fn running_all(&self) -> Vec<JobId> {
        self.running.iter().map(|&(id, ..)| id).collect()
    }

    /// 1-based place in the queue of a waiting job (1 runs next).
    pub fn position(&self, id: JobId) -> Option<usize> {
        let round = *self.rounds.get(&id)?;
        Some(self.queue.range(..(round, id)).count() + 1)
    }

    /// Waiting jobs in the order they will run, with their members.
    pub fn order(&self) -> Vec<(JobId, MemberId)> {
        self.queue.iter().map(|(&(_, id), &m)| (id, m)).collect()
    }

    pub fn waiting_len(&self) -> usize {
        self.queue.len()
    }

    pub fn waiting_of(&self, member: MemberId) -> usize {
        self.queue.values().filter(|&&m| m == member).count()
    }

    pub fn is_waiting(&self, id: JobId) -> bool {
        self.rounds.contains_key(&id)
    }

    fn next_round_of(&self, member: MemberId) -> u64 {
        let last = self
            .queue
            .iter()
            .filter(|(_, &m)| m == member)
            .map(|(&(round, _), _)| round)
            .chain(self.running.iter().filter(|r| r.1 == member).map(|r| r.2))
            .max();
        let floor = self.current_round + 1;
        last.map_or(floor, |r| (r + 1).max(floor))
    }

    fn insert(&mut self, id: JobId, member: MemberId, round: u64) {
        if let Some(old) = self.rounds.insert(id, round) {
            self.queue.remove(&(old, id));
        }
        self.queue.insert((round, id), member);
    }

    fn unreserve(&mut self, member: MemberId) {
        if let Some(n) = self.reserved.get_mut(&member) {
            *n -= 1;
            if *n == 0 {
                self.reserved.remove(&member);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_LIMITS: MemberLimits = MemberLimits {
        max_waiting: 100,
        cooldown: Duration::ZERO,
    };

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    fn submit(s: &mut Scheduler, id: i64, member: MemberId) -> usize {
        let r = s.reserve(member, NO_LIMITS, at(id as u64)).unwrap();
        s.confirm(r, JobId(id))
    }

    #[test]
    fn five_jobs_of_one_member_do_not_delay_another_members_first() {
        let mut s = Scheduler::new(100);
        for id in 1..=5 {
            submit(&mut s, id, 10);
        }
        assert_eq!(submit(&mut s, 6, 20), 2);
        let order: Vec<_> = std::iter::from_fn(|| {
            let id = s.start_next()?;
            s.finish(id);
            Some(id.0)
        })
        .collect();
        assert_eq!(order, vec![1, 6, 2, 3, 4, 5]);
    }

    #[test]
    fn newcomer_joins_the_next_round() {
        let mut s = Scheduler::new(100);
        for id in 1..=3 {
            submit(&mut s, id, 10);
        }
        for id in 4..=6 {
            submit(&mut s, id, 20);
        }
        let first = s.start_next().unwrap();
        assert_eq!(first, JobId(1));
        // Job 1 runs; a third member arrives and takes part in the next round, ahead of the
        // other members' third jobs.
        assert_eq!(submit(&mut s, 7, 30), 4);
        assert_eq!(
            s.order().iter().map(|(id, _)| id.0).collect::<Vec<_>>(),
            vec![4, 2, 5, 7, 3, 6]
        );
    }

    #[test]
    fn waiting_limit_cooldown_and_cap_refuse_with_typed_reasons() {
        let mut s = Scheduler::new(3);
        let limits = MemberLimits {
            max_waiting: 2,
            cooldown: Duration::from_secs(30),
        };
        let r = s.reserve(1, limits, at(0)).unwrap();
        s.confirm(r, JobId(1));
        assert_eq!(
            s.reserve(1, limits, at(10)),
            Err(Refusal::Cooldown {
                cooldown: Duration::from_secs(30),
                retry_in: Duration::from_secs(20)
            })
        );
        let r = s.reserve(1, limits, at(30)).unwrap();
        s.confirm(r, JobId(2));
        assert_eq!(
            s.reserve(1, limits, at(100)),
            Err(Refusal::WaitingLimit { limit: 2 })
        );
        // Once one starts, the member may queue again.
        s.start_next();
        let r = s.reserve(1, limits, at(100)).unwrap();
        s.confirm(r, JobId(3));
        let r = s.reserve(2, limits, at(100)).unwrap();
        s.confirm(r, JobId(4));
        assert_eq!(
            s.reserve(3, limits, at(100)),
            Err(Refusal::QueueFull { cap: 3 })
        );
    }

    #[test]
    fn reservations_count_against_limits_and_release_restores_cooldown() {
        let mut s = Scheduler::new(100);
        let limits = MemberLimits {
            max_waiting: 1,
            cooldown: Duration::from_secs(60),
        };
        let r = s.reserve(1, limits, at(0)).unwrap();
        assert!(matches!(
            s.reserve(
                1,
                MemberLimits {
                    cooldown: Duration::ZERO,
                    ..limits
                },
                at(0)
            ),
            Err(Refusal::WaitingLimit { .. })
        ));
        s.release(r);
        assert!(s.reserve(1, limits, at(1)).is_ok());
    }

    #[test]
    fn requeued_running_job_goes_back_to_the_head() {
        let mut s = Scheduler::new(100);
        submit(&mut s, 1, 10);
        submit(&mut s, 2, 20);
        submit(&mut s, 3, 10);
        assert_eq!(s.start_next(), Some(JobId(1)));
        assert_eq!(s.requeue_running(), Some(JobId(1)));
        assert_eq!(s.position(JobId(1)), Some(1));
        assert_eq!(s.position(JobId(2)), Some(2));
    }

    #[test]
    fn a_batch_takes_compatible_jobs_in_fair_order_and_leaves_the_rest_in_place() {
        let mut s = Scheduler::new(100);
        for (id, member) in [(1, 10), (2, 20), (3, 30), (4, 40), (5, 50), (6, 10)] {
            submit(&mut s, id, member);
        }
        // Odd ids are compatible with each other, even ids with each other.
        let batch = s.start_batch(3, |a, b| a.0 % 2 == b.0 % 2);
        assert_eq!(batch, vec![JobId(1), JobId(3), JobId(5)]);
        assert_eq!(s.running_all(), batch);
        assert_eq!(s.running(), Some(JobId(1)));
        assert_eq!(s.position(JobId(2)), Some(1));
        assert_eq!(s.position(JobId(4)), Some(2));
        assert_eq!(s.position(JobId(6)), Some(3));
        // Nothing else starts while the batch runs.
        assert!(s.start_batch(3, |_, _| true).is_empty());
        assert_eq!(s.cancel(JobId(3)), Some(Cancelled::Running));
        assert!(s.finish(JobId(3)));
        assert!(!s.finish(JobId(3)));
        // A job of the batch goes back to its old place.
        assert!(s.requeue(JobId(5)));
        assert_eq!(s.position(JobId(5)), Some(3));
        assert_eq!(s.requeue_running(), Some(JobId(1)));
        assert_eq!(
            s.order().iter().map(|(id, _)| id.0).collect::<Vec<_>>(),
            vec![1, 2, 4, 5, 6]
        );
        // A batch of one is the next job alone.
        assert_eq!(s.start_batch(1, |_, _| true), vec![JobId(1)]);
    }

    #[test]
    fn cancel_removes_waiting_and_reports_running() {
        let mut s = Scheduler::new(100);
        submit(&mut s, 1, 10);
        submit(&mut s, 2, 20);
        submit(&mut s, 3, 30);
        s.start_next();
        assert_eq!(s.cancel(JobId(2)), Some(Cancelled::Removed));
        assert_eq!(s.position(JobId(3)), Some(1));
        assert_eq!(s.cancel(JobId(1)), Some(Cancelled::Running));
        assert_eq!(s.cancel(JobId(2)), None);
    }

    #[test]
    fn restored_order_equals_the_order_before_a_restart() {
        let mut s = Scheduler::new(100);
        for (id, m) in [(1, 1), (2, 1), (3, 2), (4, 1), (5, 3), (6, 2)] {
            submit(&mut s, id, m);
        }
        s.start_next();
        let before = s.order();
        let mut fresh = Scheduler::new(100);
        for (&(round, id), &m) in s.queue.iter().rev() {
            fresh.restore(id, m, round);
        }
        assert_eq!(fresh.order(), before);
    }

    mod prop {
        use std::collections::{HashMap, HashSet};

        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Submit(MemberId),
            Cancel(usize),
            Start,
            Finish,
            Requeue,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0u64..4).prop_map(Op::Submit),
                2 => (0usize..64).prop_map(Op::Cancel),
                2 => Just(Op::Start),
                2 => Just(Op::Finish),
                1 => Just(Op::Requeue),
            ]
        }

        proptest! {
            /// Every accepted job is in exactly one place — waiting, running, finished or
            /// cancelled — whatever the interleaving; positions are 1..=n without gaps.
            #[test]
            fn no_interleaving_loses_or_duplicates_a_job(ops in proptest::collection::vec(op(), 1..200)) {
                let limits = MemberLimits { max_waiting: 3, cooldown: Duration::ZERO };
                let mut s = Scheduler::new(8);
                let mut next_id = 1;
                let mut accepted: Vec<JobId> = Vec::new();
                // Counted, not collected in a set, so that a second finish of a job shows.
                let mut finished: HashMap<JobId, usize> = HashMap::new();
                let mut cancelled: HashSet<JobId> = HashSet::new();
                let mut started: HashSet<JobId> = HashSet::new();
                for op in ops {
                    match op {
                        Op::Submit(m) => {
                            if let Ok(r) = s.reserve(m, limits, at(0)) {
                                let id = JobId(next_id);
                                next_id += 1;
                                s.confirm(r, id);
                                accepted.push(id);
                            }
                        }
                        Op::Cancel(i) => {
                            if let Some(&id) = accepted.get(i) {
                                match s.cancel(id) {
                                    Some(Cancelled::Removed) => { cancelled.insert(id); }
                                    Some(Cancelled::Running) => {
                                        prop_assert!(s.finish(id));
                                        cancelled.insert(id);
                                    }
                                    None => prop_assert!(finished.contains_key(&id) || cancelled.contains(&id)),
                                }
                            }
                        }
                        Op::Start => {
                            if let Some(id) = s.start_next() {
                                prop_assert!(!finished.contains_key(&id) && !cancelled.contains(&id), "job {} started after it ended", id);
                                started.insert(id);
                            }
                        }
                        Op::Finish => {
                            if let Some(id) = s.running() {
                                prop_assert!(s.finish(id));
                                *finished.entry(id).or_default() += 1;
                                // Finishing again is refused: the job no longer runs.
                                prop_assert!(!s.finish(id));
                            }
                        }
                        Op::Requeue => { s.requeue_running(); }
                    }
                    let waiting: Vec<JobId> = s.order().into_iter().map(|(id, _)| id).collect();
                    let waiting_set: HashSet<JobId> = waiting.iter().copied().collect();
                    prop_assert_eq!(waiting.len(), waiting_set.len(), "duplicate in queue");
                    // A requeued running job may take the queue one over the cap: it is never
                    // dropped for want of room.
                    prop_assert!(s.waiting_len() <= 8 + 1);
                    for (i, id) in waiting.iter().enumerate() {
                        prop_assert_eq!(s.position(*id), Some(i + 1));
                    }
                    for id in &accepted {
                        let places = [
                            waiting_set.contains(id),
                            s.running() == Some(*id),
                            finished.contains_key(id),
                            cancelled.contains(id),
                        ];
                        prop_assert_eq!(places.iter().filter(|&&p| p).count(), 1, "job {} in {:?}", id, places);
                    }
                }
                // A job is never finished twice, and only started jobs finish.
                for (id, times) in &finished {
                    prop_assert_eq!(*times, 1, "job {} finished {} times", id, times);
                    prop_assert!(started.contains(id));
                }
            }
        }
    }
}
