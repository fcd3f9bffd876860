//! Manager objects are counted: freed with their last proxy in any
//! process, kept while a proxy is in flight to another process, given back
//! when a holder is killed, kept by a published name.
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use mproc::manager::{BaseProxy, Dict, Event, List};
use mproc::{Manager, get_context};

const METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];
const JOIN: Duration = Duration::from_secs(30);

/// A proxy's last release in this process waits until every `fork` child
/// started since the proxy was made has been reaped, whichever thread
/// started it: such a child has a copy of this process's memory, proxies
/// included. So the tests of this binary that start `fork` children (the
/// `fork` method's manager server is one too) run alone, and the others,
/// which count objects right after dropping proxies, run beside each other
/// but never beside those.
static FORKS: RwLock<()> = RwLock::new(());

/// For a test that starts `fork` children.
fn forking() -> RwLockWriteGuard<'static, ()> {
    FORKS.write().unwrap_or_else(PoisonError::into_inner)
}

/// For a test that starts none.
fn not_forking() -> RwLockReadGuard<'static, ()> {
    FORKS.read().unwrap_or_else(PoisonError::into_inner)
}

/// Waits (at most 10 s) for the server to hold `n` objects: a closed
/// connection's references are given back by the server's thread for it,
/// a moment after the process that held them is gone.
fn settles_at(manager: &Manager, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if manager.number_of_objects().unwrap() == n {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn objects_are_freed_with_their_last_proxy() {
    let _forks = not_forking();
    let manager = get_context("forkserver").unwrap().manager().unwrap();
    let base = manager.number_of_objects().unwrap();
    let d = manager.dict::<String, u32>().unwrap();
    let l = manager.list::<u8>().unwrap();
    assert_eq!(manager.number_of_objects().unwrap(), base + 2);
    // Clones share one reference.
    let d2 = d.clone();
    drop(d);
    assert!(settles_at(&manager, base + 2));
    d2.set("k", &1).unwrap();
    drop(d2);
    assert!(settles_at(&manager, base + 1));
    drop(l);
    assert!(settles_at(&manager, base));
    // Many short-lived objects leave nothing behind.
    for i in 0..200u32 {
        let d = manager.dict::<u32, u32>().unwrap();
        d.set(&i, &i).unwrap();
    }
    assert!(settles_at(&manager, base));
}

#[test]
fn a_published_name_keeps_its_object() {
    let _forks = not_forking();
    let manager = get_context("forkserver").unwrap().manager().unwrap();
    let base = manager.number_of_objects().unwrap();
    let q = manager.queue::<u32>().unwrap();
    q.put(5).unwrap();
    manager.publish("jobs", &q).unwrap();
    drop(q);
    assert!(settles_at(&manager, base + 1));
    let again = manager
        .lookup::<mproc::manager::Queue<u32>>("jobs")
        .unwrap();
    assert_eq!(again.get_timeout(JOIN).unwrap(), 5);
    drop(again);
    assert!(settles_at(&manager, base + 1));
    // The name moves to another object: the first one, unreferenced, goes.
    let other = manager.queue::<u32>().unwrap();
    manager.publish("jobs", &other).unwrap();
    assert_eq!(manager.number_of_objects().unwrap(), base + 1);
    drop(other);
    assert!(settles_at(&manager, base + 1));
}

fn read_after_a_while(inbox: mproc::Queue<Dict<String, u32>>) -> Option<u32> {
    let d = inbox.get_timeout(JOIN).unwrap();
    d.get("k").unwrap()
}

/// The sender drops its proxy while the proxy's copy is still in a queue:
/// the object must outlive it (CPython can free it there), and go once the
/// receiver is done.
#[test]
fn a_proxy_in_flight_outlives_the_senders_copy() {
    let _forks = forking();
    for m in METHODS {
        let ctx = get_context(m).unwrap();
        let manager = ctx.manager().unwrap();
        let base = manager.number_of_objects().unwrap();
        let inbox = mproc::Queue::new().unwrap();
        {
            let d = manager.dict::<String, u32>().unwrap();
            d.set("k", &42).unwrap();
            inbox.put(d).unwrap();
        }
        // Only the copy in the queue refers to the dict now.
        assert_eq!(manager.number_of_objects().unwrap(), base + 1, "{m}");
        let mut p = ctx.process(read_after_a_while, inbox).start().unwrap();
        assert_eq!(p.join_timeout(JOIN).unwrap(), Some(42), "{m}");
        assert!(
            settles_at(&manager, base),
            "{m}: the receiver's reference stayed"
        );
    }
}

fn hold_and_wait(args: (List<u8>, Event)) {
    let (l, started) = args;
    l.push(&1).unwrap();
    started.set().unwrap();
    std::thread::sleep(JOIN);
}

#[test]
fn a_killed_holder_gives_its_references_back() {
    let _forks = not_forking();
    for m in ["spawn", "forkserver"] {
        let ctx = get_context(m).unwrap();
        let manager = ctx.manager().unwrap();
        let base = manager.number_of_objects().unwrap();
        let started = manager.event().unwrap();
        let l = manager.list::<u8>().unwrap();
        let mut p = ctx
            .process(hold_and_wait, (l.clone(), started.clone()))
            .start()
            .unwrap();
        assert!(started.wait_timeout(JOIN).unwrap(), "{m}");
        drop(l);
        // The child's reference keeps the list (and the event: ours).
        assert_eq!(manager.number_of_objects().unwrap(), base + 2, "{m}");
        p.kill().unwrap();
        let _ = p.join_timeout(JOIN);
        assert_eq!(p.exitcode(), Some(-9), "{m}");
        assert!(
            settles_at(&manager, base + 1),
            "{m}: the dead child's reference stayed"
        );
    }
}

fn use_inherited(args: (Dict<String, u32>, Event)) -> Option<u32> {
    let (d, done) = args;
    std::thread::sleep(Duration::from_millis(50));
    let v = d.get("k").unwrap();
    drop(d);
    done.set().unwrap();
    v
}

/// A `fork` child inherits its parent's references instead of taking its
/// own: the parent keeps what it passed until the child is reaped, and the
/// child's drop gives nothing back.
#[test]
fn a_fork_child_uses_and_drops_inherited_proxies_safely() {
    let _forks = forking();
    let ctx = get_context("fork").unwrap();
    let manager = ctx.manager().unwrap();
    let base = manager.number_of_objects().unwrap();
    let done = manager.event().unwrap();
    // The dict's only proxy moves into the child (closure and fn alike).
    for closure in [true, false] {
        done.clear().unwrap();
        let d = manager.dict::<String, u32>().unwrap();
        d.set("k", &7).unwrap();
        let args = (d, done.clone());
        let mut p = if closure {
            ctx.process_closure(move || use_inherited(args))
                .start()
                .unwrap()
        } else {
            ctx.process(use_inherited, args).start().unwrap()
        };
        assert!(done.wait_timeout(JOIN).unwrap());
        // The child dropped its only copy: the dict is still there.
        assert_eq!(manager.number_of_objects().unwrap(), base + 2);
        assert_eq!(p.join_timeout(JOIN).unwrap(), Some(7));
        // Reaped: the parent's copy of the arguments is gone too.
        assert_eq!(manager.number_of_objects().unwrap(), base + 1);
    }
}

fn wait_for(go: Event) -> bool {
    go.wait_timeout(JOIN).unwrap()
}

/// The rule the test above relies on, with the overlap it excludes made on
/// purpose: a `fork` child that another thread started after the dict was
/// made keeps the parent's copy alive past the first child's `join`, until
/// it is reaped too.
#[test]
fn a_release_waits_for_every_fork_child_started_since() {
    let _forks = forking();
    let ctx = get_context("fork").unwrap();
    let manager = ctx.manager().unwrap();
    let base = manager.number_of_objects().unwrap();
    let done = manager.event().unwrap();
    let go = manager.event().unwrap();
    let d = manager.dict::<String, u32>().unwrap();
    d.set("k", &7).unwrap();
    let go2 = go.clone();
    let mut bystander = std::thread::spawn(move || ctx.process(wait_for, go2).start().unwrap())
        .join()
        .unwrap();
    let mut p = ctx
        .process(use_inherited, (d, done.clone()))
        .start()
        .unwrap();
    assert_eq!(p.join_timeout(JOIN).unwrap(), Some(7));
    // The bystander, started after the dict, still runs: the dict stays.
    assert_eq!(manager.number_of_objects().unwrap(), base + 3);
    go.set().unwrap();
    assert!(bystander.join_timeout(JOIN).unwrap());
    // Its reaping ran the release, before `join` returned.
    assert_eq!(manager.number_of_objects().unwrap(), base + 2);
}

#[test]
fn a_tcp_clients_references_are_counted_and_given_back() {
    let _forks = not_forking();
    let manager = get_context("forkserver").unwrap().manager().unwrap();
    let addr = manager.listen("127.0.0.1:0", b"key").unwrap();
    let base = manager.number_of_objects().unwrap();
    let remote = mproc::manager::connect(addr, b"key").unwrap();
    let d = remote.dict::<String, u32>().unwrap();
    let l = remote.list::<u8>().unwrap();
    assert_eq!(manager.number_of_objects().unwrap(), base + 2);
    // Calls from several threads use several pooled connections of one
    // session: a release on any of them gives back the one hold.
    std::thread::scope(|s| {
        for i in 0..4u32 {
            let d = d.clone();
            s.spawn(move || d.set(&format!("k{i}"), &i).unwrap());
        }
    });
    drop(d);
    assert!(settles_at(&manager, base + 1));
    // Dropping the client (not its proxies) ends nothing yet.
    drop(remote);
    assert_eq!(l.len().unwrap(), 0);
    assert_eq!(manager.number_of_objects().unwrap(), base + 1);
    drop(l);
    assert!(settles_at(&manager, base));
}

fn read_remote(inbox: mproc::Queue<Dict<String, u32>>) -> Option<u32> {
    let d = inbox.get_timeout(JOIN).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    d.get("k").unwrap()
}

fn remote_holder(args: (String, Event)) {
    let (addr, started) = args;
    let remote = mproc::manager::connect(addr.as_str(), b"key").unwrap();
    let l = remote.list::<u8>().unwrap();
    l.push(&1).unwrap();
    started.set().unwrap();
    std::thread::sleep(JOIN);
    drop(l);
}

#[test]
fn tcp_proxies_in_flight_and_killed_tcp_clients() {
    let _forks = not_forking();
    let ctx = get_context("forkserver").unwrap();
    let manager = ctx.manager().unwrap();
    let addr = manager.listen("127.0.0.1:0", b"key").unwrap();
    let base = manager.number_of_objects().unwrap();
    // A TCP proxy sent to another process outlives the sender's copy.
    let remote = mproc::manager::connect(addr, b"key").unwrap();
    let inbox = mproc::Queue::new().unwrap();
    {
        let d = remote.dict::<String, u32>().unwrap();
        d.set("k", &9).unwrap();
        inbox.put(d).unwrap();
    }
    assert!(settles_at(&manager, base + 1));
    let mut p = ctx.process(read_remote, inbox).start().unwrap();
    assert_eq!(p.join_timeout(JOIN).unwrap(), Some(9));
    assert!(
        settles_at(&manager, base),
        "the receiver's reference stayed"
    );
    drop(remote);

    // A process that made objects over TCP and was killed gives them back.
    let started = manager.event().unwrap();
    let mut p = ctx
        .process(remote_holder, (addr.to_string(), started.clone()))
        .start()
        .unwrap();
    assert!(started.wait_timeout(JOIN).unwrap());
    assert_eq!(manager.number_of_objects().unwrap(), base + 2);
    p.kill().unwrap();
    let _ = p.join_timeout(JOIN);
    assert!(
        settles_at(&manager, base + 1),
        "the killed client's list stayed"
    );
}

/// A container holds what it stores: the inner objects live while some
/// container or proxy refers to them, and go with the last of those.
#[test]
fn stored_proxies_are_held_by_their_containers() {
    let _forks = not_forking();
    let manager = get_context("forkserver").unwrap().manager().unwrap();
    let base = manager.number_of_objects().unwrap();
    let outer = manager.list::<Dict<String, u32>>().unwrap();
    let a = manager.dict::<String, u32>().unwrap();
    let b = manager.dict::<String, u32>().unwrap();
    outer.push(&a).unwrap();
    outer.push(&b).unwrap();
    outer.push(&a).unwrap();
    drop((a, b));
    assert!(settles_at(&manager, base + 3));
    // Read back and dropped: the reader's hold goes, the container's stays.
    for _ in 0..20 {
        let all = outer.to_vec().unwrap();
        all[0].set("k", &1).unwrap();
    }
    assert!(settles_at(&manager, base + 3));
    // Overwriting the only slot of `b` frees it; `a` is held twice.
    outer.set(1, &outer.get(0).unwrap().unwrap()).unwrap();
    assert!(settles_at(&manager, base + 2));
    assert_eq!(outer.pop().unwrap().unwrap().get("k").unwrap(), Some(1));
    assert!(settles_at(&manager, base + 2));
    // Dropping the container gives back what it held.
    drop(outer);
    assert!(settles_at(&manager, base));

    // A chain of containers goes at once, however deep: each list holds
    // the one made before it, and only the last has a proxy.
    let mut head = manager.list::<List<u8>>().unwrap();
    for _ in 0..300 {
        let next = manager.list::<List<u8>>().unwrap();
        next.push(&cast::<_, List<u8>>(&head)).unwrap();
        head = next;
    }
    assert!(settles_at(&manager, base + 301));
    drop(head);
    assert!(settles_at(&manager, base));
}

/// The same object through another proxy type (the tests store proxies of
/// a type in containers of that type's own values).
fn cast<P: BaseProxy, Q: BaseProxy>(p: &P) -> Q {
    Q::__from_raw(p.__raw().clone())
}

/// A value that refers to its own container, as CPython's, keeps it until
/// the server stops (or until it is removed from it).
#[test]
fn a_container_holding_itself_lives_until_cleared() {
    let _forks = not_forking();
    let manager = get_context("forkserver").unwrap().manager().unwrap();
    let base = manager.number_of_objects().unwrap();
    let d = manager.dict::<String, Option<Dict<String, u8>>>().unwrap();
    let same: Dict<String, u8> = cast(&d);
    d.set("me", &Some(same)).unwrap();
    let weak = d.clone();
    drop(d);
    assert!(settles_at(&manager, base + 1));
    weak.clear().unwrap();
    drop(weak);
    assert!(settles_at(&manager, base));
}

fn store_and_die(args: (List<Dict<String, u8>>, Event)) {
    let (outer, started) = args;
    let inner = outer.get(0).unwrap().unwrap();
    inner.set("seen", &1).unwrap();
    let again = outer.to_vec().unwrap();
    started.set().unwrap();
    std::thread::sleep(JOIN);
    drop((inner, again));
}

/// A process killed while holding proxies it read out of a container gives
/// those holds back; the container's own stay.
#[test]
fn a_killed_reader_of_nested_proxies_gives_its_references_back() {
    let _forks = not_forking();
    for m in ["spawn", "forkserver"] {
        let ctx = get_context(m).unwrap();
        let manager = ctx.manager().unwrap();
        let base = manager.number_of_objects().unwrap();
        let started = manager.event().unwrap();
        let outer = manager.list::<Dict<String, u8>>().unwrap();
        outer.push(&manager.dict::<String, u8>().unwrap()).unwrap();
        let mut p = ctx
            .process(store_and_die, (outer.clone(), started.clone()))
            .start()
            .unwrap();
        assert!(started.wait_timeout(JOIN).unwrap(), "{m}");
        p.kill().unwrap();
        let _ = p.join_timeout(JOIN);
        assert!(settles_at(&manager, base + 3), "{m}");
        assert_eq!(
            outer.get(0).unwrap().unwrap().get("seen").unwrap(),
            Some(1),
            "{m}"
        );
        drop(outer);
        assert!(settles_at(&manager, base + 1), "{m}: the dict stayed");
    }
}
