//! A `Queue` whose producers and consumers are killed at any instant of
//! `put` and `get`, under each start method, for each way an item travels
//! (in the ring; on the socket, in its frame, carrying an fd, or in a
//! stream or memfd of its own), with one consumer and with two.
//!
//! What is checked: every item whose `put` returned is delivered exactly
//! once, whole, with its own fd; each consumer takes each producer's items
//! in the order they were put (and every item put after another one after
//! it); an item whose `put` died is delivered whole or not at all, as the
//! point of death says; nothing after it is late or lost, and `qsize` is
//! exact.
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use mproc::connection::{Connection, pipe, wait};
use mproc::queue::failpoint::{self, Death, Point};
use mproc::{Bytes, Queue, get_context};
use serde::{Deserialize, Serialize};

const METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];
const T: Duration = Duration::from_secs(30);

/// How an item travels.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
enum Kind {
    /// In the ring.
    Small,
    /// On the socket, in its frame (over the ring's 16 KiB).
    Mid,
    /// On the socket, carrying an fd.
    Fd,
    /// On the socket, its body in a stream or a memfd of its own.
    Big,
}

const KINDS: [Kind; 4] = [Kind::Small, Kind::Mid, Kind::Fd, Kind::Big];

/// Who put an item: the producer of a round, or the parent after it.
const AFTER: u32 = u32::MAX;

#[derive(Serialize, Deserialize)]
struct Item {
    round: u32,
    producer: u32,
    index: u32,
    body: Bytes,
    /// For `Kind::Fd`: a connection holding one message, the item's key.
    fd: Option<Connection<u64>>,
}

#[derive(Serialize, Deserialize)]
enum Msg {
    Item(Item),
    Stop,
}

fn key(round: u32, producer: u32, index: u32) -> u64 {
    (u64::from(round) << 40) ^ (u64::from(producer) << 20) ^ u64::from(index)
}

fn body_len(kind: Kind, index: u32) -> usize {
    match kind {
        Kind::Small | Kind::Fd => 24,
        Kind::Mid => 20_000 + index as usize % 100,
        // A stream, and (past a stream's send buffer, twice
        // `net.core.wmem_max` at most: 4 MiB here) a memfd. The third item
        // is the one a producer dies putting.
        Kind::Big if index % 8 == 2 => 9 << 20,
        Kind::Big => 100_000 + index as usize % 1000,
    }
}

fn fill(round: u32, producer: u32, index: u32) -> u8 {
    key(round, producer, index).wrapping_mul(0x9e37_79b9_7f4a_7c15) as u8 | 1
}

fn make(kind: Kind, round: u32, producer: u32, index: u32) -> Msg {
    let body = Bytes(vec![fill(round, producer, index); body_len(kind, index)]);
    let fd = (kind == Kind::Fd).then(|| {
        let (a, b) = pipe::<u64>(true).unwrap();
        a.send(&key(round, producer, index)).unwrap();
        b
    });
    Msg::Item(Item {
        round,
        producer,
        index,
        body,
        fd,
    })
}

/// What a consumer reports of each item: its key, and whether it was
/// whole with its own fd.
type Report = (u32, u32, u32, bool);

/// Most reports sent at once (one when the consumer is to die: what it
/// took before must be reported before); a batch waits 2 ms at most.
const BATCH: usize = 512;

/// Where a process is to die: a point, and which time it gets there.
type Die = Option<(Point, u32)>;

fn consume(arg: (Queue<Msg>, Connection<Vec<Report>>, Die)) {
    let (q, out, die) = arg;
    let batch = if die.is_some() { 1 } else { BATCH };
    if let Some((p, nth)) = die {
        failpoint::arm(p, nth, Death::Kill);
    }
    let mut done = Vec::with_capacity(batch);
    let mut since = Instant::now();
    loop {
        let msg = match q.get_nowait() {
            Ok(m) => m,
            Err(mproc::GetError::Empty) => {
                // Nothing waiting: report what was taken, then wait.
                if !done.is_empty() {
                    out.send(&std::mem::take(&mut done)).unwrap();
                }
                q.get_timeout(T).expect("a get timed out")
            }
            Err(e) => panic!("get: {e}"),
        };
        let item = match msg {
            Msg::Stop => break,
            Msg::Item(item) => item,
        };
        let k = key(item.round, item.producer, item.index);
        let want = [fill(item.round, item.producer, item.index); 4096];
        let mut whole = item
            .body
            .0
            .chunks(want.len())
            .all(|c| c == &want[..c.len()]);
        if let Some(c) = &item.fd {
            whole &= c.recv_timeout(T).ok() == Some(k);
        }
        if done.is_empty() {
            since = Instant::now();
        }
        done.push((item.round, item.producer, item.index, whole));
        if done.len() >= batch || since.elapsed() > Duration::from_millis(2) {
            out.send(&std::mem::take(&mut done)).unwrap();
        }
    }
    if !done.is_empty() {
        out.send(&done).unwrap();
    }
}

