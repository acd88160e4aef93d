//! [`StoreWriter`]: the [`Store`] on its own thread, fed batches by an actor.
//!
//! **Never waits on disk:** [`submit`](StoreWriter::submit) takes a mutex for
//! an in-memory push only; the writer thread holds that mutex only to take
//! everything pending, never while it writes. So a slow or stuck disk delays
//! the store, not the event path.
//!
//! **Bounded by coalescing, then by a cap.** While the thread is busy, new
//! changes wait in one pending list, where an upsert of a row that is already
//! pending replaces it (the old one moves to the end: the order of changes to
//! different rows, and of [`Change::RemoveAgentsExcept`], is kept, so the
//! result equals applying every batch in turn). The list therefore grows with
//! the number of *distinct* rows changed, not with the event rate. Only if it
//! still reaches `max_pending` live changes (a disk stuck for long while new
//! runs keep starting) are whole new batches dropped and counted
//! ([`WriterStats::changes_dropped`]). We coalesce rather than drop because a
//! dropped update can be the last one a row gets (a run's final status): the
//! store would then show it running forever after a restart.
//!
//! Everything pending is written as one transaction, so a backlog also costs
//! fewer fsyncs. A failed transaction (disk full, I/O error) is counted in
//! [`WriterStats::write_failures`], logged, and not retried: the in-memory
//! registry stays right, later upserts repair the rows, and `agents.list`
//! refreshes the agents on the next session.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Change, Store, StoreError};
use crate::telemetry::emit::{self, StoreFailureLog};

/// Default cap on live pending changes (about 100 bytes to a few KiB each).
pub const DEFAULT_MAX_PENDING: usize = 100_000;

/// What the writer has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Changes written (after coalescing).
    pub changes_written: u64,
    /// Changes superseded by a later change to the same row before written.
    pub changes_coalesced: u64,
    /// Changes refused because `max_pending` was reached.
    pub changes_dropped: u64,
    /// Transactions that failed (their changes are lost).
    pub write_failures: u64,
    pub last_error: Option<String>,
    /// The last write failed (a failing disk is logged when this changes,
    /// not on every write).
    pub failing: bool,
}

/// What to log after a write: a stuck or full disk fails every write, and
/// a log line each time would flood the log. One line when writes start
/// failing, one when they work again; the counter metric counts them all.
#[derive(Debug, PartialEq, Eq)]
enum FailureLog {
    StartedFailing,
    Recovered { failed: u64 },
    Quiet,
}

