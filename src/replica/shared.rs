//! One replica shared by the tasks of a process, and the one lock policy for it.
//!
//! Every store call from async code (links, the HTTP API, the view writer, control requests)
//! goes through `SharedReplica::run`, which takes the lock on tokio's blocking pool, so a slow
//! disk never stalls the runtime threads. Code that already runs on a blocking thread (a
//! control command, the CLI) uses `SharedReplica::with`. Single writes from async code
//! (`run_grouped`) await their answer instead: only the leader of their group takes the lock,
//! on the blocking pool (see `group`).
//!
//! Writes that may touch skills go through `SharedReplica::batch` (or `run_batch`): it holds
//! the lock to decide and to commit, but applies skill text edits, which take up to seconds
//! for a large text, with the lock released (see `detached`), so that reads, memory writes
//! and sync rounds carry on meanwhile.
//!
//! Poisoning: a panic while the lock is held is a bug, and the replica's state is still
//! usable: every change is applied to the in-memory document first and acknowledged only
//! once its journal record is synced, so a panic can at worst leave a change in memory that a
//! restart would not see, never a torn document. The lock is therefore taken back, the poison
//! is cleared and the event logged once, and the node keeps serving. A panic inside `run`
//! becomes an error for the one request that hit it.

use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use super::detached::{Commit, Staging};
use super::group::{self, Pending, Queue};
use super::{Batch, Replica, ReplicaError, SkillWrite};
use crate::model::Skill;

/// Stagings of one batch before it runs wholly under the lock instead: each further one means
/// a concurrent write moved a document the batch writes while its skills were being edited.
const DETACHED_ATTEMPTS: usize = 3;

/// A piece of store work that panicked: a bug, reported to the one caller that hit it.
#[derive(Debug, thiserror::Error)]
#[error("internal error while working on the store ({0}); this is a bug, the node keeps running: please report it with the log")]
pub struct StoreTaskFailed(String);

/// A cheap handle to the process's one replica.
#[derive(Clone)]
pub struct SharedReplica {
    replica: Arc<Mutex<Replica>>,
    /// Writes waiting to be committed as a group (`grouped`).
    queue: Arc<Queue>,
    /// Fixed for the replica's life, so read without the lock.
    node_id: Arc<str>,
    /// Tests: a leader waits here after each group, still holding the replica.
    #[cfg(test)]
    hold_after_commit: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
}

