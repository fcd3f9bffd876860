//! The pool's state machine: tasks, workers and phases in, effects out.
//!
//! Every worker has its own channel, and a worker answers its tasks in the
//! order it got them, so the parent always knows which tasks each worker
//! holds and which one it is running (the oldest unanswered). That is what
//! CPython's shared queues cannot know, and why its pool hangs when a
//! worker dies mid-task (bpo-22393). Here, when a worker dies, the task it
//! was running fails with [`PoolError::WorkerDied`] and the worker's exit
//! code, the tasks queued behind it go back to the head of the queue, a
//! replacement starts, and the pool goes on.
//!
//! [`Engine`] holds that state and makes every decision on it — which
//! worker gets which tasks and how many at once, what a death, a
//! `maxtasksperchild` exit, a broken initializer, `close` and `terminate`
//! do — and performs no I/O of its own: what it asks of the OS goes
//! through the [`Os`] trait, either at once for what never blocks (a
//! non-blocking `sendmsg`, a signal) or as an [`Effect`] the caller applies
//! after releasing the pool's lock (running a task's sink, starting and
//! reaping workers). The result thread (`driver`) polls the workers and
//! feeds the engine; the unit tests below feed it with a mock and fork
//! nothing, the way the fork server's `Handler` is tested.
//!
//! Callers dispatch their own tasks when a worker has room (one lock, one
//! non-blocking `sendmsg`: no thread hop on the way out); the result thread
//! dispatches the rest as answers free room. A worker may hold a small
//! window of tasks so short tasks stream without a round trip each; the
//! window shrinks to one when tasks are long ([`window_for`]), so a long
//! task never keeps queued work from an idle worker for long.
//!
//! Every task's sink is called exactly once: with its outcome, or with the
//! error that ended it (worker died, terminate, cancel, broken pool).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::error::PoolError;
use super::result::{RawItem, Sink, TaskOutcome};
use super::worker::{self, Head, Out};
use crate::channel::MAX_MSG_FDS;
use crate::job::Encoded;

/// Starting a worker failing this many times in a row breaks the pool.
const START_ATTEMPTS: u32 = 3;

/// Pause between two attempts to start a worker.
const START_BACKOFF: Duration = Duration::from_millis(50);

/// Largest message a burst of tasks is packed into (beyond it a message
/// would travel through a memfd).
const MESSAGE_BYTES: usize = 48 * 1024;

/// One unit of work: a frame for a worker and who gets the outcome.
pub(crate) struct Task {
    /// Unique in its pool; a worker's answer names it.
    pub(crate) id: u64,
    frame: Vec<u8>,
    fds: Vec<OwnedFd>,
    sink: Option<Sink>,
    sent_at: Option<Instant>,
    /// `mproc.pool_task`, open from submission to the result.
    span: tracing::Span,
}

impl Task {
    /// A task to send as `frame` with `fds`, completed through `sink`.
    pub(crate) fn new(id: u64, frame: Vec<u8>, fds: Vec<OwnedFd>, sink: Sink) -> Task {
        Task {
            id,
            frame,
            fds,
            sink: Some(sink),
            sent_at: None,
            span: tracing::debug_span!("mproc.pool_task", id, worker = tracing::field::Empty),
        }
    }

    /// Completes the task (runs its sink; never under the state lock).
    pub(crate) fn finish(mut self, outcome: TaskOutcome) {
        let ok = outcome.is_ok();
        tracing::debug!(parent: &self.span, ok, "pool task done");
        if let Some(sink) = self.sink.take() {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(outcome)));
            if r.is_err() {
                tracing::error!("a pool result handler panicked");
            }
        }
    }

    /// Drops the task without completing it (a refused submission).
    fn discard(mut self) {
        self.sink = None;
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        // Last resort (a panic unwound past the normal paths): never leave
        // a waiter hanging.
        if let Some(sink) = self.sink.take() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                sink(Err(PoolError::Terminated))
            }));
        }
    }
}

/// Where the pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    Closed,
    Terminating,
    Finished,
}

