//! The manager under each start method: shared dict under a manager lock,
//! list and namespace round trips, proxies crossing processes, TCP with
//! the right and a wrong key, a client killed mid-call, registered types.
use std::time::Duration;

use mproc::manager::{
    BaseProxy, Call, CallError, Condition, Dict, Event, List, Lock, Namespace, Queue,
    RemoteErrorKind, Returned, Set, Shared,
};
use mproc::{Error, get_context};

const METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];
const JOIN: Duration = Duration::from_secs(30);

fn count_under_lock(args: (Dict<String, i64>, Lock, u32)) -> u32 {
    let (d, lock, n) = args;
    for _ in 0..n {
        let _held = lock.lock().unwrap();
        let c = d.get("count").unwrap().unwrap_or(0);
        d.set("count", &(c + 1)).unwrap();
    }
    n
}

fn count_atomically(args: (Dict<String, i64>, u32)) -> u32 {
    let (d, n) = args;
    for _ in 0..n {
        d.add("atomic", 1).unwrap();
        d.update_with("cas", |v| Some(v.unwrap_or(0) + 1)).unwrap();
    }
    n
}

#[test]
fn four_processes_count_exactly_under_a_manager_lock() {
    for m in METHODS {
        let ctx = get_context(m).unwrap();
        let manager = ctx.manager().unwrap();
        let d = manager.dict::<String, i64>().unwrap();
        d.set("count", &0).unwrap();
        let lock = manager.lock().unwrap();
        let mut ps: Vec<_> = (0..4)
            .map(|_| {
                ctx.process(count_under_lock, (d.clone(), lock.clone(), 50))
                    .start()
                    .unwrap()
            })
            .collect();
        let mut qs: Vec<_> = (0..2)
            .map(|_| {
                ctx.process(count_atomically, (d.clone(), 25))
                    .start()
                    .unwrap()
            })
            .collect();
        for p in ps.iter_mut().chain(qs.iter_mut()) {
            p.join_timeout(JOIN).unwrap();
        }
        assert_eq!(d.get("count").unwrap(), Some(200), "{m}");
        assert_eq!(d.get("atomic").unwrap(), Some(50), "{m}");
        assert_eq!(d.get("cas").unwrap(), Some(50), "{m}");
        assert!(!lock.locked().unwrap());
        manager.shutdown().unwrap();
    }
}

fn fill(args: (List<String>, Namespace, Dict<u32, Vec<u8>>)) -> (usize, Option<i32>) {
    let (l, ns, d) = args;
    l.push("from child").unwrap();
    l.extend(&["a".to_string(), "b".to_string()]).unwrap();
    l.insert(0, "first").unwrap();
    ns.set("x", &41).unwrap();
    ns.add("x", 1).unwrap();
    ns.set("label", "hi").unwrap();
    ns.set("_mine", &1).unwrap();
    d.update([(&1, &vec![1u8]), (&2, &vec![2, 2])]).unwrap();
    (l.len().unwrap(), ns.get("x").unwrap())
}

#[test]
fn list_and_namespace_round_trips() {
    for m in METHODS {
        let ctx = get_context(m).unwrap();
        let manager = ctx.manager().unwrap();
        let l = manager.list::<String>().unwrap();
        let ns = manager.namespace().unwrap();
        let d = manager.dict::<u32, Vec<u8>>().unwrap();
        let mut p = ctx
            .process(fill, (l.clone(), ns.clone(), d.clone()))
            .start()
            .unwrap();
        assert_eq!(p.join_timeout(JOIN).unwrap(), (4, Some(42)), "{m}");
        assert_eq!(
            l.to_vec().unwrap(),
            vec!["first", "from child", "a", "b"],
            "{m}"
        );
        assert_eq!(l.get(-1).unwrap().as_deref(), Some("b"));
        assert_eq!(l.get(9).unwrap(), None);
        assert!(l.remove("a").unwrap());
        assert_eq!(l.pop_at(0).unwrap().as_deref(), Some("first"));
        assert_eq!(
            l.iter().unwrap().collect::<Vec<_>>(),
            vec!["from child", "b"]
        );
        assert!(l.set(5, "x").is_err());
        assert_eq!(ns.get::<i32>("x").unwrap(), Some(42));
        assert_eq!(ns.get::<String>("label").unwrap().as_deref(), Some("hi"));
        // The child's `_mine` stayed in its proxy, as the seeds say.
        assert_eq!(ns.get::<i32>("_mine").unwrap(), None);
        assert_eq!(ns.names().unwrap(), vec!["label", "x"]);
        assert_eq!(d.items().unwrap(), vec![(1, vec![1]), (2, vec![2, 2])]);
        assert_eq!(d.keys().unwrap(), vec![1, 2]);
        assert_eq!(d.get_or_default(&3, &vec![9]).unwrap(), vec![9]);
        assert!(!d.contains(&3).unwrap());
        assert_eq!(d.setdefault(&3, &vec![9]).unwrap(), vec![9]);
        assert_eq!(d.remove(&1).unwrap(), Some(vec![1]));
        assert_eq!(d.values().unwrap(), vec![vec![2, 2], vec![9]]);
        d.clear().unwrap();
        assert!(d.is_empty().unwrap());
    }
}

