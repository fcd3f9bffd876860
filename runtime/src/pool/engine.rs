//! The parent side of a pool: task queue, dispatch, and the result thread.
//!
//! Every worker has its own channel, and a worker answers its tasks in the
//! order it got them, so the parent always knows which tasks each worker
//! holds and which one it is running (the oldest unanswered). That is what
//! CPython's shared queues cannot know, and why its pool hangs when a
//! worker dies mid-task (bpo-22393). Here the result thread polls every
//! worker's channel and sentinel (pidfd); when a worker dies it fails the
//! task it was running with [`PoolError::WorkerDied`] and the worker's exit
//! code, puts the tasks queued behind it back at the head of the queue,
//! starts a replacement, and goes on.
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
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::error::PoolError;
use super::result::{RawItem, Sink, TaskOutcome};
use super::worker::{self, Head, Out, WorkerArgs};
use crate::channel::{Channel, MAX_MSG_FDS, RecvError};
use crate::context::{Context, StartMethod};
use crate::process::Process;

/// How long a worker that hung up may take to be reaped before SIGKILL.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// How long the result thread polls without sleeping when an answer is
/// expected soon.
const SPIN: Duration = Duration::from_micros(50);

/// Starting a worker failing this many times in a row breaks the pool.
const START_ATTEMPTS: u32 = 3;

/// One unit of work: a frame for a worker and who gets the outcome.
pub(crate) struct Task {
    pub(crate) id: u64,
    frame: Vec<u8>,
    fds: Vec<OwnedFd>,
    sink: Option<Sink>,
    sent_at: Option<Instant>,
    /// `mproc.pool_task`, open from submission to the result.
    span: tracing::Span,
}

impl Task {
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

struct Worker {
    chan: Arc<Channel>,
    sentinel: Option<Arc<OwnedFd>>,
    proc: Process<()>,
    pid: i32,
    inflight: VecDeque<Task>,
    sent: u64,
    blocked: bool,
    last_reply: Instant,
}

/// Where the pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    Closed,
    Terminating,
    Finished,
}

pub(crate) struct State {
    pub(crate) phase: Phase,
    pending: VecDeque<Task>,
    workers: Vec<Worker>,
    broken: Option<String>,
    avg_service_ns: Option<u64>,
}