fn failure_log(was_failing: bool, ok: bool, failed_in_a_row: u64) -> FailureLog {
    match (was_failing, ok) {
        (false, false) => FailureLog::StartedFailing,
        (true, true) => FailureLog::Recovered {
            failed: failed_in_a_row,
        },
        _ => FailureLog::Quiet,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RowKey {
    Agent(String),
    Run(String),
    Session,
}

fn key_of(c: &Change) -> Option<RowKey> {
    match c {
        Change::UpsertAgent(a) => Some(RowKey::Agent(a.id.clone())),
        Change::UpsertRun(r) => Some(RowKey::Run(r.run_id.clone())),
        Change::SetSession(_) => Some(RowKey::Session),
        Change::RemoveAgentsExcept { .. } => None,
    }
}

/// Pending changes in order, with superseded ones blanked out.
#[derive(Default)]
struct Pending {
    slots: Vec<Option<Change>>,
    index: HashMap<RowKey, usize>,
    live: usize,
}

impl Pending {
    /// Append; returns how many pending changes this one superseded.
    fn push(&mut self, change: Change) -> u64 {
        let mut superseded = 0;
        if let Some(key) = key_of(&change) {
            if let Some(old) = self.index.insert(key, self.slots.len()) {
                if self.slots[old].take().is_some() {
                    self.live -= 1;
                    superseded = 1;
                }
            }
        }
        self.slots.push(Some(change));
        self.live += 1;
        superseded
    }

    fn take(&mut self) -> Vec<Change> {
        self.index.clear();
        self.live = 0;
        std::mem::take(&mut self.slots)
            .into_iter()
            .flatten()
            .collect()
    }
}

struct State {
    pending: Pending,
    /// Batches accepted so far.
    submitted: u64,
    /// Every batch up to this number has been written or has failed.
    done_through: u64,
    closing: bool,
    exited: bool,
    stats: WriterStats,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer thread (work or close).
    work: Condvar,
    /// Wakes `flush`/`close` (progress or exit).
    progress: Condvar,
    max_pending: usize,
}

impl Shared {
    /// Wait on `progress` until `done` says so, at most `timeout`
    /// (`StoreError::Timeout` then). `done` may also end the wait with an error.
    fn wait_until<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        timeout: Duration,
        done: impl Fn(&State) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let deadline = Instant::now() + timeout;
        while !done(&st)? {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Timeout(timeout));
            }
            st = self
                .progress
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave State half-updated in a way that
        // matters here; keep going rather than poison the event path.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Owns a [`Store`] on a dedicated thread; cheap, non-blocking
/// [`submit`](Self::submit) for the event path, [`flush`](Self::flush) and
/// [`close`](Self::close) with a deadline for shutdown.
pub struct StoreWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWriter")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl StoreWriter {
    /// Start the writer thread with [`DEFAULT_MAX_PENDING`].
    pub fn spawn(store: Store) -> Result<StoreWriter, StoreError> {
        Self::spawn_with_limit(store, DEFAULT_MAX_PENDING)
    }

    /// Start the writer thread of gateway `gateway`'s store (its id is in
    /// the thread name and the `store.write_failed` lines).
    pub fn spawn_for(store: Store, gateway: &str) -> Result<StoreWriter, StoreError> {
        Self::spawn_inner(store, DEFAULT_MAX_PENDING, gateway)
    }

    /// Start the writer thread; at most `max_pending` live changes wait.
    pub fn spawn_with_limit(store: Store, max_pending: usize) -> Result<StoreWriter, StoreError> {
        Self::spawn_inner(store, max_pending, crate::config::DEFAULT_GATEWAY)
    }

    fn spawn_inner(
        store: Store,
        max_pending: usize,
        gateway: &str,
    ) -> Result<StoreWriter, StoreError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: Pending::default(),
                submitted: 0,
                done_through: 0,
                closing: false,
                exited: false,
                stats: WriterStats::default(),
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            max_pending: max_pending.max(1),
        });
        let for_thread = shared.clone();
        let gateway = gateway.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("store-writer-{gateway}"))
            .spawn(move || run(store, for_thread, gateway))
            .map_err(StoreError::Spawn)?;
        Ok(StoreWriter {
            shared,
            thread: Some(thread),
        })
    }

    /// Queue a batch; never blocks on disk. False when it was dropped
    /// (pending list full, or the writer is closing).
    pub fn submit(&self, batch: Vec<Change>) -> bool {
        if batch.is_empty() {
            return true;
        }
        let mut st = self.shared.lock();
        if st.closing || st.exited {
            st.stats.changes_dropped += batch.len() as u64;
            return false;
        }
        if st.pending.live >= self.shared.max_pending {
            st.stats.changes_dropped += batch.len() as u64;
            return false;
        }
        let mut superseded = 0;
        for change in batch {
            superseded += st.pending.push(change);
        }
        st.stats.changes_coalesced += superseded;
        st.submitted += 1;
        drop(st);
        self.shared.work.notify_one();
        true
    }

    /// Changes waiting to be written.
    pub fn pending(&self) -> usize {
        self.shared.lock().pending.live
    }

    pub fn stats(&self) -> WriterStats {
        self.shared.lock().stats.clone()
    }

    /// Wait until every batch submitted before this call is written (or has
    /// failed: see [`WriterStats::write_failures`]). Blocks: not for the
    /// event path.
    pub fn flush(&self, timeout: Duration) -> Result<(), StoreError> {
        let st = self.shared.lock();
        let target = st.submitted;
        self.shared.wait_until(st, timeout, |st| {
            if st.done_through >= target {
                Ok(true)
            } else if st.exited {
                Err(StoreError::WriterStopped)
            } else {
                Ok(false)
            }
        })
    }

    /// Write what is pending, stop the thread and close the database. On
    /// timeout the thread is left to finish on its own (SQLite commits a
    /// transaction whole or not at all) and `Timeout` is returned.
    pub fn close(mut self, timeout: Duration) -> Result<WriterStats, StoreError> {
        {
            let mut st = self.shared.lock();
            st.closing = true;
            self.shared.work.notify_one();
            self.shared.wait_until(st, timeout, |st| Ok(st.exited))?;
        }
        if let Some(t) = self.thread.take() {
            // It has set `exited`: joining returns at once.
            let _ = t.join();
        }
        Ok(self.stats())
    }
}

impl Drop for StoreWriter {
    /// Without `close`: the thread writes what is pending and exits on its own.
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.work.notify_one();
    }
}

/// Marks the thread gone however it ends (a panic included), so waiters wake.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.exited = true;
        drop(st);
        self.0.progress.notify_all();
    }
}