fn echo_proxy(q: Queue<u32>) -> Queue<u32> {
    q.put(1).unwrap();
    q
}

/// A proxy travels back to the parent inside a child's result (the same
/// path a message through a queue or pipe takes) and still reaches the
/// same object.
#[test]
fn proxies_travel_both_ways_between_processes() {
    for m in METHODS {
        let ctx = get_context(m).unwrap();
        let manager = ctx.manager().unwrap();
        let q = manager.queue::<u32>().unwrap();
        let mut p = ctx.process(echo_proxy, q.clone()).start().unwrap();
        let back = p.join_timeout(JOIN).unwrap();
        back.put(2).unwrap();
        assert_eq!(q.get_timeout(JOIN).unwrap(), 1, "{m}");
        assert_eq!(q.get_timeout(JOIN).unwrap(), 2, "{m}");
        assert_eq!(q.try_get().unwrap(), None);
        assert!(matches!(
            q.get_timeout(Duration::from_millis(20)),
            Err(Error::Timeout)
        ));
    }
}

fn remote_worker(args: (String, Vec<u8>, Dict<String, i64>)) -> i64 {
    let (addr, key, d) = args;
    // A proxy from a TCP client travels too; so does a fresh connection.
    let remote = mproc::manager::connect(addr.as_str(), &key).unwrap();
    let jobs = remote.lookup::<Queue<i64>>("jobs").unwrap();
    let mut sum = 0;
    while let Some(j) = jobs.try_get().unwrap() {
        sum += j;
    }
    d.add("sum", sum).unwrap()
}

#[test]
fn tcp_with_the_right_key_works_and_a_wrong_key_is_refused() {
    for m in METHODS {
        let ctx = get_context(m).unwrap();
        let manager = ctx.manager().unwrap();
        let addr = manager.listen("127.0.0.1:0", b"right key").unwrap();
        assert!(addr.ip().is_loopback());
        let jobs = manager.queue::<i64>().unwrap();
        for j in 1..=10 {
            jobs.put(j).unwrap();
        }
        manager.publish("jobs", &jobs).unwrap();

        for wrong in [&b"wrong key"[..], b"", b"right ke"] {
            match mproc::manager::connect(addr, wrong) {
                Err(Error::AuthenticationFailed(_)) => {}
                other => panic!("{m}: {other:?}"),
            }
        }
        let remote = mproc::manager::connect(addr, b"right key").unwrap();
        let results = remote.dict::<String, i64>().unwrap();
        assert!(remote.lookup::<Dict<String, i64>>("jobs").is_err());
        assert!(remote.lookup::<Queue<i64>>("nothing").is_err());
        let mut p = ctx
            .process(
                remote_worker,
                (addr.to_string(), b"right key".to_vec(), results.clone()),
            )
            .start()
            .unwrap();
        assert_eq!(p.join_timeout(JOIN).unwrap(), 55, "{m}");
        assert_eq!(results.get("sum").unwrap(), Some(55));
        // A remote client can neither open listeners nor stop the server.
        assert!(remote.listen("127.0.0.1:0", b"").is_err());
        remote.shutdown().unwrap();
        assert_eq!(jobs.qsize().unwrap(), 0);
    }
}

fn hold_lock_then_block(args: (Lock, Event, Queue<u32>)) {
    let (lock, started, q) = args;
    lock.acquire().unwrap();
    started.set().unwrap();
    // Mid-call forever: the server thread is waiting for an item.
    let _ = q.get();
}

#[test]
fn a_client_killed_mid_call_does_not_stall_the_others() {
    for m in METHODS {
        let ctx = get_context(m).unwrap();
        let manager = ctx.manager().unwrap();
        let lock = manager.lock().unwrap();
        let started = manager.event().unwrap();
        let q = manager.queue::<u32>().unwrap();
        let mut p = ctx
            .process(
                hold_lock_then_block,
                (lock.clone(), started.clone(), q.clone()),
            )
            .start()
            .unwrap();
        assert!(started.wait_timeout(JOIN).unwrap(), "{m}");
        assert!(!lock.try_acquire().unwrap(), "{m}");
        p.kill().unwrap();
        let _ = p.join_timeout(JOIN);
        assert_eq!(p.exitcode(), Some(-9));
        // The dead holder's lock is released; its pending get takes nothing.
        assert!(
            lock.acquire_timeout(Duration::from_secs(10)).unwrap(),
            "{m}"
        );
        lock.release().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        q.put(7).unwrap();
        assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), 7, "{m}");
    }
}

fn wait_on_condition(args: (Condition, Dict<String, bool>)) -> bool {
    let (c, d) = args;
    let _held = c.lock().unwrap();
    c.wait_for(
        || d.get("ready").unwrap().unwrap_or(false),
        Duration::from_secs(20),
    )
    .unwrap()
}