/// The initializer frame every new worker gets first.
pub(crate) struct InitSpec {
    pub(crate) frame: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

pub(crate) struct Config {
    pub(crate) ctx: Context,
    pub(crate) processes: usize,
    pub(crate) maxtasks: Option<u64>,
    pub(crate) init: Option<InitSpec>,
}

/// What the pool handle, its results and the result thread share.
pub(crate) struct Shared {
    state: Mutex<State>,
    finished: Condvar,
    wake: UnixStream,
    next_id: AtomicU64,
    pub(crate) cfg: Config,
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

static WORKER_COUNTER: AtomicU64 = AtomicU64::new(0);

fn start_worker(cfg: &Config) -> Result<Worker, PoolError> {
    let (mine, theirs) =
        forkserver::fdpass::seqpacket_pair().map_err(|e| PoolError::Broken(e.to_string()))?;
    let chan = Channel::from_fd(mine);
    if let Some(init) = &cfg.init {
        let fds: Vec<BorrowedFd<'_>> = init.fds.iter().map(|f| f.as_fd()).collect();
        chan.send(&init.frame, &fds)
            .map_err(|e| PoolError::Broken(e.to_string()))?;
    }
    let args = WorkerArgs {
        chan: theirs,
        maxtasks: cfg.maxtasks,
        orphan_check: cfg.ctx.start_method() == StartMethod::Fork,
    };
    let n = WORKER_COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
    let method = cfg.ctx.start_method();
    let prefix = match method {
        StartMethod::Fork => "ForkPoolWorker",
        StartMethod::Spawn => "SpawnPoolWorker",
        StartMethod::ForkServer => "ForkServerPoolWorker",
    };
    let proc = cfg
        .ctx
        .process(worker::worker_main, args)
        .name(format!("{prefix}-{n}"))
        .daemon(true)
        .start()?;
    let sentinel = proc
        .sentinel()
        .and_then(|s| s.try_clone_to_owned().ok())
        .map(Arc::new);
    let pid = proc.pid();
    tracing::debug!(pid, "pool worker started");
    Ok(Worker {
        chan: Arc::new(chan),
        sentinel,
        proc,
        pid,
        inflight: VecDeque::new(),
        sent: 0,
        blocked: false,
        last_reply: Instant::now(),
    })
}

/// Waits for a worker that has ended (or is being stopped) and returns its
/// exit code; SIGKILL if it does not end within the grace period.
fn reap(proc: &mut Process<()>) -> i32 {
    for attempt in 0..2 {
        match proc.join_timeout(REAP_GRACE) {
            Err(crate::Error::Timeout) if attempt == 0 => {
                let _ = proc.kill();
            }
            Err(crate::Error::Timeout) => break,
            Ok(()) => return proc.exitcode().unwrap_or(0),
            Err(crate::Error::Exited { exitcode }) => return exitcode,
            Err(e) => {
                tracing::debug!(error = %e, "reaping a pool worker");
                return proc.exitcode().unwrap_or(-1);
            }
        }
    }
    proc.exitcode().unwrap_or(-libc::SIGKILL)
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

impl Shared {
    /// Starts the workers; the caller starts the result thread.
    pub(crate) fn start(cfg: Config) -> Result<(Arc<Shared>, UnixStream), PoolError> {
        let (wake, wake_rx) = UnixStream::pair().map_err(|e| PoolError::Broken(e.to_string()))?;
        wake.set_nonblocking(true)
            .and_then(|()| wake_rx.set_nonblocking(true))
            .map_err(|e| PoolError::Broken(e.to_string()))?;
        let mut workers = Vec::with_capacity(cfg.processes);
        for _ in 0..cfg.processes {
            match start_worker(&cfg) {
                Ok(w) => workers.push(w),
                Err(e) => {
                    stop_workers(workers);
                    return Err(e);
                }
            }
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                phase: Phase::Running,
                pending: VecDeque::new(),
                workers,
                broken: None,
                avg_service_ns: None,
            }),
            finished: Condvar::new(),
            wake,
            next_id: AtomicU64::new(1),
            cfg,
        });
        Ok((shared, wake_rx))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh task id.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn wake(&self) {
        let _ = (&self.wake).write(&[1]);
    }

    /// Queues tasks and dispatches what fits now.
    ///
    /// # Errors
    /// [`PoolError::NotRunning`] after `close`/`terminate`,
    /// [`PoolError::Broken`] for a broken pool; the tasks are then dropped
    /// without completing.
    pub(crate) fn submit(&self, tasks: impl IntoIterator<Item = Task>) -> Result<(), PoolError> {
        let mut st = self.lock();
        let refused = if let Some(b) = &st.broken {
            Some(PoolError::Broken(b.clone()))
        } else if st.phase != Phase::Running {
            Some(PoolError::NotRunning)
        } else {
            None
        };
        if let Some(e) = refused {
            drop(st);
            tasks.into_iter().for_each(Task::discard);
            return Err(e);
        }
        st.pending.extend(tasks);
        let failed = dispatch(&mut st, self.cfg.maxtasks);
        drop(st);
        for (t, e) in failed {
            t.finish(Err(e));
        }
        Ok(())
    }

    /// `Ok` while the pool takes tasks.
    pub(crate) fn check_running(&self) -> Result<(), PoolError> {
        let st = self.lock();
        match (&st.broken, st.phase) {
            (Some(b), _) => Err(PoolError::Broken(b.clone())),
            (None, Phase::Running) => Ok(()),
            (None, _) => Err(PoolError::NotRunning),
        }
    }

