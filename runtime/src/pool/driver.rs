//! The parent side of a pool in the OS: the shared handle, the real [`Os`]
//! and the result thread's loop.
//!
//! Every decision is the [`Engine`]'s; this module moves bytes and
//! processes. The result thread polls every worker's channel and sentinel
//! (pidfd) and a wake-up socket, reads what is there without the lock,
//! hands it to the engine under the lock, and applies the effects the
//! engine returns without it: sinks run, workers are reaped and started
//! outside the lock, so a caller submitting a task never waits behind a
//! fork or a `waitpid`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::engine::{self, Effects, Engine, Inbox, Os, Phase, Signal, Task, Tick};
use super::error::PoolError;
use super::worker::{self, WorkerArgs};
use crate::channel::{Channel, RecvError};
use crate::context::{Context, StartMethod};
use crate::job::Encoded;
use crate::process::Process;

/// How long a worker that hung up may take to be reaped before SIGKILL.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// How long one wait of the result thread lasts at most.
const POLL_TIMEOUT_MS: u16 = 500;

/// The initializer frame every new worker gets first.
pub(crate) struct InitSpec {
    /// A `Head::Init` frame.
    pub(crate) frame: Vec<u8>,
    /// The fds its arguments carry (each worker gets duplicates).
    pub(crate) fds: Vec<OwnedFd>,
}

/// How a pool starts its workers.
pub(crate) struct Config {
    /// The start method.
    pub(crate) ctx: Context,
    /// Workers to keep running.
    pub(crate) processes: usize,
    /// Python's `maxtasksperchild`.
    pub(crate) maxtasks: Option<u64>,
    /// The initializer, if any.
    pub(crate) init: Option<InitSpec>,
}

/// A worker process and the parent's end of its channel.
pub(crate) struct RealWorker {
    chan: Arc<Channel>,
    sentinel: Option<Arc<OwnedFd>>,
    proc: Process<()>,
}

/// The real [`Os`]: channels, `mproc` processes, signals.
struct RealOs<'a> {
    cfg: &'a Config,
}