#[test]
fn sync_primitives_in_the_manager() {
    let ctx = get_context("forkserver").unwrap();
    let manager = ctx.manager().unwrap();

    let r = manager.rlock().unwrap();
    r.acquire().unwrap();
    assert!(r.try_acquire().unwrap());
    r.release().unwrap();
    r.release().unwrap();
    let e = r.release().unwrap_err();
    let Error::Remote(remote) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(remote.kind, RemoteErrorKind::NotOwner);

    // A plain Lock too is released only by the thread that holds it.
    let l = manager.lock().unwrap();
    l.acquire().unwrap();
    let other = l.clone();
    let e = std::thread::spawn(move || other.release().unwrap_err())
        .join()
        .unwrap();
    let Error::Remote(remote) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(remote.kind, RemoteErrorKind::NotOwner);
    l.release().unwrap();
    assert!(l.try_acquire().unwrap());
    l.release().unwrap();

    let s = manager.bounded_semaphore(2).unwrap();
    assert!(s.try_acquire().unwrap());
    assert!(s.try_acquire().unwrap());
    assert!(!s.acquire_timeout(Duration::from_millis(10)).unwrap());
    s.release().unwrap();
    s.release().unwrap();
    assert!(s.release().is_err());
    assert_eq!(s.value().unwrap(), 2);

    let b = manager.barrier(2).unwrap();
    let b2 = b.clone();
    let t = std::thread::spawn(move || b2.wait_timeout(Duration::from_secs(20)).unwrap());
    let mine = b.wait_timeout(Duration::from_secs(20)).unwrap();
    let theirs = t.join().unwrap();
    assert_eq!(mine + theirs, 1);
    assert!(b.wait_timeout(Duration::from_millis(20)).is_err());
    assert!(b.broken().unwrap());
    b.reset().unwrap();
    assert!(!b.broken().unwrap());

    let c = manager.condition().unwrap();
    let d = manager.dict::<String, bool>().unwrap();
    let mut p = ctx
        .process(wait_on_condition, (c.clone(), d.clone()))
        .start()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    {
        let _held = c.lock().unwrap();
        d.set("ready", &true).unwrap();
        c.notify_all().unwrap();
    }
    assert!(p.join_timeout(JOIN).unwrap());

    let v = manager.value(&10u64).unwrap();
    assert_eq!(v.add(5).unwrap(), 15);
    assert_eq!(v.swap(&1).unwrap(), 15);
    assert!(v.compare_and_set(&1, &2).unwrap());
    assert_eq!(v.update_with(|x| x * 10).unwrap(), 20);
    let a = manager.array(&[1u8, 2, 3]).unwrap();
    a.set(-1, &9).unwrap();
    assert_eq!(a.to_vec().unwrap(), vec![1, 2, 9]);
    assert!(a.get(3).is_err());
    assert!(a.assign(&[1, 2]).is_err());

    let jq = manager.joinable_queue::<u8>().unwrap();
    jq.put(1).unwrap();
    assert!(!jq.join_timeout(Duration::from_millis(10)).unwrap());
    jq.get().unwrap();
    jq.task_done().unwrap();
    assert!(jq.task_done().is_err());
    jq.join().unwrap();

    let bq = manager.bounded_queue::<u8>(1).unwrap();
    bq.put(1).unwrap();
    assert!(bq.full().unwrap());
    assert!(bq.put_nowait(2).is_err());
    assert!(
        bq.put_timeout(2, Duration::from_millis(10))
            .unwrap_err()
            .is_full()
    );
}

fn take_six(args: (Queue<u32>, Event, Event)) -> Vec<u32> {
    let (q, child_can_start, parent_can_continue) = args;
    assert!(child_can_start.wait_timeout(JOIN).unwrap());
    let got = (0..6).map(|_| q.get_timeout(JOIN).unwrap()).collect();
    parent_can_continue.set().unwrap();
    got
}