    /// Python's `close()`: no new tasks; workers exit once all are done.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        if st.phase == Phase::Running {
            st.phase = Phase::Closed;
        }
        drop(st);
        self.wake();
    }

    /// Python's `terminate()`: stop the workers now; unfinished tasks fail
    /// with [`PoolError::Terminated`].
    pub(crate) fn terminate(&self) {
        let mut st = self.lock();
        if matches!(st.phase, Phase::Running | Phase::Closed) {
            st.phase = Phase::Terminating;
        }
        drop(st);
        self.wake();
    }

    /// Cancels a task still in the queue.
    pub(crate) fn cancel(&self, id: u64) -> bool {
        let mut st = self.lock();
        let Some(pos) = st.pending.iter().position(|t| t.id == id) else {
            return false;
        };
        let task = st.pending.remove(pos);
        drop(st);
        if let Some(t) = task {
            t.finish(Err(PoolError::Cancelled));
        }
        true
    }

    /// Cancels every task still in the queue.
    pub(crate) fn cancel_pending(&self) {
        let tasks = std::mem::take(&mut self.lock().pending);
        for t in tasks {
            t.finish(Err(PoolError::Cancelled));
        }
        self.wake();
    }

    /// Waits until the result thread has stopped every worker.
    pub(crate) fn wait_finished(&self, deadline: Option<Instant>) -> bool {
        let mut st = self.lock();
        while st.phase != Phase::Finished {
            st = match deadline {
                None => self
                    .finished
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.finished
                        .wait_timeout(st, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        true
    }

    /// The worker pids (Python's `[p.pid for p in pool._pool]`).
    pub(crate) fn pids(&self) -> Vec<i32> {
        self.lock().workers.iter().map(|w| w.pid).collect()
    }
}

/// Sends queued tasks to workers with room; returns tasks that can never
/// be sent (to be failed outside the lock).
///
/// Tasks go to the least loaded worker first; the tasks one worker gets in
/// one call travel in as few messages as fit ([`MESSAGE_BYTES`], the fd
/// limit), so a burst costs one `sendmsg` per worker, not one per task.
fn dispatch(st: &mut State, maxtasks: Option<u64>) -> Vec<(Task, PoolError)> {
    let mut failed = Vec::new();
    if st.pending.is_empty()
        || st.broken.is_some()
        || matches!(st.phase, Phase::Terminating | Phase::Finished)
    {
        return failed;
    }
    let window = window_for(st.avg_service_ns);
    let n = st.workers.len();
    let mut batches: Vec<Vec<Task>> = (0..n).map(|_| Vec::new()).collect();
    while let Some(task) = st.pending.pop_front() {
        let best = (0..n)
            .filter(|&i| {
                let w = &st.workers[i];
                let load = w.inflight.len() + batches[i].len();
                !w.blocked
                    && load < window
                    && maxtasks.is_none_or(|m| w.sent + (batches[i].len() as u64) < m)
            })
            .min_by_key(|&i| st.workers[i].inflight.len() + batches[i].len());
        match best {
            Some(i) => batches[i].push(task),
            None => {
                st.pending.push_front(task);
                break;
            }
        }
    }
    let mut back = Vec::new();
    for (i, batch) in batches.into_iter().enumerate() {
        if !batch.is_empty() {
            send_batch(&mut st.workers[i], batch, &mut back, &mut failed);
        }
    }
    if !back.is_empty() {
        back.sort_by_key(|t: &Task| t.id);
        for t in back.into_iter().rev() {
            st.pending.push_front(t);
        }
    }
    failed
}

/// Largest message a burst of tasks is packed into (beyond it a message
/// would travel through a memfd).
const MESSAGE_BYTES: usize = 48 * 1024;

fn send_batch(
    w: &mut Worker,
    batch: Vec<Task>,
    back: &mut Vec<Task>,
    failed: &mut Vec<(Task, PoolError)>,
) {
    let mut rest = batch.into_iter().peekable();
    while rest.peek().is_some() {
        // One message: as many tasks as fit.
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
        let sent = {
            let fds: Vec<BorrowedFd<'_>> = group
                .iter()
                .flat_map(|t| t.fds.iter().map(|f| f.as_fd()))
                .collect();
            if group.len() == 1 {
                w.chan.send_opt(&group[0].frame, &fds, true)
            } else {
                let mut body = Vec::with_capacity(bytes);
                for t in &group {
                    body.extend_from_slice(&t.frame);
                }
                w.chan.send_opt(&body, &fds, true)
            }
        };
        match sent {
            Ok(()) => {
                let now = Instant::now();
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
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionReset
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
                failed.extend(group.into_iter().map(|t| (t, e.clone())));
            }
        }
    }
}

fn stop_workers(workers: Vec<Worker>) {
    let mut procs = Vec::new();
    for w in workers {
        // A stop frame, then hang up: either ends the worker's loop.
        let stop = worker::frame(&Head::Stop, &[]);
        if let Ok(f) = stop {
            let _ = w.chan.send_opt(&f, &[], true);
        }
        for t in w.inflight {
            t.finish(Err(PoolError::Terminated));
        }
        drop(w.chan);
        procs.push(w.proc);
    }
    for mut p in procs {
        reap(&mut p);
    }
}

/// Body of the result thread.
pub(crate) fn run(shared: Arc<Shared>, wake_rx: UnixStream) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_loop(&shared, &wake_rx)));
    if r.is_err() {
        tracing::error!("the pool's result thread panicked; terminating the pool");
        terminate_all(&shared);
    }
}