/// Puts `count` items of `kind` as producer `round` of round `round`,
/// dying at `die` if given.
fn produce(arg: (Queue<Msg>, Kind, u32, u32, Die)) {
    let (q, kind, round, count, die) = arg;
    if let Some((p, nth)) = die {
        failpoint::arm(p, nth, Death::Kill);
    }
    for index in 0..count {
        if q.put(make(kind, round, round, index)).is_err() {
            return;
        }
    }
}

/// The parent's side: the consumers' reports, checked as they come.
struct Collector {
    what: String,
    reports: Vec<Connection<Vec<Report>>>,
    open: Vec<bool>,
    /// Per consumer, the last (round, phase, index) it took.
    last: Vec<Option<(u32, u32, u32)>>,
    seen: HashSet<(u32, u32, u32)>,
    /// Per round, the producer's indices taken.
    produced: BTreeMap<u32, Vec<u32>>,
}

impl Collector {
    fn new(what: String, reports: Vec<Connection<Vec<Report>>>) -> Collector {
        let n = reports.len();
        Collector {
            what,
            reports,
            open: vec![true; n],
            last: vec![None; n],
            seen: HashSet::new(),
            produced: BTreeMap::new(),
        }
    }

    /// Takes the reports that come within `timeout`.
    fn pump(&mut self, timeout: Duration) {
        let live: Vec<usize> = (0..self.reports.len()).filter(|i| self.open[*i]).collect();
        if live.is_empty() {
            std::thread::sleep(timeout);
            return;
        }
        let conns: Vec<&Connection<Vec<Report>>> = live.iter().map(|i| &self.reports[*i]).collect();
        for ready in wait(&conns, Some(timeout)).unwrap() {
            let c = live[ready];
            while self.reports[c].poll(Some(Duration::ZERO)).unwrap() {
                match self.reports[c].recv() {
                    Ok(rs) => {
                        for r in rs {
                            self.take(c, r);
                        }
                    }
                    Err(mproc::Error::Closed) => {
                        self.open[c] = false;
                        break;
                    }
                    Err(e) => panic!("{}: {e}", self.what),
                }
            }
        }
    }

    fn take(&mut self, consumer: usize, (round, producer, index, whole): Report) {
        let what = &self.what;
        assert!(whole, "{what}: item {round}/{producer}/{index} not whole");
        // Items of a round: the producer's, then the parent's.
        let phase = u32::from(producer == AFTER);
        let order = (round, phase, index);
        assert!(
            self.seen.insert(order),
            "{what}: item {round}/{producer}/{index} delivered twice"
        );
        if let Some(last) = self.last[consumer] {
            assert!(
                last < order,
                "{what}: consumer {consumer} took {order:?} after {last:?}"
            );
        }
        self.last[consumer] = Some(order);
        if phase == 0 {
            self.produced.entry(round).or_default().push(index);
        }
    }

    /// Pumps until `done` holds, failing after `T`.
    fn until(&mut self, mut done: impl FnMut(&Collector) -> bool, why: &str) {
        let deadline = Instant::now() + T;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{}: stalled waiting for {why}",
                self.what
            );
            self.pump(Duration::from_millis(20));
        }
    }

    fn has(&self, round: u32, phase: u32, index: u32) -> bool {
        self.seen.contains(&(round, phase, index))
    }
}

/// Consumers for one configuration, and the queue they read.
struct Bench {
    q: Queue<Msg>,
    consumers: Vec<mproc::Process<()>>,
    col: Collector,
}

impl Bench {
    fn start(method: &str, n: usize, what: String) -> Bench {
        let ctx = get_context(method).unwrap();
        let q = Queue::new().unwrap();
        let mut reports = Vec::new();
        let consumers = (0..n)
            .map(|_| {
                let (a, b) = pipe::<Vec<Report>>(true).unwrap();
                reports.push(a);
                ctx.process(consume, (q.clone(), b, None)).start().unwrap()
            })
            .collect();
        Bench {
            q,
            consumers,
            col: Collector::new(what, reports),
        }
    }

    /// Puts `msg`, taking the consumers' reports while the queue is full
    /// (a consumer waits for the parent to read its reports).
    fn put(&mut self, mut msg: Msg) {
        let deadline = Instant::now() + T;
        loop {
            match self.q.put_timeout(msg, Duration::from_millis(5)) {
                Ok(()) => return,
                Err(e) if e.is_full() && Instant::now() < deadline => msg = e.into_inner(),
                Err(e) => panic!("{}: put: {e}", self.col.what),
            }
            self.col.pump(Duration::ZERO);
        }
    }