/// CPython's `_TestQueue.test_put` against a managed queue of maxsize 6:
/// every form of put succeeds while there is room, every form fails with
/// `Full` once there is none (the timed one after its timeout), and a
/// child's gets make room again. Then what the test leaves implicit: a
/// blocked put is held back until a get makes room, 0 is no bound, and a
/// put that fails gives its item back.
#[test]
fn a_bounded_manager_queue_puts_as_cpythons_does() {
    use mproc::queue::PutError;
    use std::time::Instant;

    const MAXSIZE: usize = 6;
    const TIMEOUT1: Duration = Duration::from_millis(100);
    for m in ["fork", "forkserver"] {
        let ctx = get_context(m).unwrap();
        let manager = ctx.manager().unwrap();
        let q = manager.bounded_queue::<u32>(MAXSIZE).unwrap();
        let child_can_start = manager.event().unwrap();
        let parent_can_continue = manager.event().unwrap();
        let mut p = ctx
            .process(
                take_six,
                (
                    q.clone(),
                    child_can_start.clone(),
                    parent_can_continue.clone(),
                ),
            )
            .start()
            .unwrap();
        assert!(q.empty().unwrap() && !q.full().unwrap(), "{m}");
        q.put(1).unwrap();
        q.put_timeout(2, JOIN).unwrap();
        q.put_timeout(3, Duration::ZERO).unwrap();
        q.put_nowait(4).unwrap();
        q.put(5).unwrap();
        q.put_nowait(6).unwrap();
        assert!(!q.empty().unwrap() && q.full().unwrap(), "{m}");
        assert_eq!(q.qsize().unwrap(), MAXSIZE);

        let t = Instant::now();
        let e = q.put_nowait(7).unwrap_err();
        assert!(matches!(e, PutError::Full(7)), "{m}: {e:?}");
        assert!(q.put_timeout(7, Duration::ZERO).unwrap_err().is_full());
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{m}: a nowait put waited"
        );
        let t = Instant::now();
        assert_eq!(q.put_timeout(7, TIMEOUT1).unwrap_err().into_inner(), 7);
        let waited = t.elapsed();
        assert!(waited >= TIMEOUT1 && waited < JOIN, "{m}: {waited:?}");

        child_can_start.set().unwrap();
        assert!(parent_can_continue.wait_timeout(JOIN).unwrap(), "{m}");
        assert!(q.empty().unwrap() && !q.full().unwrap(), "{m}");
        assert_eq!(p.join_timeout(JOIN).unwrap(), vec![1, 2, 3, 4, 5, 6]);

        // Back-pressure: the seventh put waits for a get, then goes in last.
        for i in 0..6 {
            q.put(i).unwrap();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let putter = {
            let q = q.clone();
            std::thread::spawn(move || {
                let r = q.put(6).map_err(|e| e.into_inner());
                let _ = tx.send(());
                r
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "{m}: a put into a full queue did not wait"
        );
        assert_eq!(q.get_timeout(JOIN).unwrap(), 0);
        rx.recv_timeout(JOIN).unwrap();
        putter.join().unwrap().unwrap();
        let rest: Vec<u32> = (0..6).map(|_| q.get_timeout(JOIN).unwrap()).collect();
        assert_eq!(rest, vec![1, 2, 3, 4, 5, 6], "{m}");

        // As Python's `Queue(maxsize=0)`: no bound.
        let unbounded = manager.bounded_queue::<u32>(0).unwrap();
        for i in 0..100 {
            unbounded.put_nowait(i).unwrap();
        }
        assert!(!unbounded.full().unwrap());
        let jq = manager.bounded_joinable_queue::<u32>(1).unwrap();
        jq.put(1).unwrap();
        assert!(jq.put_nowait(2).unwrap_err().is_full());
        assert_eq!(jq.get().unwrap(), 1);
        jq.task_done().unwrap();
        assert!(jq.join_timeout(JOIN).unwrap());

        // A manager that has stopped: the item comes back with the error.
        manager.shutdown().unwrap();
        match q.put(9) {
            Err(PutError::Failed(9, Error::Closed | Error::Io(_))) => {}
            other => panic!("{m}: {other:?}"),
        }
    }
}

struct Counter {
    total: i64,
}

impl Shared for Counter {
    type Init = i64;
    fn new(start: i64) -> Self {
        Counter { total: start }
    }
    fn call(&mut self, call: Call<'_>) -> Result<Returned, CallError> {
        match call.method() {
            "add" => {
                let n: i64 = call.args()?;
                self.total += n;
                call.ret(&self.total)
            }
            "total" => call.ret(&self.total),
            "boom" => panic!("boom"),
            _ => Err(call.no_such_method()),
        }
    }
}

fn add_to(c: mproc::manager::Proxy<Counter>) -> i64 {
    for _ in 0..9 {
        c.call::<_, i64>("add", &1).unwrap();
    }
    c.call("add", &1).unwrap()
}

#[test]
fn registered_types_are_served_by_name() {
    for m in METHODS {
        let ctx = get_context(m).unwrap();
        let manager = ctx.manager_builder().register::<Counter>().start().unwrap();
        let c = manager.create::<Counter>(&100).unwrap();
        let mut ps: Vec<_> = (0..3)
            .map(|_| ctx.process(add_to, c.clone()).start().unwrap())
            .collect();
        for p in &mut ps {
            p.join_timeout(JOIN).unwrap();
        }
        assert_eq!(c.call::<_, i64>("total", &()).unwrap(), 130, "{m}");
        assert!(c.call::<_, ()>("nope", &()).is_err());
        assert!(c.call::<_, i64>("add", &"not a number").is_err());
        // A panic in the object is an error reply; the server goes on.
        assert!(c.call::<_, ()>("boom", &()).is_err());
        assert_eq!(c.call::<_, i64>("total", &()).unwrap(), 130);
        // The plain manager knows no Counter.
        let plain = ctx.manager().unwrap();
        assert!(plain.create::<Counter>(&1).is_err());
    }
}

type Shared2 = (Dict<String, i64>, Lock);

fn relay_dict(inbox: mproc::Queue<Shared2>) -> i64 {
    let (d, lock) = inbox.get_timeout(JOIN).unwrap();
    let _held = lock.lock().unwrap();
    d.add("via queue", 5).unwrap()
}

fn relay(args: (mproc::Queue<List<u8>>, mproc::Queue<List<u8>>)) {
    let (inbox, outbox) = args;
    let l = inbox.get_timeout(JOIN).unwrap();
    l.push(&7).unwrap();
    // On again: a proxy this child received, sent back through a queue.
    outbox.put(l).unwrap();
}

#[test]
fn proxies_travel_through_an_mproc_queue() {
    for m in METHODS {
        let ctx = get_context(m).unwrap();
        let manager = ctx.manager().unwrap();
        let d = manager.dict::<String, i64>().unwrap();
        let lock = manager.lock().unwrap();
        let inbox = mproc::Queue::new().unwrap();
        inbox.put((d.clone(), lock.clone())).unwrap();
        let mut p = ctx.process(relay_dict, inbox).start().unwrap();
        assert_eq!(p.join_timeout(JOIN).unwrap(), 5, "{m}");
        assert_eq!(d.get("via queue").unwrap(), Some(5), "{m}");

        let list = manager.list::<u8>().unwrap();
        let to_child = mproc::Queue::new().unwrap();
        let from_child = mproc::Queue::new().unwrap();
        to_child.put(list.clone()).unwrap();
        let mut p = ctx
            .process(relay, (to_child, from_child.clone()))
            .start()
            .unwrap();
        let back: List<u8> = from_child.get_timeout(JOIN).unwrap();
        p.join_timeout(JOIN).unwrap();
        back.push(&8).unwrap();
        assert_eq!(list.to_vec().unwrap(), vec![7, 8], "{m}");
    }
}

#[test]
fn proxies_and_managers_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<mproc::Manager>();
    check::<Dict<String, Vec<u8>>>();
    check::<List<u8>>();
    check::<Namespace>();
    check::<Queue<String>>();
    check::<Lock>();
    check::<Condition>();
    check::<Event>();
    check::<mproc::manager::Proxy<Counter>>();
}

#[test]
fn values_that_hold_fds_are_refused() {
    let manager = get_context("forkserver").unwrap().manager().unwrap();
    let d = manager.dict::<u8, mproc::Queue<u8>>().unwrap();
    let q = mproc::Queue::new().unwrap();
    assert!(matches!(d.set(&1, &q), Err(Error::Codec(_))));
    // Threads of one process share the proxies; each call is atomic.
    let counter = manager.dict::<u8, u64>().unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..100 {
                    counter.add(&0, 1).unwrap();
                }
            });
        }
    });
    assert_eq!(counter.get(&0).unwrap(), Some(400));
}