fn finish_phase(shared: &Shared) {
    shared.lock().phase = Phase::Finished;
    shared.finished.notify_all();
}

fn terminate_all(shared: &Shared) {
    let (workers, pending) = {
        let mut st = shared.lock();
        st.phase = Phase::Terminating;
        (
            std::mem::take(&mut st.workers),
            std::mem::take(&mut st.pending),
        )
    };
    for w in &workers {
        let _ = w.proc.terminate();
    }
    stop_workers(workers);
    for t in pending {
        t.finish(Err(PoolError::Terminated));
    }
    finish_phase(shared);
}

struct Polled {
    chan: Arc<Channel>,
    sentinel: Option<Arc<OwnedFd>>,
    pid: i32,
}

fn run_loop(shared: &Shared, wake_rx: &UnixStream) {
    let mut start_failures = 0u32;
    loop {
        let light;
        let snapshot: Vec<Polled> = {
            let st = shared.lock();
            match st.phase {
                Phase::Terminating | Phase::Finished => {
                    drop(st);
                    terminate_all(shared);
                    return;
                }
                Phase::Closed
                    if st.pending.is_empty()
                        && st.workers.iter().all(|w| w.inflight.is_empty()) =>
                {
                    drop(st);
                    let workers = std::mem::take(&mut shared.lock().workers);
                    stop_workers(workers);
                    finish_phase(shared);
                    return;
                }
                _ => {}
            }
            let inflight: usize = st.workers.iter().map(|w| w.inflight.len()).sum();
            light = (1..=2).contains(&inflight) && st.pending.is_empty();
            st.workers
                .iter()
                .map(|w| Polled {
                    chan: w.chan.clone(),
                    sentinel: w.sentinel.clone(),
                    pid: w.pid,
                })
                .collect()
        };

        // Wait for an answer, a death or a wake-up.
        let mut readable = vec![false; snapshot.len()];
        let mut ended = vec![false; snapshot.len()];
        let woken;
        {
            let mut pfds = vec![PollFd::new(wake_rx.as_fd(), PollFlags::POLLIN)];
            let mut owner = Vec::new();
            for (i, p) in snapshot.iter().enumerate() {
                pfds.push(PollFd::new(p.chan.fd(), PollFlags::POLLIN));
                owner.push((i, false));
                if let Some(s) = &p.sentinel {
                    pfds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                    owner.push((i, true));
                }
            }
            // With a task or two in flight, an answer is typically tens of
            // µs away: poll without sleeping for a moment first, since a
            // sleep and wake-up of this thread costs about as much again.
            let mut ready = 0;
            if light {
                let until = Instant::now() + SPIN;
                loop {
                    ready = poll(&mut pfds, PollTimeout::ZERO).unwrap_or(0);
                    if ready > 0 || Instant::now() >= until {
                        break;
                    }
                    std::thread::yield_now();
                }
            }
            let polled = if ready > 0 {
                Ok(ready)
            } else {
                poll(&mut pfds, PollTimeout::from(500u16))
            };
            match polled {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::error!(error = %e, "pool: poll failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            woken = pfds[0].revents().is_some_and(|r| !r.is_empty());
            for (k, &(i, is_sentinel)) in owner.iter().enumerate() {
                let hit = pfds[k + 1].revents().is_some_and(|r| !r.is_empty());
                if hit && is_sentinel {
                    ended[i] = true;
                } else if hit {
                    readable[i] = true;
                }
            }
        }
        if woken {
            let mut drain = [0u8; 64];
            while matches!((&*wake_rx).read(&mut drain), Ok(n) if n > 0) {}
        }

        // Read everything that is there, without the lock.
        let mut msgs = Vec::new();
        let mut dead: Vec<i32> = Vec::new();
        for (i, p) in snapshot.iter().enumerate() {
            if !readable[i] && !ended[i] {
                continue;
            }
            let mut resets = 0;
            loop {
                match p.chan.try_recv() {
                    Ok(m) => msgs.push((p.pid, m)),
                    Err(RecvError::Timeout) => break,
                    Err(RecvError::Closed) => {
                        dead.push(p.pid);
                        break;
                    }
                    // The worker exited with tasks unread: the kernel reports
                    // that once, before the answers still queued; read on.
                    Err(RecvError::Io(e))
                        if e.kind() == std::io::ErrorKind::ConnectionReset && resets == 0 =>
                    {
                        resets += 1;
                    }
                    Err(e) => {
                        tracing::error!(pid = p.pid, error = ?e, "pool: bad frame from a worker");
                        dead.push(p.pid);
                        break;
                    }
                }
            }
            if ended[i] && !dead.contains(&p.pid) {
                dead.push(p.pid);
            }
        }
        drop(snapshot);

        // Apply under the lock; complete outside it.
        let mut done: Vec<(Task, TaskOutcome)> = Vec::new();
        let mut died: Vec<Worker> = Vec::new();
        let mut broken_now: Vec<Worker> = Vec::new();
        {
            let mut st = shared.lock();
            let now = Instant::now();
            for (pid, (bytes, fds)) in msgs {
                let st = &mut *st;
                let Some(w) = st.workers.iter_mut().find(|w| w.pid == pid) else {
                    continue;
                };
                let mut fds = fds.into_iter();
                let mut bad = None;
                for f in worker::frames(&bytes) {
                    let (head, payload) = match f.and_then(worker::unframe) {
                        Ok(x) => x,
                        Err(e) => {
                            bad = Some(e);
                            break;
                        }
                    };
                    let mine: Vec<OwnedFd> = fds.by_ref().take(head.nfds()).collect();
                    match head {
                        Head::Done { id, items } => {
                            if w.inflight.front().map(|t| t.id) != Some(id) {
                                bad = Some(format!("answer for task {id}, which it does not hold"));
                                break;
                            }
                            let Some(task) = w.inflight.pop_front() else {
                                break;
                            };
                            let began = task.sent_at.map_or(now, |s| s.max(w.last_reply));
                            let took = now.saturating_duration_since(began).as_nanos() as u64;
                            w.last_reply = now;
                            w.blocked = false;
                            st.avg_service_ns = Some(match st.avg_service_ns {
                                None => took,
                                Some(a) => a - a / 8 + took / 8,
                            });
                            let outcome = parse_done(items, payload, mine)
                                .unwrap_or_else(|e| Err(PoolError::Codec(e)));
                            done.push((task, outcome));
                        }
                        Head::InitFailed { message } => {
                            st.broken = Some(format!("a worker's initializer panicked: {message}"));
                        }
                        other => {
                            bad = Some(format!("unexpected frame {other:?}"));
                            break;
                        }
                    }
                }
                if let Some(e) = bad {
                    tracing::error!(pid, error = %e, "pool: bad frame from a worker");
                    let _ = w.proc.kill();
                    if !dead.contains(&pid) {
                        dead.push(pid);
                    }
                }
            }
            for pid in &dead {
                if let Some(pos) = st.workers.iter().position(|w| w.pid == *pid) {
                    died.push(st.workers.remove(pos));
                }
            }
            if let Some(b) = st.broken.clone() {
                broken_now = std::mem::take(&mut st.workers);
                broken_now.append(&mut died);
                for w in &mut broken_now {
                    for t in w.inflight.drain(..) {
                        done.push((t, Err(PoolError::Broken(b.clone()))));
                    }
                }
                for t in st.pending.drain(..) {
                    done.push((t, Err(PoolError::Broken(b.clone()))));
                }
            } else {
                for (t, e) in dispatch(&mut st, shared.cfg.maxtasks) {
                    done.push((t, Err(e)));
                }
            }
        }
        for (t, o) in done {
            t.finish(o);
        }
        if !broken_now.is_empty() {
            for w in &broken_now {
                let _ = w.proc.terminate();
            }
            stop_workers(broken_now);
        }

        // Blame the dead workers' running tasks; requeue the rest.
        let mut requeue: VecDeque<Task> = VecDeque::new();
        for mut w in died {
            drop(w.chan);
            let exitcode = reap(&mut w.proc);
            tracing::debug!(pid = w.pid, exitcode, "pool worker ended");
            let inflight = std::mem::take(&mut w.inflight);
            if let Some(t) = blame_and_requeue(inflight, &mut requeue) {
                t.finish(Err(PoolError::WorkerDied {
                    pid: w.pid,
                    exitcode,
                }));
            }
        }
        if !requeue.is_empty() {
            let mut st = shared.lock();
            while let Some(t) = requeue.pop_back() {
                st.pending.push_front(t);
            }
        }

        // Keep the pool at strength.
        loop {
            {
                let st = shared.lock();
                let n = workers_to_start(
                    st.phase,
                    !st.pending.is_empty(),
                    st.broken.is_some(),
                    st.workers.len(),
                    shared.cfg.processes,
                );
                if n == 0 {
                    break;
                }
            }
            match start_worker(&shared.cfg) {
                Ok(w) => {
                    start_failures = 0;
                    let mut st = shared.lock();
                    st.workers.push(w);
                    let failed = dispatch(&mut st, shared.cfg.maxtasks);
                    drop(st);
                    for (t, e) in failed {
                        t.finish(Err(e));
                    }
                }
                Err(e) => {
                    start_failures += 1;
                    tracing::warn!(error = %e, "pool: could not start a worker");
                    if start_failures >= START_ATTEMPTS {
                        let mut st = shared.lock();
                        st.broken = Some(format!("cannot start workers: {e}"));
                        let tasks: Vec<Task> = st.pending.drain(..).collect();
                        let workers = std::mem::take(&mut st.workers);
                        drop(st);
                        for t in tasks {
                            t.finish(Err(PoolError::Broken(e.to_string())));
                        }
                        stop_workers(workers);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        // Dispatch whatever was requeued to the survivors.
        let failed = dispatch(&mut shared.lock(), shared.cfg.maxtasks);
        for (t, e) in failed {
            t.finish(Err(e));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_worker_is_blamed_for_its_oldest_task_only() {
        let mut queue: VecDeque<u32> = [10, 11].into();
        let blamed = blame_and_requeue([3, 4, 5].into(), &mut queue);
        assert_eq!(blamed, Some(3));
        assert_eq!(queue, VecDeque::from([4, 5, 10, 11]));
        // An idle worker that died (or was recycled) is blamed for nothing.
        assert_eq!(blame_and_requeue(VecDeque::new(), &mut queue), None);
        assert_eq!(queue.len(), 4);
    }

    #[test]
    fn replacement_policy() {
        assert_eq!(workers_to_start(Phase::Running, false, false, 1, 4), 3);
        assert_eq!(workers_to_start(Phase::Running, true, true, 0, 4), 0);
        assert_eq!(workers_to_start(Phase::Closed, true, false, 1, 2), 1);
        assert_eq!(workers_to_start(Phase::Closed, false, false, 0, 2), 0);
        assert_eq!(workers_to_start(Phase::Terminating, true, false, 0, 2), 0);
        assert_eq!(workers_to_start(Phase::Running, false, false, 5, 2), 0);
    }

    #[test]
    fn window_shrinks_for_long_tasks() {
        assert_eq!(window_for(Some(10_000)), 32);
        assert_eq!(window_for(Some(500_000)), 4);
        assert_eq!(window_for(Some(50_000_000)), 1);
        assert!(window_for(None) <= 2);
    }
}