fn run(mut store: Store, shared: Arc<Shared>, gateway: String) {
    let _guard = ExitGuard(shared.clone());
    let mut failed_in_a_row = 0u64;
    loop {
        let (batch, upto) = {
            let mut st = shared.lock();
            while st.pending.live == 0 && !st.closing {
                st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.pending.live == 0 {
                st.done_through = st.submitted;
                return; // closing, nothing left
            }
            (st.pending.take(), st.submitted)
        };
        let result = store.apply(&batch);
        let mut st = shared.lock();
        let log = failure_log(st.stats.failing, result.is_ok(), failed_in_a_row);
        match &result {
            Ok(()) => {
                st.stats.transactions += 1;
                st.stats.changes_written += batch.len() as u64;
                st.stats.failing = false;
                failed_in_a_row = 0;
                if let FailureLog::Recovered { failed } = log {
                    emit::store_recovered(&gateway, failed, store.path());
                }
            }
            Err(e) => {
                st.stats.write_failures += 1;
                st.stats.last_error = Some(e.to_string());
                st.stats.failing = true;
                failed_in_a_row += 1;
                let log = match log {
                    FailureLog::StartedFailing => StoreFailureLog::Started {
                        error: e,
                        changes: batch.len(),
                        path: store.path(),
                    },
                    _ => StoreFailureLog::Again,
                };
                emit::store_write_failed(&gateway, log);
            }
        }
        st.done_through = upto;
        drop(st);
        shared.progress.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_disk_is_logged_on_the_change_only() {
        assert_eq!(failure_log(false, false, 0), FailureLog::StartedFailing);
        assert_eq!(failure_log(true, false, 1), FailureLog::Quiet);
        assert_eq!(failure_log(true, false, 9), FailureLog::Quiet);
        assert_eq!(
            failure_log(true, true, 10),
            FailureLog::Recovered { failed: 10 }
        );
        assert_eq!(failure_log(false, true, 0), FailureLog::Quiet);
    }
    use crate::store::{StoredAgent, StoredRun};
    use serde_json::Value;

    fn agent(id: &str, t: u64) -> Change {
        Change::UpsertAgent(StoredAgent {
            id: id.into(),
            name: None,
            is_default: false,
            gateway: Value::Null,
            status: "idle".into(),
            current_run_id: None,
            last_event_at: Some(t),
            updated_at: t,
        })
    }

    fn run_change(id: &str, agent: &str, status: &str) -> Change {
        Change::UpsertRun(StoredRun {
            run_id: id.into(),
            agent_id: agent.into(),
            status: status.into(),
            started_at: Some(1),
            ended_at: None,
            last_event_at: None,
            summary: None,
        })
    }

    #[test]
    fn coalescing_keeps_the_meaning_of_the_sequence() {
        let mut p = Pending::default();
        assert_eq!(p.push(agent("a", 1)), 0);
        assert_eq!(p.push(run_change("r1", "a", "running")), 0);
        assert_eq!(
            p.push(Change::RemoveAgentsExcept {
                ids: vec!["b".into()]
            }),
            0
        );
        assert_eq!(p.push(agent("a", 2)), 1);
        assert_eq!(p.push(run_change("r1", "a", "ok")), 1);
        assert_eq!(p.live, 3);
        let got = p.take();
        assert_eq!(
            got,
            vec![
                Change::RemoveAgentsExcept {
                    ids: vec!["b".into()]
                },
                agent("a", 2),
                run_change("r1", "a", "ok"),
            ]
        );
        assert_eq!(p.live, 0);
        assert!(p.take().is_empty());
    }

    #[test]
    fn coalesced_and_sequential_application_agree() {
        let seq = vec![
            agent("a", 1),
            agent("b", 1),
            run_change("r1", "a", "running"),
            Change::RemoveAgentsExcept {
                ids: vec!["b".into()],
            },
            agent("a", 2),
            run_change("r1", "a", "ok"),
            agent("b", 3),
        ];
        let d1 = tempfile::tempdir().unwrap();
        let mut one = Store::open(d1.path()).unwrap();
        for c in &seq {
            one.apply(std::slice::from_ref(c)).unwrap();
        }
        let d2 = tempfile::tempdir().unwrap();
        let mut two = Store::open(d2.path()).unwrap();
        let mut p = Pending::default();
        for c in seq {
            p.push(c);
        }
        two.apply(&p.take()).unwrap();
        assert_eq!(one.load_agents().unwrap(), two.load_agents().unwrap());
        assert_eq!(
            one.load_runs("a", 10).unwrap(),
            two.load_runs("a", 10).unwrap()
        );
    }
}