/// A signal the engine sends a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGTERM (`terminate`, a broken pool).
    Terminate,
    /// SIGKILL (a worker that sent a bad frame).
    Kill,
}

/// The OS effects of a pool, as the engine and [`apply`] ask for them.
///
/// `now`, `send` and `signal` never block and are called under the pool's
/// lock; `start`, `stop`, `reap` and `sleep` block and are only called
/// without it (by [`apply`], [`replenish`] and the pool's start).
pub(crate) trait Os {
    /// A running worker: its channel and its process.
    type Worker;
    /// The time, for task service times.
    fn now(&mut self) -> Instant;
    /// Starts a worker (its initializer frame queued first); its pid.
    fn start(&mut self) -> Result<(i32, Self::Worker), PoolError>;
    /// Sends one message to a worker without blocking (`WouldBlock` when
    /// its channel is full).
    fn send(&mut self, w: &Self::Worker, msg: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()>;
    /// Signals a worker, best effort.
    fn signal(&mut self, w: &Self::Worker, signal: Signal);
    /// Hangs up on every worker of `workers`, then waits for each to end
    /// (SIGKILL after a grace period).
    fn stop(&mut self, workers: Vec<Self::Worker>);
    /// Hangs up on a worker that died and waits for it; its exit code.
    fn reap(&mut self, w: Self::Worker) -> i32;
    /// Waits before trying again.
    fn sleep(&mut self, d: Duration);
}

/// What the caller does, in order, once it has released the pool's lock.
pub(crate) enum Effect<W> {
    /// Run the task's sink with this outcome.
    Complete(Task, TaskOutcome),
    /// Stop these workers (told to already) and wait for them.
    Stop(Vec<W>),
    /// Reap the worker that died with this pid, then report its exit code
    /// with [`Engine::on_worker_exit`].
    Reap(i32, W),
}

/// Effects in the order they are to be applied.
pub(crate) type Effects<W> = Vec<Effect<W>>;

/// What the result thread does next (see [`Engine::on_tick`]).
pub(crate) enum Tick<W> {
    /// Wait for answers, deaths and wake-ups.
    Serve,
    /// The pool is done: apply these, then call [`Engine::finish`].
    Finish(Effects<W>),
}

/// What the result thread read in one round: messages by worker pid, and
/// the workers whose channel closed or whose sentinel fired.
#[derive(Default)]
pub(crate) struct Inbox {
    /// Messages, by the pid of the worker that sent them, in reading order.
    pub(crate) msgs: Vec<(i32, Encoded)>,
    /// Pids of the workers that hung up or ended.
    pub(crate) dead: Vec<i32>,
}

struct Worker<W> {
    os: W,
    pid: i32,
    inflight: VecDeque<Task>,
    sent: u64,
    blocked: bool,
    last_reply: Instant,
}

/// The pool's whole state, and every decision on it.
pub(crate) struct Engine<W> {
    phase: Phase,
    pending: VecDeque<Task>,
    workers: Vec<Worker<W>>,
    /// Workers that died, with the tasks they held, until reaped.
    dying: Vec<(i32, VecDeque<Task>)>,
    broken: Option<String>,
    avg_service_ns: Option<u64>,
    processes: usize,
    maxtasks: Option<u64>,
    start_failures: u32,
}

/// Tasks a worker may hold at once, given the mean task time so far.
pub(crate) fn window_for(avg_service_ns: Option<u64>) -> usize {
    match avg_service_ns {
        None => 2,
        Some(n) if n < 100_000 => 32,
        Some(n) if n < 1_000_000 => 4,
        Some(n) if n < 10_000_000 => 2,
        Some(_) => 1,
    }
}

/// Reads every item outcome out of a `Done` frame.
pub(crate) fn parse_done(
    items: Vec<Out>,
    payload: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<TaskOutcome, String> {
    let lens = items.iter().filter_map(|o| match o {
        Out::Ok { len, nfds } => Some((*len, *nfds)),
        Out::Panicked { .. } => None,
    });
    let mut parts = worker::split_items(lens, payload, fds)?.into_iter();
    let mut out: Vec<RawItem> = Vec::with_capacity(items.len());
    for o in items {
        match o {
            Out::Ok { .. } => {
                let (b, f) = parts.next().ok_or("missing item payload")?;
                out.push(Ok((b.to_vec(), f)));
            }
            Out::Panicked { message } => out.push(Err(message)),
        }
    }
    Ok(Ok(out))
}

impl<W> Engine<W> {
    /// A running pool of no workers yet, to keep at `processes`.
    pub(crate) fn new(processes: usize, maxtasks: Option<u64>) -> Engine<W> {
        Engine {
            phase: Phase::Running,
            pending: VecDeque::new(),
            workers: Vec::new(),
            dying: Vec::new(),
            broken: None,
            avg_service_ns: None,
            processes,
            maxtasks,
            start_failures: 0,
        }
    }

    /// Where the pool is in its life.
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// The live workers, by pid.
    pub(crate) fn workers(&self) -> impl Iterator<Item = (i32, &W)> {
        self.workers.iter().map(|w| (w.pid, &w.os))
    }

    /// Whether an answer is typically tens of µs away (a task or two in
    /// flight, nothing queued): then the result thread polls without
    /// sleeping for a moment first.
    pub(crate) fn expects_answer_soon(&self) -> bool {
        let inflight: usize = self.workers.iter().map(|w| w.inflight.len()).sum();
        (1..=2).contains(&inflight) && self.pending.is_empty()
    }

    /// `Ok` while the pool takes tasks.
    pub(crate) fn check_running(&self) -> Result<(), PoolError> {
        match (&self.broken, self.phase) {
            (Some(b), _) => Err(PoolError::Broken(b.clone())),
            (None, Phase::Running) => Ok(()),
            (None, _) => Err(PoolError::NotRunning),
        }
    }

    /// Queues tasks and dispatches what fits now.
    ///
    /// # Errors
    /// [`PoolError::NotRunning`] after `close`/`terminate`,
    /// [`PoolError::Broken`] for a broken pool; the tasks are then dropped
    /// without completing.
    pub(crate) fn on_submit<O: Os<Worker = W>>(
        &mut self,
        os: &mut O,
        tasks: impl IntoIterator<Item = Task>,
    ) -> Result<Effects<W>, PoolError> {
        if let Err(e) = self.check_running() {
            tasks.into_iter().for_each(Task::discard);
            return Err(e);
        }
        self.pending.extend(tasks);
        Ok(self.dispatch(os))
    }

    /// Python's `close()`: no new tasks; workers exit once all are done.
    pub(crate) fn on_close(&mut self) {
        if self.phase == Phase::Running {
            self.phase = Phase::Closed;
        }
    }

    /// Python's `terminate()`: the result thread stops the workers at its
    /// next tick.
    pub(crate) fn on_terminate(&mut self) {
        if matches!(self.phase, Phase::Running | Phase::Closed) {
            self.phase = Phase::Terminating;
        }
    }

    /// Cancels task `id` if it is still queued.
    pub(crate) fn on_cancel(&mut self, id: u64) -> Option<Effect<W>> {
        let pos = self.pending.iter().position(|t| t.id == id)?;
        let task = self.pending.remove(pos)?;
        Some(Effect::Complete(task, Err(PoolError::Cancelled)))
    }

    /// Cancels every queued task.
    pub(crate) fn on_cancel_pending(&mut self) -> Effects<W> {
        let tasks = std::mem::take(&mut self.pending);
        tasks
            .into_iter()
            .map(|t| Effect::Complete(t, Err(PoolError::Cancelled)))
            .collect()
    }

    /// The result thread's check before each wait: is the pool done?
    /// Terminating (or finished): stop everything now. Closed with nothing
    /// left to run: stop the workers.
    pub(crate) fn on_tick<O: Os<Worker = W>>(&mut self, os: &mut O) -> Tick<W> {
        match self.phase {
            Phase::Terminating | Phase::Finished => Tick::Finish(self.terminate_all(os)),
            Phase::Closed
                if self.pending.is_empty()
                    && self.workers.iter().all(|w| w.inflight.is_empty()) =>
            {
                let mut out = Vec::new();
                self.stop_workers(os, None, &mut out);
                Tick::Finish(out)
            }
            _ => Tick::Serve,
        }
    }

    /// Every worker stopped: `join` may return.
    pub(crate) fn finish(&mut self) {
        self.phase = Phase::Finished;
    }

    /// Stops every worker (a stop frame, no signal), as when a pool that
    /// cannot start all its workers gives up.
    pub(crate) fn stop_all<O: Os<Worker = W>>(&mut self, os: &mut O) -> Effects<W> {
        let mut out = Vec::new();
        self.stop_workers(os, None, &mut out);
        out
    }

    /// Stops everything now: SIGTERM and a stop frame to every worker;
    /// every unfinished task fails with [`PoolError::Terminated`].
    pub(crate) fn terminate_all<O: Os<Worker = W>>(&mut self, os: &mut O) -> Effects<W> {
        self.phase = Phase::Terminating;
        let mut out = Vec::new();
        self.stop_workers(os, Some(Signal::Terminate), &mut out);
        let dying = std::mem::take(&mut self.dying);
        let stranded = dying.into_iter().flat_map(|(_, tasks)| tasks);
        for t in stranded.chain(std::mem::take(&mut self.pending)) {
            out.push(Effect::Complete(t, Err(PoolError::Terminated)));
        }
        out
    }

    /// Tells every worker to stop (after `signal`, if any); their
    /// unanswered tasks fail with [`PoolError::Terminated`].
    fn stop_workers<O: Os<Worker = W>>(
        &mut self,
        os: &mut O,
        signal: Option<Signal>,
        out: &mut Effects<W>,
    ) {
        let workers = std::mem::take(&mut self.workers);
        if let Some(s) = signal {
            workers.iter().for_each(|w| os.signal(&w.os, s));
        }
        // A stop frame, then hang up: either ends the worker's loop.
        let stop = worker::frame(&Head::Stop, &[]);
        let mut handles = Vec::with_capacity(workers.len());
        for w in workers {
            if let Ok(f) = &stop {
                let _ = os.send(&w.os, f, &[]);
            }
            for t in w.inflight {
                out.push(Effect::Complete(t, Err(PoolError::Terminated)));
            }
            handles.push(w.os);
        }
        if !handles.is_empty() {
            out.push(Effect::Stop(handles));
        }
    }

    /// Takes in one round of what the workers sent and which of them
    /// ended: completes the answered tasks, kills a worker that sent a bad
    /// frame, hands the dead to be reaped, and either dispatches into the
    /// room freed or, when an initializer failed, breaks the pool.
    pub(crate) fn on_inbox<O: Os<Worker = W>>(&mut self, os: &mut O, inbox: Inbox) -> Effects<W> {
        let now = os.now();
        let mut out = Vec::new();
        let mut dead = inbox.dead;
        for (pid, (bytes, fds)) in inbox.msgs {
            let Some(at) = self.workers.iter().position(|w| w.pid == pid) else {
                continue;
            };
            if let Err(e) = self.on_message(at, &bytes, fds, now, &mut out) {
                tracing::error!(pid, error = %e, "pool: bad frame from a worker");
                os.signal(&self.workers[at].os, Signal::Kill);
                if !dead.contains(&pid) {
                    dead.push(pid);
                }
            }
        }
        let mut died = Vec::new();
        for pid in &dead {
            if let Some(pos) = self.workers.iter().position(|w| w.pid == *pid) {
                died.push(self.workers.remove(pos));
            }
        }
        if let Some(b) = self.broken.clone() {
            self.workers.append(&mut died);
            self.break_pool(os, &b, &mut out);
        } else {
            self.dispatch_into(os, &mut out);
            for w in died {
                self.dying.push((w.pid, w.inflight));
                out.push(Effect::Reap(w.pid, w.os));
            }
        }
        out
    }

    /// One message from the worker at `at`: its frames, in order.
    fn on_message(
        &mut self,
        at: usize,
        bytes: &[u8],
        fds: Vec<OwnedFd>,
        now: Instant,
        out: &mut Effects<W>,
    ) -> Result<(), String> {
        let mut fds = fds.into_iter();
        for f in worker::frames(bytes) {
            let (head, payload) = f.and_then(worker::unframe)?;
            let mine: Vec<OwnedFd> = fds.by_ref().take(head.nfds()).collect();
            match head {
                Head::Done { id, items } => {
                    let task = self.on_answer(at, id, now)?;
                    let outcome = parse_done(items, payload, mine)
                        .unwrap_or_else(|e| Err(PoolError::Codec(e)));
                    out.push(Effect::Complete(task, outcome));
                }
                Head::InitFailed { message } => {
                    self.broken = Some(format!("a worker's initializer panicked: {message}"));
                }
                other => return Err(format!("unexpected frame {other:?}")),
            }
        }
        Ok(())
    }

    /// The worker at `at` answered task `id`, which must be its oldest.
    fn on_answer(&mut self, at: usize, id: u64, now: Instant) -> Result<Task, String> {
        let w = &mut self.workers[at];
        let task = match w.inflight.front() {
            Some(t) if t.id == id => w.inflight.pop_front(),
            _ => None,
        };
        let task = task.ok_or_else(|| format!("answer for task {id}, which it does not hold"))?;
        let began = task.sent_at.map_or(now, |s| s.max(w.last_reply));
        let took = now.saturating_duration_since(began).as_nanos() as u64;
        w.last_reply = now;
        w.blocked = false;
        self.avg_service_ns = Some(match self.avg_service_ns {
            None => took,
            Some(a) => a - a / 8 + took / 8,
        });
        Ok(task)
    }

    /// A worker's initializer failed: every task fails with
    /// [`PoolError::Broken`], every worker is terminated.
    fn break_pool<O: Os<Worker = W>>(&mut self, os: &mut O, why: &str, out: &mut Effects<W>) {
        let held = self.workers.iter_mut().flat_map(|w| w.inflight.drain(..));
        let tasks: Vec<Task> = held.chain(self.pending.drain(..)).collect();
        for t in tasks {
            out.push(Effect::Complete(t, Err(PoolError::Broken(why.to_string()))));
        }
        self.stop_workers(os, Some(Signal::Terminate), out);
    }

    /// The worker `pid` that died has been reaped: its running task fails
    /// with [`PoolError::WorkerDied`], the tasks queued behind it go back
    /// to the head of the queue.
    pub(crate) fn on_worker_exit(&mut self, pid: i32, exitcode: i32) -> Effects<W> {
        tracing::debug!(pid, exitcode, "pool worker ended");
        let Some(pos) = self.dying.iter().position(|d| d.0 == pid) else {
            return Vec::new();
        };
        let (_, inflight) = self.dying.swap_remove(pos);
        let mut out = Vec::new();
        if let Some(t) = blame_and_requeue(inflight, &mut self.pending) {
            out.push(Effect::Complete(
                t,
                Err(PoolError::WorkerDied { pid, exitcode }),
            ));
        }
        out
    }

    /// How many workers to start now.
    pub(crate) fn workers_to_start(&self) -> usize {
        workers_to_start(
            self.phase,
            !self.pending.is_empty(),
            self.broken.is_some(),
            self.workers.len(),
            self.processes,
        )
    }

    /// Whether the pool can no longer run tasks.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// A worker started: it joins the pool and gets work.
    pub(crate) fn on_started<O: Os<Worker = W>>(
        &mut self,
        os: &mut O,
        pid: i32,
        w: W,
    ) -> Effects<W> {
        tracing::debug!(pid, "pool worker started");
        self.start_failures = 0;
        self.workers.push(Worker {
            os: w,
            pid,
            inflight: VecDeque::new(),
            sent: 0,
            blocked: false,
            last_reply: os.now(),
        });
        self.dispatch(os)
    }

    /// A worker could not be started; after [`START_ATTEMPTS`] in a row the
    /// pool is broken: queued tasks fail, workers stop.
    pub(crate) fn on_start_failed<O: Os<Worker = W>>(
        &mut self,
        os: &mut O,
        e: &PoolError,
    ) -> Effects<W> {
        self.start_failures += 1;
        tracing::warn!(error = %e, "pool: could not start a worker");
        let mut out = Vec::new();
        if self.start_failures >= START_ATTEMPTS {
            self.broken = Some(format!("cannot start workers: {e}"));
            for t in self.pending.drain(..) {
                out.push(Effect::Complete(t, Err(PoolError::Broken(e.to_string()))));
            }
            self.stop_workers(os, None, &mut out);
        }
        out
    }

    /// Sends queued tasks to workers with room.
    pub(crate) fn dispatch<O: Os<Worker = W>>(&mut self, os: &mut O) -> Effects<W> {
        let mut out = Vec::new();
        self.dispatch_into(os, &mut out);
        out
    }

    /// Sends queued tasks to workers with room; tasks that can never be
    /// sent complete with their error.
    ///
    /// Tasks go to the least loaded worker first; the tasks one worker gets
    /// in one call travel in as few messages as fit ([`MESSAGE_BYTES`], the
    /// fd limit), so a burst costs one `sendmsg` per worker, not one per
    /// task.
    fn dispatch_into<O: Os<Worker = W>>(&mut self, os: &mut O, out: &mut Effects<W>) {
        if self.pending.is_empty()
            || self.broken.is_some()
            || matches!(self.phase, Phase::Terminating | Phase::Finished)
        {
            return;
        }
        let batches = self.plan();
        let mut back = Vec::new();
        for (i, batch) in batches.into_iter().enumerate() {
            if !batch.is_empty() {
                send_batch(os, &mut self.workers[i], batch, &mut back, out);
            }
        }
        if !back.is_empty() {
            back.sort_by_key(|t: &Task| t.id);
            for t in back.into_iter().rev() {
                self.pending.push_front(t);
            }
        }
    }

    /// Takes from the queue the tasks each worker has room for.
    fn plan(&mut self) -> Vec<Vec<Task>> {
        let window = window_for(self.avg_service_ns);
        let maxtasks = self.maxtasks;
        let n = self.workers.len();
        let mut batches: Vec<Vec<Task>> = (0..n).map(|_| Vec::new()).collect();
        while let Some(task) = self.pending.pop_front() {
            let best = (0..n)
                .filter(|&i| {
                    let w = &self.workers[i];
                    let load = w.inflight.len() + batches[i].len();
                    !w.blocked
                        && load < window
                        && maxtasks.is_none_or(|m| w.sent + (batches[i].len() as u64) < m)
                })
                .min_by_key(|&i| self.workers[i].inflight.len() + batches[i].len());
            match best {
                Some(i) => batches[i].push(task),
                None => {
                    self.pending.push_front(task);
                    break;
                }
            }
        }
        batches
    }
}

/// Sends `batch` to `w` in as few messages as fit; on a full channel the
/// worker is blocked until it answers and the unsent tasks go to `back`.
fn send_batch<O: Os>(
    os: &mut O,
    w: &mut Worker<O::Worker>,
    batch: Vec<Task>,
    back: &mut Vec<Task>,
    out: &mut Effects<O::Worker>,
) {
    let mut rest = batch.into_iter().peekable();
    while rest.peek().is_some() {
        let group = next_group(&mut rest);
        let sent = send_group(os, &w.os, &group);
        match sent {
            Ok(()) => {
                let now = os.now();
                for mut t in group {
                    t.sent_at = Some(now);
                    t.span.record("worker", w.pid);
                    w.sent += 1;
                    w.inflight.push_back(t);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                ) =>
            {
                // Full, or the worker is dying (the result thread will see).
                w.blocked = true;
                back.extend(group);
                back.extend(rest);
                return;
            }
            Err(e) => {
                let e = PoolError::Codec(e.to_string());
                out.extend(
                    group
                        .into_iter()
                        .map(|t| Effect::Complete(t, Err(e.clone()))),
                );
            }
        }
    }
}

/// Sends the frames of `group` to `w` as one message.
fn send_group<O: Os>(os: &mut O, w: &O::Worker, group: &[Task]) -> io::Result<()> {
    let fds: Vec<BorrowedFd<'_>> = group
        .iter()
        .flat_map(|t| t.fds.iter().map(|f| f.as_fd()))
        .collect();
    if let [one] = group {
        return os.send(w, &one.frame, &fds);
    }
    let bytes = group.iter().map(|t| t.frame.len()).sum();
    let mut body = Vec::with_capacity(bytes);
    for t in group {
        body.extend_from_slice(&t.frame);
    }
    os.send(w, &body, &fds)
}

/// The tasks of one message: as many as fit.
fn next_group(rest: &mut std::iter::Peekable<std::vec::IntoIter<Task>>) -> Vec<Task> {
    let mut group = Vec::new();
    let (mut bytes, mut nfds) = (0usize, 0usize);
    while let Some(t) = rest.peek() {
        let fits = group.is_empty()
            || (bytes + t.frame.len() <= MESSAGE_BYTES && nfds + t.fds.len() <= MAX_MSG_FDS);
        if !fits {
            break;
        }
        bytes += t.frame.len();
        nfds += t.fds.len();
        if let Some(t) = rest.next() {
            group.push(t);
        }
    }
    group
}

/// The task a dead worker was running — its oldest unanswered one, since a
/// worker answers in order — is returned to be blamed; the tasks queued
/// behind it never started and go back to the head of `queue`, in order.
fn blame_and_requeue<T>(mut inflight: VecDeque<T>, queue: &mut VecDeque<T>) -> Option<T> {
    let running = inflight.pop_front();
    while let Some(t) = inflight.pop_back() {
        queue.push_front(t);
    }
    running
}

/// How many workers to start now: up to strength while the pool runs, or
/// while it is closed with work still queued; none once broken.
fn workers_to_start(phase: Phase, queued: bool, broken: bool, have: usize, want: usize) -> usize {
    let needed = phase == Phase::Running || (phase == Phase::Closed && queued);
    if !needed || broken {
        0
    } else {
        want.saturating_sub(have)
    }
}

/// Locks the engine (a panic elsewhere does not poison the pool).
pub(crate) fn lock<W>(engine: &Mutex<Engine<W>>) -> MutexGuard<'_, Engine<W>> {
    engine.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Applies effects in order, outside the engine's lock: runs sinks, stops
/// and reaps workers (reporting each death back to the engine).
pub(crate) fn apply<O: Os>(
    engine: &Mutex<Engine<O::Worker>>,
    os: &mut O,
    effects: Effects<O::Worker>,
) {
    for e in effects {
        match e {
            Effect::Complete(t, outcome) => t.finish(outcome),
            Effect::Stop(workers) => os.stop(workers),
            Effect::Reap(pid, w) => {
                let exitcode = os.reap(w);
                let blamed = lock(engine).on_worker_exit(pid, exitcode);
                apply(engine, os, blamed);
            }
        }
    }
}

/// Starts workers until the pool is at strength (or broken), each getting
/// work as it joins.
pub(crate) fn replenish<O: Os>(engine: &Mutex<Engine<O::Worker>>, os: &mut O) {
    while lock(engine).workers_to_start() > 0 {
        match os.start() {
            Ok((pid, w)) => {
                let effects = lock(engine).on_started(os, pid, w);
                apply(engine, os, effects);
            }
            Err(e) => {
                let (effects, retry) = {
                    let mut m = lock(engine);
                    (m.on_start_failed(os, &e), !m.is_broken())
                };
                apply(engine, os, effects);
                if retry {
                    os.sleep(START_BACKOFF);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