/// CPython's `test_dict_proxy_nested`: dicts of dicts, mutated through the
/// inner proxy and seen through the outer one, and the inner ones kept by
/// their containers once their own proxies are gone.
#[test]
fn nested_dict_proxies_as_cpythons_test_dict_proxy_nested() {
    let manager = get_context("forkserver").unwrap().manager().unwrap();
    let pets = manager.dict::<String, i32>().unwrap();
    pets.update([(&"ferrets".to_string(), &2), (&"hamsters".to_string(), &4)])
        .unwrap();
    let supplies = manager.dict::<String, i32>().unwrap();
    supplies
        .update([(&"water".to_string(), &10), (&"feed".to_string(), &3)])
        .unwrap();
    let d = manager.dict::<String, Dict<String, i32>>().unwrap();
    d.set("pets", &pets).unwrap();
    d.set("supplies", &supplies).unwrap();
    assert_eq!(
        d.get("pets").unwrap().unwrap().get("ferrets").unwrap(),
        Some(2)
    );
    pets.set("marmots", &1).unwrap();
    assert_eq!(
        d.get("pets").unwrap().unwrap().get("marmots").unwrap(),
        Some(1)
    );
    // The one read back refers to the same object.
    assert_eq!(d.get("pets").unwrap().unwrap().id(), pets.id());
    let l = manager.list::<Dict<String, i32>>().unwrap();
    l.extend(&[pets.clone(), supplies.clone()]).unwrap();
    assert_eq!(l.get(0).unwrap().unwrap().get("marmots").unwrap(), Some(1));
    drop((pets, supplies));
    // Kept alive by `d` and `l`.
    let mut keys: Vec<String> = d.get("supplies").unwrap().unwrap().keys().unwrap();
    keys.sort();
    assert_eq!(keys, ["feed", "water"]);
    let items = d.items().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[1].1.get("water").unwrap(), Some(10));
    d.clear().unwrap();
    assert_eq!(l.len().unwrap(), 2);
    assert_eq!(l.get(1).unwrap().unwrap().get("feed").unwrap(), Some(3));
    // A proxy compares by object in a container.
    let first = l.get(0).unwrap().unwrap();
    assert_eq!(l.index(&first).unwrap(), Some(0));
    assert!(l.remove(&first).unwrap());
    assert_eq!(l.len().unwrap(), 1);
}

