//! Pipe, Connection and wait() under each start method.
mod common;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use mproc::connection::{Connection, pipe, wait};
use mproc::{Error, Queue, get_context};

use common::METHODS;

const T: Duration = Duration::from_secs(30);

/// Echoes until `None` (under `fork`, where the child inherits every fd of
/// the parent, EOF cannot be relied on) or EOF.
fn echo(conn: Connection<Option<Vec<String>>>) -> usize {
    let mut n = 0;
    loop {
        match conn.recv_timeout(T) {
            Ok(Some(v)) => {
                conn.send(&Some(v)).unwrap();
                n += 1;
            }
            Ok(None) | Err(Error::Closed) => return n,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn ping_pong_and_eof_each_method() {
    for m in METHODS {
        let (a, b) = pipe::<Option<Vec<String>>>(true).unwrap();
        let mut p = get_context(m).unwrap().process(echo, b).start().unwrap();
        for i in 0..100 {
            let v = Some(vec![format!("{m}-{i}"); i % 5]);
            a.send(&v).unwrap();
            assert_eq!(a.recv_timeout(T).unwrap(), v);
        }
        if m == "fork" {
            a.send(&None).unwrap();
        } else {
            a.close();
        }
        assert_eq!(p.join_timeout(T).unwrap(), 100, "{m}");
    }
}

fn big_echo(conn: Connection<()>) {
    let b = conn.recv_bytes_timeout(T).unwrap();
    conn.send_bytes(&b).unwrap();
}

#[test]
fn large_message_round_trip() {
    for m in METHODS {
        let (a, b) = pipe::<()>(true).unwrap();
        let mut p = get_context(m)
            .unwrap()
            .process(big_echo, b)
            .start()
            .unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        a.send_bytes(&data).unwrap();
        assert_eq!(a.recv_bytes_timeout(T).unwrap(), data);
        p.join_timeout(T).unwrap();
    }
}

#[test]
fn eof_after_peer_drops() {
    let (a, b) = pipe::<u32>(true).unwrap();
    b.send(&1).unwrap();
    drop(b);
    assert_eq!(a.recv().unwrap(), 1);
    assert!(matches!(a.recv(), Err(Error::Closed)));
    assert!(matches!(a.send(&2), Err(Error::Closed)));
}

#[test]
fn one_way_pipe_refuses_wrong_direction() {
    let (r, w) = pipe::<u32>(false).unwrap();
    assert!(r.readable() && !r.writable());
    assert!(w.writable() && !w.readable());
    assert!(r.send(&1).is_err());
    assert!(w.recv_timeout(Duration::from_millis(10)).is_err());
    w.send(&5).unwrap();
    // poll checks the direction too (it used to answer `Ok(false)`).
    for timeout in [None, Some(Duration::ZERO)] {
        let e = w.poll(timeout).unwrap_err();
        assert!(e.to_string().contains("not readable"), "{e}");
    }
    assert!(r.poll(Some(Duration::from_secs(30))).unwrap());
    assert_eq!(r.recv().unwrap(), 5);
}

#[test]
fn oversized_message_refused_before_writing() {
    let (mut a, b) = pipe::<Vec<u8>>(true).unwrap();
    a.set_max_message_size(1000);
    let err = a.send(&vec![0u8; 2000]).unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");
    assert!(a.send_bytes(&[0u8; 1001]).is_err());
    // Nothing reached the peer.
    assert!(!b.poll(Some(Duration::ZERO)).unwrap());
    // A receiver with a small limit refuses (and discards) a big message.
    let (c, mut d) = pipe::<()>(true).unwrap();
    d.set_max_message_size(100_000);
    c.send_bytes(&vec![1u8; 200_000]).unwrap();
    c.send_bytes(b"next").unwrap();
    assert!(matches!(d.recv_bytes(), Err(Error::Codec(_))));
    assert_eq!(d.recv_bytes().unwrap(), b"next");
}

#[test]
fn corrupt_bytes_are_a_decode_error() {
    let (a, b) = pipe::<(String, Vec<u64>)>(true).unwrap();
    for junk in [
        &b""[..],
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        b"\x05ab",
        b"\xfc\xff\xff\xff\x7f",
    ] {
        a.send_bytes(junk).unwrap();
        assert!(
            matches!(b.recv_timeout(T), Err(Error::Codec(_))),
            "{junk:?}"
        );
    }
    a.send(&("ok".into(), vec![1])).unwrap();
    assert_eq!(b.recv().unwrap().0, "ok");
}

#[test]
fn recv_bytes_into_and_too_short() {
    let (a, b) = pipe::<()>(true).unwrap();
    a.send_bytes(b"hello").unwrap();
    let mut buf = [0u8; 16];
    let n = b.recv_bytes_into(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    a.send_bytes(&[7u8; 32]).unwrap();
    assert!(b.recv_bytes_into(&mut buf).is_err());
}

/// Runs `wait`, given `timeout`, and checks that it took at least that
/// long and less than two seconds; gives back what it returned.
fn on_time<R>(timeout: Duration, wait: impl FnOnce(Duration) -> R) -> R {
    let t0 = Instant::now();
    let r = wait(timeout);
    let e = t0.elapsed();
    assert!(e >= timeout && e < Duration::from_secs(2), "{e:?}");
    r
}

#[test]
fn timeouts_return_on_time() {
    let (_a, b) = pipe::<u8>(true).unwrap();
    let ms = Duration::from_millis;
    let r = on_time(ms(200), |t| b.recv_timeout(t));
    assert!(matches!(r, Err(Error::Timeout)));
    assert!(!on_time(ms(150), |t| b.poll(Some(t))).unwrap());
    let ready = on_time(ms(150), |t| wait(&[b.as_fd()], Some(t))).unwrap();
    assert!(ready.is_empty());
}

fn sleep_then_send(arg: (u64, Connection<u64>)) {
    std::thread::sleep(Duration::from_millis(arg.0));
    arg.1.send(&arg.0).unwrap();
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[test]
fn wait_over_connections_queues_and_sentinels() {
    let ctx = get_context("forkserver").unwrap();
    let (a, b) = pipe::<u64>(true).unwrap();
    let (c, d) = pipe::<u64>(true).unwrap();
    let q: Queue<u8> = Queue::new().unwrap();
    let mut p1 = ctx.process(sleep_then_send, (50, b)).start().unwrap();
    let mut p2 = ctx.process(sleep_ms, 30_000).start().unwrap();
    let ready = wait(&[a.as_fd(), c.as_fd(), q.as_fd()], Some(T)).unwrap();
    assert_eq!(ready, vec![0]);
    assert_eq!(a.recv().unwrap(), 50);
    q.put(1).unwrap();
    let ready = wait(&[a.as_fd(), c.as_fd(), q.as_fd()], Some(T)).unwrap();
    // `a` may also be ready by now: EOF once p1 has exited.
    assert!(ready.contains(&2) && !ready.contains(&1), "{ready:?}");
    drop(d);
    p1.join_timeout(T).unwrap();
    let sentinel = p2.sentinel().unwrap();
    let ready = wait(&[sentinel, c.as_fd()], Some(T)).unwrap();
    assert_eq!(ready, vec![1], "c sees EOF, p2 still runs");
    p2.kill().unwrap();
    let ready = wait(&[p2.sentinel().unwrap()], Some(T)).unwrap();
    assert_eq!(ready, vec![0]);
    let _ = p2.join_timeout(T);
    assert_eq!(p2.exitcode(), Some(-9));
}

fn sleep_then_put(arg: (u64, Queue<u64>)) {
    std::thread::sleep(Duration::from_millis(arg.0));
    arg.1.put(arg.0).unwrap();
}

/// A queue's fd (its doorbell) wakes `wait` when another process puts, and
/// goes quiet once a get finds the queue empty.
#[test]
fn wait_wakes_on_a_put_from_another_process() {
    for m in METHODS {
        let q: Queue<u64> = Queue::new().unwrap();
        let mut p = get_context(m)
            .unwrap()
            .process(sleep_then_put, (200, q.clone()))
            .start()
            .unwrap();
        assert!(
            wait(&[q.as_fd()], Some(Duration::from_millis(20)))
                .unwrap()
                .is_empty(),
            "{m}: ready before the put"
        );
        assert_eq!(wait(&[q.as_fd()], Some(T)).unwrap(), vec![0], "{m}");
        assert_eq!(q.get_nowait().unwrap(), 200);
        assert!(q.get_nowait().is_err());
        assert!(
            wait(&[q.as_fd()], Some(Duration::from_millis(20)))
                .unwrap()
                .is_empty(),
            "{m}: ready after the queue was found empty"
        );
        p.join_timeout(T).unwrap();
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Bundle {
    label: String,
    conns: Vec<Connection<String>>,
}

fn reply_on_all(b: Bundle) -> usize {
    for c in &b.conns {
        c.send(&b.label).unwrap();
    }
    b.conns.len()
}

fn forward(conn: Connection<Connection<String>>) {
    let inner = conn.recv().unwrap();
    inner.send(&"through a connection".to_string()).unwrap();
}

#[test]
fn connections_inside_structs_and_through_connections() {
    for (m, ctx) in common::contexts() {
        let pairs: Vec<_> = (0..3).map(|_| pipe::<String>(true).unwrap()).collect();
        let (mine, theirs): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
        let bundle = Bundle {
            label: m.into(),
            conns: theirs,
        };
        let mut p = ctx.process(reply_on_all, bundle).start().unwrap();
        for c in &mine {
            assert_eq!(c.recv_timeout(T).unwrap(), m);
        }
        assert_eq!(p.join_timeout(T).unwrap(), 3);

        let (outer_a, outer_b) = pipe::<Connection<String>>(true).unwrap();
        let (x, y) = pipe::<String>(true).unwrap();
        let mut p = ctx.process(forward, outer_b).start().unwrap();
        outer_a.send(&y).unwrap();
        drop(y);
        assert_eq!(x.recv_timeout(T).unwrap(), "through a connection");
        p.join_timeout(T).unwrap();
    }
}

#[test]
fn serializing_outside_mproc_is_an_error() {
    let (a, _b) = pipe::<u8>(true).unwrap();
    let err = forkserver::codec::encode(&a).unwrap_err();
    assert!(
        err.to_string().contains("only be sent through mproc"),
        "{err}"
    );
    let q: Queue<u8> = Queue::new().unwrap();
    let err = forkserver::codec::encode(&q).unwrap_err();
    assert!(
        err.to_string().contains("only be sent through mproc"),
        "{err}"
    );
}