static WORKER_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Os for RealOs<'_> {
    type Worker = RealWorker;

    fn now(&mut self) -> Instant {
        Instant::now()
    }

    fn start(&mut self) -> Result<(i32, RealWorker), PoolError> {
        let cfg = self.cfg;
        let (mine, theirs) =
            forkserver::fdpass::seqpacket_pair().map_err(|e| PoolError::Broken(e.to_string()))?;
        let chan = Channel::from_fd(mine);
        if let Some(init) = &cfg.init {
            let fds: Vec<BorrowedFd<'_>> = init.fds.iter().map(|f| f.as_fd()).collect();
            chan.send(&init.frame, &fds)
                .map_err(|e| PoolError::Broken(e.to_string()))?;
        }
        let method = cfg.ctx.start_method();
        let args = WorkerArgs {
            chan: theirs,
            maxtasks: cfg.maxtasks,
            orphan_check: method == StartMethod::Fork,
        };
        let n = WORKER_COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
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
        let chan = Arc::new(chan);
        Ok((
            proc.pid(),
            RealWorker {
                chan,
                sentinel,
                proc,
            },
        ))
    }

    fn send(&mut self, w: &RealWorker, msg: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        w.chan.send_opt(msg, fds, true)
    }

    fn signal(&mut self, w: &RealWorker, signal: Signal) {
        let _ = match signal {
            Signal::Terminate => w.proc.terminate(),
            Signal::Kill => w.proc.kill(),
        };
    }

    fn stop(&mut self, workers: Vec<RealWorker>) {
        // Hang up on all of them first, then wait for each.
        let procs: Vec<Process<()>> = workers.into_iter().map(|w| w.proc).collect();
        for mut p in procs {
            reap(&mut p);
        }
    }

    fn reap(&mut self, w: RealWorker) -> i32 {
        let RealWorker { chan, mut proc, .. } = w;
        drop(chan); // hang up first
        reap(&mut proc)
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
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

/// What the pool handle, its results and the result thread share.
pub(crate) struct Shared {
    engine: Mutex<Engine<RealWorker>>,
    finished: Condvar,
    wake: UnixStream,
    next_id: AtomicU64,
    /// The pool's configuration.
    pub(crate) cfg: Config,
}

impl Shared {
    /// Starts the workers; the caller starts the result thread.
    pub(crate) fn start(cfg: Config) -> Result<(Arc<Shared>, UnixStream), PoolError> {
        let (wake, wake_rx) = UnixStream::pair().map_err(|e| PoolError::Broken(e.to_string()))?;
        wake.set_nonblocking(true)
            .and_then(|()| wake_rx.set_nonblocking(true))
            .map_err(|e| PoolError::Broken(e.to_string()))?;
        let engine = Mutex::new(Engine::new(cfg.processes, cfg.maxtasks));
        let mut os = RealOs { cfg: &cfg };
        for _ in 0..cfg.processes {
            let effects = match os.start() {
                Ok((pid, w)) => engine::lock(&engine).on_started(&mut os, pid, w),
                Err(e) => {
                    let effects = engine::lock(&engine).stop_all(&mut os);
                    engine::apply(&engine, &mut os, effects);
                    return Err(e);
                }
            };
            engine::apply(&engine, &mut os, effects);
        }
        let shared = Arc::new(Shared {
            engine,
            finished: Condvar::new(),
            wake,
            next_id: AtomicU64::new(1),
            cfg,
        });
        Ok((shared, wake_rx))
    }

    fn os(&self) -> RealOs<'_> {
        RealOs { cfg: &self.cfg }
    }

    fn lock(&self) -> MutexGuard<'_, Engine<RealWorker>> {
        engine::lock(&self.engine)
    }

    fn apply(&self, effects: Effects<RealWorker>) {
        engine::apply(&self.engine, &mut self.os(), effects);
    }

    /// Where the pool is in its life.
    pub(crate) fn phase(&self) -> Phase {
        self.lock().phase()
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
    /// As [`Engine::on_submit`]; the tasks are then dropped without
    /// completing.
    pub(crate) fn submit(&self, tasks: impl IntoIterator<Item = Task>) -> Result<(), PoolError> {
        let effects = self.lock().on_submit(&mut self.os(), tasks)?;
        self.apply(effects);
        Ok(())
    }

    /// `Ok` while the pool takes tasks.
    pub(crate) fn check_running(&self) -> Result<(), PoolError> {
        self.lock().check_running()
    }

    /// Python's `close()`: no new tasks; workers exit once all are done.
    pub(crate) fn close(&self) {
        self.lock().on_close();
        self.wake();
    }

    /// Python's `terminate()`: stop the workers now; unfinished tasks fail
    /// with [`PoolError::Terminated`].
    pub(crate) fn terminate(&self) {
        self.lock().on_terminate();
        self.wake();
    }

    /// Cancels a task still in the queue.
    pub(crate) fn cancel(&self, id: u64) -> bool {
        let Some(effect) = self.lock().on_cancel(id) else {
            return false;
        };
        self.apply(vec![effect]);
        true
    }

    /// Cancels every task still in the queue.
    pub(crate) fn cancel_pending(&self) {
        let effects = self.lock().on_cancel_pending();
        self.apply(effects);
        self.wake();
    }

    /// Waits until the result thread has stopped every worker.
    pub(crate) fn wait_finished(&self, deadline: Option<Instant>) -> bool {
        let mut st = self.lock();
        while st.phase() != Phase::Finished {
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
        self.lock().workers().map(|(pid, _)| pid).collect()
    }

    /// Applies the effects that end the pool, then lets `join` return.
    fn wind_up(&self, effects: Effects<RealWorker>) {
        self.apply(effects);
        self.lock().finish();
        self.finished.notify_all();
    }
}

/// Body of the result thread.
pub(crate) fn run(shared: Arc<Shared>, wake_rx: UnixStream) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(&shared, &wake_rx)));
    if r.is_err() {
        tracing::error!("the pool's result thread panicked; terminating the pool");
        let effects = shared.lock().terminate_all(&mut shared.os());
        shared.wind_up(effects);
    }
}

/// What the result thread watches of one worker.
struct Watched {
    pid: i32,
    chan: Arc<Channel>,
    sentinel: Option<Arc<OwnedFd>>,
}