impl SharedReplica {
    pub fn new(replica: Replica) -> SharedReplica {
        SharedReplica {
            node_id: replica.node_id().into(),
            replica: Arc::new(Mutex::new(replica)),
            queue: Arc::default(),
            #[cfg(test)]
            hold_after_commit: Arc::default(),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Runs `f` with the replica locked, on the calling thread. Only for threads that may
    /// block: a command on the blocking pool, the CLI, tests. Documents beyond the memory
    /// budget are evicted before the lock is released.
    pub fn with<T>(&self, f: impl FnOnce(&mut Replica) -> T) -> T {
        let mut replica = self.lock();
        let result = f(&mut replica);
        replica.trim();
        result
    }

    /// Runs `f` with the replica locked on tokio's blocking pool and waits for it there.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Replica) -> T + Send + 'static,
    ) -> Result<T, StoreTaskFailed> {
        self.on_blocking_pool(move |shared| shared.with(f)).await
    }

    /// Runs `f` on tokio's blocking pool, where it may wait for the lock and the disk; a
    /// panic in it becomes an error for this one caller.
    async fn on_blocking_pool<T: Send + 'static>(
        &self,
        f: impl FnOnce(SharedReplica) -> T + Send + 'static,
    ) -> Result<T, StoreTaskFailed> {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || f(shared))
            .await
            .map_err(|e| StoreTaskFailed(e.to_string()))
    }

    /// `Replica::batch` with the skill text work done off the lock. `f` may run more than once
    /// (only the last run's writes are kept), so it must not consume its input.
    pub fn batch<T>(
        &self,
        f: impl FnMut(&mut Batch<'_>) -> Result<T, ReplicaError>,
    ) -> Result<T, ReplicaError> {
        self.batch_pausing(f, || {})
    }

    /// `batch` on tokio's blocking pool.
    pub async fn run_batch<T: Send + 'static>(
        &self,
        f: impl FnMut(&mut Batch<'_>) -> Result<T, ReplicaError> + Send + 'static,
    ) -> Result<Result<T, ReplicaError>, StoreTaskFailed> {
        self.on_blocking_pool(move |shared| shared.batch(f)).await
    }

    /// `Replica::batch`, committed with the writes of other callers that arrive meanwhile:
    /// one flush for all of them (see `group`). `write` may run more than once, so it must not
    /// consume its input; it should not write large skill texts, which `batch` edits off the
    /// lock.
    pub fn grouped<T: Send + 'static>(
        &self,
        write: impl FnMut(&mut Batch<'_>) -> Result<T, ReplicaError> + Send + 'static,
    ) -> Result<T, ReplicaError> {
        let (pending, answer) = Pending::waiting(write);
        self.queue.push(Box::new(pending));
        loop {
            self.lead_while_queued();
            match answer.recv_timeout(group::FOLLOWER_PATIENCE) {
                Ok(answered) => return answered,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // The leader that took the job panicked with it.
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(ReplicaError::Interrupted),
            }
        }
    }

    /// Commits queued writes group after group, unless another writer is leading. A leader
    /// started for a job that an earlier leader took finds the queue empty and leaves the
    /// replica alone: only a leader takes jobs, so they are still there under the lock.
    fn lead_while_queued(&self) {
        while let Some(leading) = self.queue.lead() {
            if !self.queue.is_empty() {
                let mut replica = self.lock();
                group::commit(&mut replica, self.queue.take());
                replica.trim();
                #[cfg(test)]
                self.hold_if_told();
            }
            drop(leading);
            if self.queue.is_empty() {
                return;
            }
        }
    }

    /// Makes the next leader wait after its group, holding the replica, until `release` sends.
    #[cfg(test)]
    pub(super) fn hold_after_next_commit(&self, release: mpsc::Receiver<()>) {
        *self.hold_after_commit.lock().unwrap() = Some(release);
    }

    #[cfg(test)]
    fn hold_if_told(&self) {
        let release = self.hold_after_commit.lock().unwrap().take();
        if let Some(release) = release {
            let _ = release.recv();
        }
    }

    /// Writes waiting for a leader: for tests that line a group up.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// `grouped` from async code. The task awaits its answer, which comes the moment the
    /// write is durable; only a leader runs on tokio's blocking pool (started here when none
    /// leads), and it finishes the commit (sled, the bookkeeping after a write) and leads the
    /// groups queued meanwhile while the task already answers its caller.
    pub async fn run_grouped<T: Send + 'static>(
        &self,
        write: impl FnMut(&mut Batch<'_>) -> Result<T, ReplicaError> + Send + 'static,
    ) -> Result<T, ReplicaError> {
        let (pending, mut answer) = Pending::awaiting(write);
        self.queue.push(Box::new(pending));
        loop {
            if !self.queue.is_led() {
                let shared = self.clone();
                // Not awaited: the answer comes through `answer`, and a leader that panics
                // drops the jobs it took, which closes their answers.
                drop(tokio::task::spawn_blocking(move || {
                    shared.lead_while_queued()
                }));
            }
            match tokio::time::timeout(group::FOLLOWER_PATIENCE, &mut answer).await {
                Ok(Ok(answered)) => return answered,
                // The leader that took the job panicked with it.
                Ok(Err(_)) => return Err(ReplicaError::Interrupted),
                // Still queued, or committing: a leader that died leaves the flag down.
                Err(_) => {}
            }
        }
    }

    /// `Replica::put_skill` with the text edit done off the lock.
    pub fn put_skill(&self, write: SkillWrite) -> Result<Skill, ReplicaError> {
        self.batch(|batch| batch.put_skill(write.clone()))
    }

    /// `batch`, calling `pause` whenever the lock is released for skill text work: tests use it
    /// to act at that moment.
    pub(super) fn batch_pausing<T>(
        &self,
        mut f: impl FnMut(&mut Batch<'_>) -> Result<T, ReplicaError>,
        mut pause: impl FnMut(),
    ) -> Result<T, ReplicaError> {
        for _ in 0..DETACHED_ATTEMPTS {
            let mut detached = match self.with(|replica| replica.stage_detached(&mut f))? {
                Staging::Committed(outcome) => return outcome,
                Staging::Detached(detached) => detached,
            };
            pause();
            detached.edit_skills()?;
            if let Commit::Done(outcome) =
                self.with(|replica| replica.commit_detached(*detached))?
            {
                return outcome;
            }
        }
        self.with(|replica| replica.batch(f))
    }

    fn lock(&self) -> MutexGuard<'_, Replica> {
        self.replica.lock().unwrap_or_else(|poisoned| {
            tracing::error!("a task panicked while holding the replica; carrying on (see above)");
            self.replica.clear_poison();
            let mut replica = poisoned.into_inner();
            replica.settle_interrupted();
            replica
        })
    }
}