    /// Puts `count` items of `kind` after round `round`'s producer.
    fn put_after(&mut self, kind: Kind, round: u32, count: u32) {
        for index in 0..count {
            self.put(make(kind, round, AFTER, index));
        }
    }

    /// Stops the consumers and checks the queue is left empty.
    fn finish(mut self) -> Collector {
        for _ in 0..self.consumers.len() {
            self.put(Msg::Stop);
        }
        // Reports first: a consumer may be waiting for room to send one.
        let what = self.col.what.clone();
        self.col
            .until(|c| c.open.iter().all(|o| !o), "the reports to end");
        for c in &mut self.consumers {
            if let Err(e) = c.join_timeout(T) {
                panic!("{what}: a consumer did not end: {e}");
            }
        }
        assert!(self.q.empty(), "{what}: {} items left", self.q.qsize());
        assert!(matches!(self.q.get_nowait(), Err(mproc::GetError::Empty)));
        self.col
    }
}

/// Points of `put` a producer dies at; whether its item is then in.
const PUT_POINTS: [(Point, bool); 7] = [
    (Point::Locked, false),
    (Point::Numbered, false),
    (Point::Sent, false),
    (Point::PushWritten, false),
    (Point::PushCommitted, true),
    (Point::Pushed, true),
    (Point::PutUnlocked, true),
];

/// Whether a `put` of `kind` gets to `point` (the socket's points are not
/// on the ring's path).
fn reaches(kind: Kind, point: Point) -> bool {
    kind != Kind::Small || !matches!(point, Point::Numbered | Point::Sent)
}

/// A producer killed at each point of its third `put`, for every kind,
/// method and number of consumers: its first two items arrive, the third
/// exactly when its entry was committed, and the parent's items after it
/// all arrive, in order, none late.
#[test]
fn producer_killed_at_each_point_of_put() {
    const COUNT: u32 = 6;
    const NTH: u32 = 3;
    for method in METHODS {
        for consumers in [1, 2] {
            for kind in KINDS {
                let what = format!("{method}, {consumers} consumer(s), {kind:?}");
                let mut b = Bench::start(method, consumers, what.clone());
                let ctx = get_context(method).unwrap();
                let mut wants = BTreeMap::new();
                for (round, (point, kept)) in (0u32..).zip(PUT_POINTS) {
                    let die = Some((point, NTH));
                    let mut p = ctx
                        .process(produce, (b.q.clone(), kind, round, COUNT, die))
                        .start()
                        .unwrap();
                    let _ = p.join_timeout(T);
                    let reached = reaches(kind, point);
                    let want = if !reached {
                        COUNT
                    } else if kept {
                        NTH
                    } else {
                        NTH - 1
                    };
                    assert_eq!(
                        p.exitcode(),
                        Some(if reached { -9 } else { 0 }),
                        "{what}: {point:?}"
                    );
                    b.put_after(kind, round, 3);
                    b.col.until(
                        |c| {
                            (0..3).all(|i| c.has(round, 1, i))
                                && (0..want).all(|i| c.has(round, 0, i))
                        },
                        &format!("round {round} ({point:?})"),
                    );
                    assert_eq!(
                        b.col.produced.get(&round).map_or(0, Vec::len),
                        want as usize,
                        "{what}: {point:?}: the producer's items"
                    );
                    assert_eq!(b.q.qsize(), 0, "{what}: {point:?}");
                    wants.insert(round, want);
                }
                // Nothing came late.
                let col = b.finish();
                for (round, want) in wants {
                    let mut got = col.produced.get(&round).cloned().unwrap_or_default();
                    got.sort_unstable();
                    assert_eq!(got, (0..want).collect::<Vec<_>>(), "{what}: round {round}");
                }
            }
        }
    }
}