/// CPython's `test_list_proxy_in_list`: lists of lists, mutated through the
/// inner proxies.
#[test]
fn nested_list_proxies_as_cpythons_test_list_proxy_in_list() {
    let manager = get_context("forkserver").unwrap().manager().unwrap();
    let a = manager.list::<List<i32>>().unwrap();
    for _ in 0..3 {
        let inner = manager.list::<i32>().unwrap();
        inner.extend(&[1, 2, 3]).unwrap();
        a.push(&inner).unwrap();
    }
    let b = manager.list::<List<List<i32>>>().unwrap();
    b.push(&a).unwrap();
    a.get(0).unwrap().unwrap().set(-1, &55).unwrap();
    let seen = b.get(0).unwrap().unwrap().get(0).unwrap().unwrap();
    assert_eq!(seen.to_vec().unwrap(), [1, 2, 55]);
    for inner in a.to_vec().unwrap().iter().skip(1) {
        assert_eq!(inner.to_vec().unwrap(), [1, 2, 3]);
    }
    let c = manager.list::<i32>().unwrap();
    c.extend(&[9]).unwrap();
    a.set(1, &c).unwrap();
    assert_eq!(
        b.get(0)
            .unwrap()
            .unwrap()
            .get(1)
            .unwrap()
            .unwrap()
            .to_vec()
            .unwrap(),
        [9]
    );
}

/// A queue inside a dict, a dict in a namespace attribute and in a value.
#[test]
fn queues_namespaces_and_values_hold_proxies() {
    let manager = get_context("forkserver").unwrap().manager().unwrap();
    let jobs = manager.dict::<String, Queue<u32>>().unwrap();
    jobs.set("inbox", &manager.queue::<u32>().unwrap()).unwrap();
    jobs.get("inbox").unwrap().unwrap().put(7).unwrap();
    assert_eq!(
        jobs.get("inbox")
            .unwrap()
            .unwrap()
            .get_timeout(JOIN)
            .unwrap(),
        7
    );
    let ns = manager.namespace().unwrap();
    ns.set("config", &manager.dict::<String, u8>().unwrap())
        .unwrap();
    let config: Dict<String, u8> = ns.get("config").unwrap().unwrap();
    config.set("level", &3).unwrap();
    let again: Dict<String, u8> = ns.get("config").unwrap().unwrap();
    assert_eq!(again.get("level").unwrap(), Some(3));
    // A queue of proxies: each item holds its object while queued.
    let q = manager.queue::<(String, Dict<String, u8>)>().unwrap();
    q.put(("cfg".into(), config.clone())).unwrap();
    let (name, got) = q.get_timeout(JOIN).unwrap();
    assert_eq!((name.as_str(), got.get("level").unwrap()), ("cfg", Some(3)));
    let v = manager.value(&None::<Dict<String, u8>>).unwrap();
    assert!(v.swap(&Some(config)).unwrap().is_none());
    assert_eq!(v.get().unwrap().unwrap().get("level").unwrap(), Some(3));
}

fn mutate_nested(outer: List<Dict<String, i64>>) -> Option<i64> {
    let inner = outer.get(0).unwrap().unwrap();
    inner.add("n", 1).unwrap();
    let fresh = get_inner_manager_dict(&outer);
    outer.push(&fresh).unwrap();
    inner.get("n").unwrap()
}

/// A dict made through a proxy's own manager is not possible from a child
/// (it has no `Manager`), so the child stores a copy of one it read.
fn get_inner_manager_dict(outer: &List<Dict<String, i64>>) -> Dict<String, i64> {
    outer.get(0).unwrap().unwrap()
}

/// A child reads a proxy out of a container it received, mutates the
/// object through it, and stores a proxy back.
#[test]
fn a_child_reads_and_mutates_a_nested_proxy() {
    for m in METHODS {
        let ctx = get_context(m).unwrap();
        let manager = ctx.manager().unwrap();
        let outer = manager.list::<Dict<String, i64>>().unwrap();
        let inner = manager.dict::<String, i64>().unwrap();
        inner.set("n", &41).unwrap();
        outer.push(&inner).unwrap();
        drop(inner);
        let mut p = ctx.process(mutate_nested, outer.clone()).start().unwrap();
        assert_eq!(p.join_timeout(JOIN).unwrap(), Some(42), "{m}");
        assert_eq!(outer.len().unwrap(), 2, "{m}");
        let (a, b) = (
            outer.get(0).unwrap().unwrap(),
            outer.get(1).unwrap().unwrap(),
        );
        assert_eq!(a.id(), b.id(), "{m}");
        assert_eq!(b.get("n").unwrap(), Some(42), "{m}");
        manager.shutdown().unwrap();
    }
}

