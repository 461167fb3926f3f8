//! Group commit across callers: writes that arrive while another write holds the replica
//! (most of that time is its flush) are committed together, with one flush, once the lock is
//! free again.
//!
//! A leader and followers: each writer queues its job, then becomes the leader unless another
//! writer is leading. The leader takes the replica lock, stages every queued job into one
//! batch, commits it and answers each job the moment the batch is durable (its journal
//! record synced: sled and the bookkeeping after a write take it in while the callers are
//! answered, see `Replica::batch_acknowledging`); it leads again while jobs are queued. A follower
//! sleeps until its answer arrives, woken once, by the leader, so a group costs no queue of
//! threads taking the lock in turn. A follower from async code is a task awaiting its answer,
//! not a thread: only a leader runs on tokio's blocking pool (`SharedReplica::run_grouped`),
//! and the task answers its caller while that leader finishes the commit. A lone write runs
//! alone, with the same latency as a plain `Replica::batch`.
//!
//! No job is left behind: a writer that saw another leading pushed its job before it looked,
//! and a leader looks at the queue again after it stops leading. A follower that still waits
//! after `FOLLOWER_PATIENCE` with nobody leading (its leader panicked) tries to lead itself.
//!
//! A group whose commit fails before it reaches sled (the reserve, a change Automerge
//! refuses) is run again one job at a time, so each caller gets the answer it would have had
//! alone: only the job at fault fails for a fault of its own. Jobs may therefore run more than
//! once and must not consume their input. A group whose flush fails is answered as a whole
//! with `NotDurable`: every write in it may be on disk after a restart. A failure after the
//! group was acknowledged (sled refusing writes the journal holds) changes no answer: the
//! journal's replay applies them at the next start.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Batch, Replica, ReplicaError};

/// How long a follower waits for its answer before it checks whether anyone still leads.
pub(super) const FOLLOWER_PATIENCE: Duration = Duration::from_millis(20);

/// Jobs waiting for the next leader, and whether one is leading.
#[derive(Default)]
pub(super) struct Queue {
    jobs: Mutex<Vec<Box<dyn Job>>>,
    leading: AtomicBool,
}

/// Leadership of a queue, given back when dropped (a panicking leader too).
pub(super) struct Leading<'a>(&'a Queue);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.leading.store(false, Ordering::SeqCst);
    }
}

impl Queue {
    pub fn push(&self, job: Box<dyn Job>) {
        self.jobs().push(job);
    }

    pub fn take(&self) -> Vec<Box<dyn Job>> {
        std::mem::take(&mut *self.jobs())
    }

    pub fn is_empty(&self) -> bool {
        self.jobs().is_empty()
    }

    /// Leadership, unless another writer holds it. The guard is made only when leadership
    /// was taken: dropping one made for a refusal would give away the leader's.
    pub fn lead(&self) -> Option<Leading<'_>> {
        self.leading
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
            .then(|| Leading(self))
    }

    /// Whether a writer leads now: its group, or the next, takes a job queued before this
    /// was read.
    pub fn is_led(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.jobs().len()
    }

    /// A job is queued or taken whole, so a panic elsewhere cannot leave the list torn.
    fn jobs(&self) -> std::sync::MutexGuard<'_, Vec<Box<dyn Job>>> {
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One caller's writes, erased to be queued with others.
pub(super) trait Job: Send {
    /// Stages the writes into the group's batch and keeps the outcome for `answer`.
    fn stage(&mut self, batch: &mut Batch<'_>);
    /// Sends the kept outcome: the group's writes are durable.
    fn answer(self: Box<Self>);
    /// Runs the job again in a batch of its own and sends that outcome.
    fn run_alone(self: Box<Self>, replica: &mut Replica);
    /// Sends `error` instead of an outcome.
    fn fail(self: Box<Self>, error: ReplicaError);
}

/// Where a job's answer goes: a thread blocked on it, or a task awaiting it.
enum Reply<T> {
    Waiting(mpsc::SyncSender<Result<T, ReplicaError>>),
    Awaiting(oneshot::Sender<Result<T, ReplicaError>>),
}

impl<T> Reply<T> {
    fn send(self, outcome: Result<T, ReplicaError>) {
        // The caller waits on the other end until it has its answer; gone only if it gave
        // up (its thread died, its request was dropped), and then nobody needs it.
        match self {
            Reply::Waiting(reply) => drop(reply.send(outcome)),
            Reply::Awaiting(reply) => drop(reply.send(outcome)),
        }
    }
}

/// A job and where its answer goes.
pub(super) struct Pending<T, F> {
    write: F,
    outcome: Option<Result<T, ReplicaError>>,
    /// Taken when the answer is sent: a job is answered once.
    reply: Option<Reply<T>>,
}

impl<T, F> Pending<T, F> {
    /// A job whose caller blocks on the answer.
    pub fn waiting(write: F) -> (Self, mpsc::Receiver<Result<T, ReplicaError>>) {
        let (reply, answer) = mpsc::sync_channel(1);
        (Pending::replying(write, Reply::Waiting(reply)), answer)
    }