/// A consumer killed at each point of its third `get`, for every kind and
/// method: it loses the item it was taking, and only that one; the next
/// consumer takes the rest in order, none late, and `qsize` is exact.
#[test]
fn consumer_killed_at_each_point_of_get() {
    const COUNT: u32 = 8;
    const NTH: u32 = 3;
    for method in METHODS {
        let ctx = get_context(method).unwrap();
        for kind in KINDS {
            for (round, point) in (0u32..).zip([Point::Popped, Point::Received, Point::GetUnlocked])
            {
                let what = format!("{method}, {kind:?}, {point:?}");
                let q: Queue<Msg> = Queue::new().unwrap();
                for index in 0..COUNT {
                    assert!(q.put(make(kind, round, 0, index)).is_ok());
                }
                q.put(Msg::Stop).unwrap();
                let (a, a_out) = pipe::<Vec<Report>>(true).unwrap();
                let (b, b_out) = pipe::<Vec<Report>>(true).unwrap();
                let mut col = Collector::new(what.clone(), vec![a, b]);
                let mut first = ctx
                    .process(consume, (q.clone(), a_out, Some((point, NTH))))
                    .start()
                    .unwrap();
                let _ = first.join_timeout(T);
                // A `get` of a ring item receives no frame.
                let reached = kind != Kind::Small || point != Point::Received;
                assert_eq!(
                    first.exitcode(),
                    Some(if reached { -9 } else { 0 }),
                    "{what}"
                );
                let lost: &[u32] = if reached {
                    assert_eq!(q.qsize() as u32, COUNT - NTH + 1, "{what}");
                    let mut second = ctx
                        .process(consume, (q.clone(), b_out, None))
                        .start()
                        .unwrap();
                    second.join_timeout(T).unwrap();
                    &[NTH - 1]
                } else {
                    drop(b_out);
                    &[]
                };
                col.until(|c| c.open.iter().all(|o| !o), "the reports to end");
                let mut got = col.produced.remove(&round).unwrap_or_default();
                got.sort_unstable();
                let want: Vec<u32> = (0..COUNT).filter(|i| !lost.contains(i)).collect();
                assert_eq!(got, want, "{what}");
                assert!(q.empty(), "{what}: {} left", q.qsize());
            }
        }
    }
}

/// A small, fast generator for the kill instants (the seed is printed
/// with any failure).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Producers killed (`SIGKILL`, and now and then `terminate()`) at random
/// instants of a stream of `put`s, a few hundred rounds over every kind,
/// method and number of consumers: each producer's items arrive as an
/// unbroken prefix of what it put, exactly once and in order, and the
/// items put after it all arrive, none late.
#[test]
fn producers_killed_at_random_instants() {
    const ROUNDS: u32 = 12;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    for method in METHODS {
        let ctx = get_context(method).unwrap();
        for consumers in [1, 2] {
            for kind in KINDS {
                let what = format!("{method}, {consumers} consumer(s), {kind:?}, seed {seed}");
                let mut b = Bench::start(method, consumers, what.clone());
                for round in 0..ROUNDS {
                    let mut p = ctx
                        .process(produce, (b.q.clone(), kind, round, u32::MAX, None))
                        .start()
                        .unwrap();
                    // Once it is putting, kill it a moment later.
                    b.col.until(
                        |c| c.produced.contains_key(&round),
                        &format!("round {round}'s first item"),
                    );
                    std::thread::sleep(Duration::from_micros(rng.below(400)));
                    if round % 4 == 3 {
                        p.terminate().unwrap();
                    } else {
                        p.kill().unwrap();
                    }
                    let _ = p.join_timeout(T);
                    assert!(
                        matches!(p.exitcode(), Some(c) if c != 0),
                        "{what}: round {round}: {:?}",
                        p.exitcode()
                    );
                    b.put_after(kind, round, 2);
                    b.col.until(
                        |c| c.has(round, 1, 0) && c.has(round, 1, 1),
                        &format!("round {round}'s items after the kill"),
                    );
                }
                let col = b.finish();
                for (round, mut got) in col.produced {
                    got.sort_unstable();
                    let n = got.len() as u32;
                    assert_eq!(got, (0..n).collect::<Vec<_>>(), "{what}: round {round}");
                }
            }
        }
    }
}

fn put_into_full(arg: (mproc::JoinableQueue<u32>, Connection<()>)) {
    let (q, ready) = arg;
    ready.send(&()).unwrap();
    // The queue is full: this waits for room until the process is killed.
    let _ = q.put_timeout(2, T);
}

/// A producer killed while it waits for room in a full `JoinableQueue`
/// leaves the unfinished-task count as it was: `join` returns once the
/// items that went in are done.
#[test]
fn joinable_queue_producer_killed_waiting_for_room() {
    for method in METHODS {
        let q = mproc::JoinableQueue::with_maxsize(1).unwrap();
        q.put(1u32).unwrap();
        let (a, b) = pipe::<()>(true).unwrap();
        let mut p = get_context(method)
            .unwrap()
            .process(put_into_full, (q.clone(), b))
            .start()
            .unwrap();
        a.recv_timeout(T).unwrap();
        // Let it get to the wait (the test holds either way).
        std::thread::sleep(Duration::from_millis(50));
        p.kill().unwrap();
        let _ = p.join_timeout(T);
        assert_eq!(p.exitcode(), Some(-9), "{method}");
        assert_eq!(q.get_timeout(T).unwrap(), 1, "{method}");
        q.task_done().unwrap();
        q.join_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        assert!(q.empty(), "{method}");
    }
}