/// Over TCP, nested proxies work the same; a proxy of another manager
/// cannot be stored, and a key cannot hold a proxy.
#[test]
fn nested_proxies_over_tcp_and_across_managers() {
    let ctx = get_context("forkserver").unwrap();
    let manager = ctx.manager().unwrap();
    let addr = manager.listen("127.0.0.1:0", b"key").unwrap();
    let remote = mproc::manager::connect(addr, b"key").unwrap();
    let outer = remote.list::<Dict<String, u8>>().unwrap();
    let inner = manager.dict::<String, u8>().unwrap();
    inner.set("x", &1).unwrap();
    // A local proxy and a TCP client's list of one manager.
    outer.push(&inner).unwrap();
    assert_eq!(outer.get(0).unwrap().unwrap().get("x").unwrap(), Some(1));
    let other = ctx.manager().unwrap();
    let stranger = other.dict::<String, u8>().unwrap();
    let e = outer.push(&stranger).unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
    assert_eq!(outer.len().unwrap(), 1);
    let keyed = manager.dict::<Dict<String, u8>, u8>().unwrap();
    assert!(matches!(keyed.set(&inner, &1), Err(Error::Unsupported(_))));
}

fn set_up_server(args: (mproc::Queue<u32>, String)) {
    let (q, word) = args;
    assert_eq!(word, "ready");
    q.put(std::process::id()).unwrap();
}

fn failing_setup(_: ()) {
    panic!("no configuration");
}

/// Python's `manager.start(initializer, initargs)`: runs in the server
/// before it serves; a failing one fails `start`.
#[test]
fn a_managers_initializer_runs_in_the_server_before_it_serves() {
    for m in METHODS {
        let ctx = get_context(m).unwrap();
        let q = mproc::Queue::new().unwrap();
        let manager = ctx
            .manager_builder()
            .initializer(set_up_server, (q.clone(), "ready".to_string()))
            .start()
            .unwrap();
        let pid = q.get_timeout(JOIN).unwrap();
        assert_eq!(Some(pid as i32), manager.pid(), "{m}");
        let d = manager.dict::<u8, u8>().unwrap();
        d.set(&1, &2).unwrap();
        manager.shutdown().unwrap();
        let e = ctx
            .manager_builder()
            .initializer(failing_setup, ())
            .start()
            .unwrap_err();
        assert!(
            matches!(&e, Error::Panicked { message } if message.contains("no configuration")),
            "{m}: {e:?}"
        );
    }
}

fn strs(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|x| x.to_string()).collect()
}

/// The members of `s` as a `HashSet`, to compare as Python compares sets.
fn as_set(xs: Vec<String>) -> std::collections::HashSet<String> {
    xs.into_iter().collect()
}

/// CPython's `_test_set_operator_symbols`, with the operators spelled as
/// methods: `|`, `-`, `^`, `&` and their in-place forms.
fn set_operator_symbols(s: Set<String>) {
    s.update(&strs(&["a", "b", "c"])).unwrap();
    assert_eq!(s.len().unwrap(), 3);
    assert!(s.contains(&"a".into()).unwrap());
    assert!(!s.contains(&"d".into()).unwrap());
    let de = strs(&["d", "e"]);
    assert_eq!(
        as_set(s.union(&de).unwrap()),
        as_set(strs(&["a", "b", "c", "d", "e"]))
    );
    s.update(&de).unwrap(); // s |= {'d', 'e'}
    assert_eq!(
        as_set(s.to_vec().unwrap()),
        as_set(strs(&["a", "b", "c", "d", "e"]))
    );
    s.clear().unwrap();
    s.update(&strs(&["a", "b", "c"])).unwrap();
    assert_eq!(s.difference(&strs(&["a", "b"])).unwrap(), strs(&["c"]));
    s.difference_update(&strs(&["a", "b"])).unwrap(); // s -= {'a', 'b'}
    assert_eq!(s.to_vec().unwrap(), strs(&["c"]));
    s.clear().unwrap();
    s.update(&strs(&["a", "b", "c"])).unwrap();
    assert_eq!(
        as_set(s.symmetric_difference(&strs(&["b", "c", "d"])).unwrap()),
        as_set(strs(&["a", "d"]))
    );
    s.symmetric_difference_update(&strs(&["b", "c", "d"]))
        .unwrap(); // s ^= ...
    assert_eq!(as_set(s.to_vec().unwrap()), as_set(strs(&["a", "d"])));
    s.clear().unwrap();
    s.update(&strs(&["a", "b", "c"])).unwrap();
    assert_eq!(
        as_set(s.intersection(&strs(&["b", "c", "d"])).unwrap()),
        as_set(strs(&["b", "c"]))
    );
    s.intersection_update(&strs(&["b", "c", "d"])).unwrap(); // s &= ...
    assert_eq!(as_set(s.to_vec().unwrap()), as_set(strs(&["b", "c"])));
}