/// The result thread's loop: wait, read, let the engine decide, apply.
fn serve(shared: &Shared, wake_rx: &UnixStream) {
    let mut os = shared.os();
    loop {
        let (watched, spin) = {
            let mut m = shared.lock();
            if let Tick::Finish(effects) = m.on_tick(&mut os) {
                drop(m);
                shared.wind_up(effects);
                return;
            }
            let watched: Vec<Watched> = m
                .workers()
                .map(|(pid, w)| Watched {
                    pid,
                    chan: w.chan.clone(),
                    sentinel: w.sentinel.clone(),
                })
                .collect();
            (watched, m.expects_answer_soon())
        };
        let ready = wait(&watched, wake_rx, spin);
        let inbox = read(&watched, &ready);
        drop(watched);
        let effects = shared.lock().on_inbox(&mut os, inbox);
        engine::apply(&shared.engine, &mut os, effects);
        engine::replenish(&shared.engine, &mut os);
        // Dispatch whatever was requeued to the survivors.
        let effects = shared.lock().dispatch(&mut os);
        engine::apply(&shared.engine, &mut os, effects);
    }
}

/// Which workers [`wait`] found readable or ended.
struct Ready {
    readable: Vec<bool>,
    ended: Vec<bool>,
}

/// Waits for an answer, a death or a wake-up (draining the wake-ups).
fn wait(watched: &[Watched], wake_rx: &UnixStream, spin: bool) -> Ready {
    let mut pfds = vec![PollFd::new(wake_rx.as_fd(), PollFlags::POLLIN)];
    let mut owner = Vec::new();
    for (i, p) in watched.iter().enumerate() {
        pfds.push(PollFd::new(p.chan.fd(), PollFlags::POLLIN));
        owner.push((i, false));
        if let Some(s) = &p.sentinel {
            pfds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            owner.push((i, true));
        }
    }
    poll_spinning(&mut pfds, spin);
    let hit = |k: usize| pfds[k].revents().is_some_and(|r| !r.is_empty());
    let mut ready = Ready {
        readable: vec![false; watched.len()],
        ended: vec![false; watched.len()],
    };
    for (k, &(i, is_sentinel)) in owner.iter().enumerate() {
        if hit(k + 1) {
            if is_sentinel {
                ready.ended[i] = true;
            } else {
                ready.readable[i] = true;
            }
        }
    }
    if hit(0) {
        let mut drain = [0u8; 64];
        while matches!((&*wake_rx).read(&mut drain), Ok(n) if n > 0) {}
    }
    ready
}

/// Polls `pfds`; with `spin` (an answer is expected soon, see
/// [`Engine::expects_answer_soon`]), polls without sleeping for
/// [`spin::POOL_RESULT`](crate::spin::POOL_RESULT) first, since a sleep and
/// wake-up of this thread costs about as much as the answer takes to come.
fn poll_spinning(pfds: &mut [PollFd<'_>], spin: bool) {
    let ready = if spin {
        crate::spin::until(crate::spin::POOL_RESULT, || {
            poll(pfds, PollTimeout::ZERO).ok().filter(|&n| n > 0)
        })
    } else {
        None
    };
    let polled = match ready {
        Some(n) => Ok(n),
        None => poll(pfds, PollTimeout::from(POLL_TIMEOUT_MS)),
    };
    match polled {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => {
            tracing::error!(error = %e, "pool: poll failed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Reads everything that is there, without the lock.
fn read(watched: &[Watched], ready: &Ready) -> Inbox {
    let mut inbox = Inbox::default();
    for (i, p) in watched.iter().enumerate() {
        if !ready.readable[i] && !ready.ended[i] {
            continue;
        }
        let closed = drain(p, &mut inbox.msgs);
        if closed || ready.ended[i] {
            inbox.dead.push(p.pid);
        }
    }
    inbox
}

/// Reads every message waiting from one worker; whether its channel is
/// closed (or unreadable).
fn drain(p: &Watched, msgs: &mut Vec<(i32, Encoded)>) -> bool {
    let mut resets = 0;
    loop {
        match p.chan.try_recv() {
            Ok(m) => msgs.push((p.pid, m)),
            Err(RecvError::Timeout) => return false,
            Err(RecvError::Closed) => return true,
            // The worker exited with tasks unread: the kernel reports that
            // once, before the answers still queued; read on.
            Err(RecvError::Io(e))
                if e.kind() == std::io::ErrorKind::ConnectionReset && resets == 0 =>
            {
                resets += 1;
            }
            Err(e) => {
                tracing::error!(pid = p.pid, error = ?e, "pool: bad frame from a worker");
                return true;
            }
        }
    }
}