    /// A job whose caller awaits the answer.
    pub fn awaiting(write: F) -> (Self, oneshot::Receiver<Result<T, ReplicaError>>) {
        let (reply, answer) = oneshot::channel();
        (Pending::replying(write, Reply::Awaiting(reply)), answer)
    }

    fn replying(write: F, reply: Reply<T>) -> Self {
        Pending {
            write,
            outcome: None,
            reply: Some(reply),
        }
    }
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: FnMut(&mut Batch<'_>) -> Result<T, ReplicaError> + Send,
{
    fn stage(&mut self, batch: &mut Batch<'_>) {
        self.outcome = Some((self.write)(batch));
    }

    fn answer(mut self: Box<Self>) {
        if let (Some(outcome), Some(reply)) = (self.outcome.take(), self.reply.take()) {
            reply.send(outcome);
        }
    }

    fn run_alone(mut self: Box<Self>, replica: &mut Replica) {
        let Pending { write, reply, .. } = &mut *self;
        let acknowledged = replica.batch_acknowledging(write, |outcome| {
            if let Some(reply) = reply.take() {
                reply.send(outcome);
            }
        });
        if let (Err(error), Some(reply)) = (acknowledged, reply.take()) {
            reply.send(Err(error));
        }
    }

    fn fail(mut self: Box<Self>, error: ReplicaError) {
        if let Some(reply) = self.reply.take() {
            reply.send(Err(error));
        }
    }
}

/// Commits `jobs` as one batch with one flush, and answers each as soon as it is durable; see
/// the module comment for a group that fails.
pub(super) fn commit(replica: &mut Replica, mut jobs: Vec<Box<dyn Job>>) {
    if jobs.len() == 1 {
        if let Some(job) = jobs.pop() {
            job.run_alone(replica);
        }
        return;
    }
    // Staged by the batch, answered the moment the group is durable (`batch_acknowledging`),
    // or handed back here when it failed before.
    let group = RefCell::new(jobs);
    let acknowledged = replica.batch_acknowledging(
        |batch| {
            for job in group.borrow_mut().iter_mut() {
                job.stage(batch);
            }
            Ok(())
        },
        |_| group.take().into_iter().for_each(|job| job.answer()),
    );
    let jobs = group.into_inner();
    match acknowledged {
        Ok(()) => {}
        // Each write of the group may be on disk after a restart: each caller is told so.
        Err(ReplicaError::NotDurable(reason)) => jobs
            .into_iter()
            .for_each(|job| job.fail(ReplicaError::NotDurable(reason.clone()))),
        Err(error) => {
            tracing::debug!(%error, jobs = jobs.len(), "a group commit failed; its writes run one by one");
            jobs.into_iter().for_each(|job| job.run_alone(replica));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Queue;

    #[test]
    fn a_refused_leader_leaves_the_leader_leading() {
        let queue = Queue::default();
        let leading = queue.lead().expect("nobody leads yet");
        assert!(queue.lead().is_none(), "a second writer must not lead");
        // Before: the refused attempt built a guard and dropped it, clearing the flag, so a
        // third writer led beside the first (and waited for the replica's lock).
        assert!(queue.lead().is_none(), "the first writer still leads");
        drop(leading);
        assert!(queue.lead().is_some(), "leadership is free again");
    }
}