/// CPython's `_test_set_operator_methods`.
fn set_operator_methods(s: Set<String>) {
    s.add(&"d".into()).unwrap();
    assert!(s.contains(&"d".into()).unwrap());
    s.clear().unwrap();
    assert_eq!(s.len().unwrap(), 0);
    assert!(s.is_empty().unwrap());
    s.update(&strs(&["a", "b", "c"])).unwrap();
    assert_eq!(
        as_set(s.to_vec().unwrap()),
        as_set(s.iter().unwrap().collect())
    );
    s.remove(&"a".into()).unwrap();
    assert!(!s.contains(&"a".into()).unwrap());
    match s.remove(&"a".into()) {
        Err(Error::Remote(e)) => assert_eq!(e.kind, RemoteErrorKind::Key, "{e}"),
        other => panic!("remove of a missing member gave {other:?}"),
    }
    s.clear().unwrap();
    s.update(&strs(&["a"])).unwrap();
    assert!(s.discard(&"a".into()).unwrap());
    assert!(!s.discard(&"a".into()).unwrap());
    assert_eq!(s.len().unwrap(), 0);
    s.update(&strs(&["a"])).unwrap();
    assert_eq!(s.pop().unwrap().as_deref(), Some("a"));
    assert_eq!(s.len().unwrap(), 0);
    assert_eq!(s.pop().unwrap(), None);
    s.update(&strs(&["a", "b", "c"])).unwrap();
    assert!(s.isdisjoint(&strs(&["d"])).unwrap());
    assert!(!s.isdisjoint(&strs(&["c", "z"])).unwrap());
    assert!(s.issubset(&strs(&["a", "b", "c", "d"])).unwrap());
    assert!(s.issuperset(&strs(&["a", "b"])).unwrap());
    assert_eq!(
        as_set(s.union(&strs(&["d"])).unwrap()),
        as_set(strs(&["a", "b", "c", "d"]))
    );
}

/// CPython's `_test_set_comparisons`: `<`, `<=`, `>`, `>=`.
fn set_comparisons(s: Set<String>) {
    s.update(&strs(&["a", "b", "c"])).unwrap();
    let bigger = s.union(&strs(&["d", "e"])).unwrap();
    let same = strs(&["a", "b", "c"]);
    assert!(s.is_proper_subset(&bigger).unwrap());
    assert!(!s.is_proper_subset(&same).unwrap());
    assert!(s.issubset(&same).unwrap());
    assert!(!s.is_proper_superset(&same).unwrap());
    assert!(s.issuperset(&same).unwrap());
    assert!(s.is_proper_superset(&strs(&["a"])).unwrap());
}

/// CPython's `test_set` (3.14): each part runs in a worker process that
/// receives the set's proxy, under every start method.
#[test]
fn set_proxies_as_cpythons_test_set() {
    let parts: [fn(Set<String>); 3] = [set_operator_symbols, set_operator_methods, set_comparisons];
    for m in METHODS {
        let ctx = get_context(m).unwrap();
        let manager = ctx.manager().unwrap();
        for part in parts {
            let s = manager.set::<String>().unwrap();
            let mut p = ctx.process(part, s.clone()).start().unwrap();
            p.join_timeout(JOIN)
                .unwrap_or_else(|e| panic!("{m}: {e:?}"));
        }
        manager.shutdown().unwrap();
    }
}

/// Members are typed, compared by their encoding; a member cannot hold a
/// proxy; the set is freed with its last proxy.
#[test]
fn set_members_are_typed_values_and_never_proxies() {
    let manager = get_context("forkserver").unwrap().manager().unwrap();
    let before = manager.number_of_objects().unwrap();
    let s = manager.set::<(u8, Vec<u16>)>().unwrap();
    s.add(&(1, vec![2, 3])).unwrap();
    s.add(&(1, vec![2, 3])).unwrap();
    s.add(&(1, vec![])).unwrap();
    assert_eq!(s.to_vec().unwrap(), [(1, vec![2, 3]), (1, vec![])]);
    let d = manager.dict::<u8, u8>().unwrap();
    let proxies = manager.set::<Dict<u8, u8>>().unwrap();
    assert!(matches!(proxies.add(&d), Err(Error::Unsupported(_))));
    assert_eq!(proxies.len().unwrap(), 0);
    // A set in a dict is a nested proxy like any other.
    let by_name = manager.dict::<String, Set<(u8, Vec<u16>)>>().unwrap();
    by_name.set("s", &s).unwrap();
    let again = by_name.get("s").unwrap().unwrap();
    assert_eq!(again.len().unwrap(), 2);
    drop((s, again, d, proxies, by_name));
    // A release waits for `fork` children that other tests of this binary
    // started meanwhile (they hold a copy of every proxy): the count
    // settles once they are reaped.
    assert!(
        testkit::eventually(Duration::from_secs(20), || manager
            .number_of_objects()
            .unwrap()
            == before),
        "{} objects left, {before} before",
        manager.number_of_objects().unwrap()
    );
}

/// After `shutdown`, a proxy's calls fail at once with `Error::Closed` and
/// dropping it waits for nothing, even when another process still holds
/// the server's end of a connection open (as a `fork` child made
/// meanwhile by another thread does).
#[test]
fn calls_after_shutdown_fail_at_once() {
    let manager = get_context("forkserver").unwrap().manager().unwrap();
    let d = manager.dict::<u8, u8>().unwrap();
    d.set(&1, &1).unwrap();
    manager.shutdown().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = d.len();
        drop(d);
        let _ = tx.send(r);
    });
    let r = rx.recv_timeout(JOIN).expect("a call after shutdown hung");
    assert!(matches!(r, Err(Error::Closed)), "{r:?}");
}
