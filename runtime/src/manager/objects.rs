//! The objects a manager server holds, and their methods by name.
//!
//! Every object sits behind its own mutex, so each call is atomic with
//! respect to every other call on that object, from any client. Values are
//! kept encoded ([`Bytes`]): the server never decodes a user's type, except
//! numbers for the in-place `add`.
//!
//! Blocking methods (lock acquires, queue gets, waits) take a timeout, and
//! even without one they never block for good on a client that is gone: a
//! wait sleeps in slices of [`SLICE`] and gives up when the calling
//! connection's peer has hung up. Locks remember the connection that took
//! them, and [`Object::release_conn`] frees whatever a closed connection
//! still held, so a client killed inside a critical section does not stall
//! everyone else.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::protocol::{
    Bytes, Item, NumTag, Owner, RemoteError, RemoteErrorKind as K, Wait, num_add,
};
use super::transport::Conn;
use crate::codec;

/// Longest single sleep of a blocking call before it checks its client.
pub(crate) const SLICE: Duration = Duration::from_millis(50);

/// What a call knows of its caller.
pub(crate) struct Cx<'a> {
    /// The connection's number in this server.
    pub(crate) conn_id: u64,
    /// The connection itself (to notice a caller that went away).
    pub(crate) conn: &'a Conn,
    /// The server's count of holds, which stored values take from.
    pub(crate) holds: &'a Arc<dyn Holds>,
    /// Holds taken for the caller on the objects a reply hands out; the
    /// server books them to the caller's session once the call succeeded
    /// (and gives them back if it failed).
    pub(crate) given: RefCell<Vec<u64>>,
}

impl Cx<'_> {
    fn gone(&self) -> bool {
        self.conn.peer_gone()
    }

    /// Keeps `item` in a container: one hold on each object it refers to,
    /// held by the returned value.
    ///
    /// # Errors
    /// `NoSuchObject` when one of them does not exist (nothing is held then).
    pub(crate) fn keep(&self, item: Item) -> Result<Val, RemoteError> {
        let mut v = Val {
            bytes: item.bytes.0,
            refs: Vec::with_capacity(item.refs.len().min(1024)),
            holds: None,
        };
        if item.refs.is_empty() {
            return Ok(v);
        }
        v.holds = Some(Arc::downgrade(self.holds));
        for id in item.refs {
            if !self.holds.try_ref(id) {
                // `v` gives back what it took so far.
                return Err(RemoteError::new(
                    K::NoSuchObject,
                    format!("a stored value refers to object {id}, which does not exist"),
                ));
            }
            v.refs.push(id);
        }
        Ok(v)
    }

    /// Hands `v` out to the caller: a copy, with a hold taken for the
    /// caller on each object it refers to.
    pub(crate) fn give(&self, v: &Val) -> Item {
        let mut given = self.given.borrow_mut();
        let refs = v
            .refs
            .iter()
            .copied()
            // Held by `v`, so alive; a failure would mean a bug, and the
            // marker then fails to decode on the client instead.
            .filter(|&id| self.holds.try_ref(id))
            .inspect(|&id| given.push(id))
            .collect();
        Item {
            bytes: Bytes(v.bytes.clone()),
            refs,
        }
    }

    /// Registers `obj`, made by this call, as a new object in the server,
    /// with one hold for the caller (booked to its session once the call
    /// succeeds, given back, freeing the object, if it fails); its id.
    pub(crate) fn adopt(&self, obj: Arc<dyn Object>) -> u64 {
        let id = self.holds.adopt(obj);
        self.given.borrow_mut().push(id);
        id
    }

    fn give_opt(&self, v: Option<&Val>) -> Option<Item> {
        v.map(|v| self.give(v))
    }

    fn give_all<'v>(&self, vs: impl IntoIterator<Item = &'v Val>) -> Vec<Item> {
        vs.into_iter().map(|v| self.give(v)).collect()
    }
}

/// The server's count of holds on its objects, as stored values see it.
pub(crate) trait Holds: Send + Sync {
    /// One more hold on a live object; false when there is no such object.
    fn try_ref(&self, id: u64) -> bool;
    /// Gives back `n` holds on `id`; the last one frees the object.
    fn unref(&self, id: u64, n: u64);
    /// Adds a new object with one hold on it; its id.
    fn adopt(&self, obj: Arc<dyn Object>) -> u64;
}

/// A value a container keeps: its encoding, and one hold on each manager
/// object whose proxy it holds, given back when the value is dropped
/// (overwritten, removed, or dropped with its container).
pub(crate) struct Val {
    pub(crate) bytes: Vec<u8>,
    refs: Vec<u64>,
    /// Where the holds go back to; `None` when there are none. Weak: a
    /// value must not keep the server alive (the server holds it).
    holds: Option<Weak<dyn Holds>>,
}

impl Val {
    /// A value that refers to no object.
    pub(crate) fn plain(bytes: Vec<u8>) -> Val {
        Val {
            bytes,
            refs: Vec::new(),
            holds: None,
        }
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        if let Some(holds) = self.holds.as_ref().and_then(Weak::upgrade) {
            for &id in &self.refs {
                holds.unref(id, 1);
            }
        }
    }
}

/// The outcome of one call: the encoded return value.
pub(crate) type Ret = Result<Vec<u8>, RemoteError>;

/// A shared object.
pub(crate) trait Object: Send + Sync + 'static {
    /// Its kind (`"dict"`, `"lock"`, … or a registered type's name).
    fn kind(&self) -> &str;
    /// Runs `method` with encoded `args`.
    fn call(&self, cx: &Cx<'_>, method: &str, args: &[u8]) -> Ret;
    /// Whether calls may leave something held by the connection.
    fn holds(&self) -> bool {
        false
    }
    /// Frees what connection `conn` (now closed) still held.
    fn release_conn(&self, _conn: u64) {}
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn de<T: DeserializeOwned>(b: &[u8]) -> Result<T, RemoteError> {
    codec::decode(b, Vec::new()).map_err(|e| RemoteError::new(K::BadArguments, e.to_string()))
}

pub(crate) fn ok<T: Serialize + ?Sized>(v: &T) -> Ret {
    codec::encode(v)
        .map(|(b, _)| b)
        .map_err(|e| RemoteError::new(K::Failed, e.to_string()))
}

pub(crate) fn no_method(kind: &str, m: &str) -> RemoteError {
    RemoteError::new(K::NoSuchMethod, format!("{kind} has no method {m:?}"))
}

pub(crate) fn gone() -> RemoteError {
    RemoteError::new(K::Unsupported, "the caller went away")
}

/// Why a wait ended without its condition.
pub(crate) enum Unmet {
    Timeout,
    Gone,
}

/// Waits on `cv` until `ready` holds, for at most `wait`, in slices that
/// check whether the caller is still there.
pub(crate) fn wait_until<'a, T>(
    cx: &Cx<'_>,
    cv: &Condvar,
    mut g: MutexGuard<'a, T>,
    wait: Wait,
    mut ready: impl FnMut(&mut T) -> bool,
) -> (MutexGuard<'a, T>, Result<(), Unmet>) {
    // A peer may send any duration: one past what an Instant holds waits
    // without a deadline rather than overflowing.
    let deadline = wait.and_then(|d| Instant::now().checked_add(d));
    loop {
        if ready(&mut g) {
            return (g, Ok(()));
        }
        let now = Instant::now();
        let slice = match deadline {
            Some(d) if now >= d => return (g, Err(Unmet::Timeout)),
            Some(d) => (d - now).min(SLICE),
            None => SLICE,
        };
        g = cv
            .wait_timeout(g, slice)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        // A caller that went away must not take what it waited for (an
        // item it would never receive, a lock it would never release).
        if cx.gone() {
            return (g, Err(Unmet::Gone));
        }
    }
}

/// Creates a built-in object of `kind` from its encoded arguments.
pub(crate) fn create_builtin(
    kind: &str,
    args: &[u8],
) -> Option<Result<Box<dyn Object>, RemoteError>> {
    let made: Result<Box<dyn Object>, RemoteError> = (|| {
        Ok(match kind {
            "dict" => Box::new(DictObj::default()) as Box<dyn Object>,
            "list" | "array" => Box::new(ListObj {
                kind: if kind == "list" { "list" } else { "array" },
                items: Mutex::new(
                    de::<Vec<Bytes>>(args)?
                        .into_iter()
                        .map(|b| Val::plain(b.0))
                        .collect(),
                ),
            }),
            "namespace" => Box::new(NamespaceObj::default()),
            "set" => Box::new(SetObj::default()),
            "value" => Box::new(ValueObj(Mutex::new(Val::plain(de::<Bytes>(args)?.0)))),
            "queue" | "joinable_queue" => {
                let maxsize: Option<u64> = de(args)?;
                Box::new(QueueObj {
                    joinable: kind == "joinable_queue",
                    // As Python's `queue.Queue`: 0 is no bound.
                    maxsize: maxsize
                        .filter(|&m| m > 0)
                        .map(|m| usize::try_from(m).unwrap_or(usize::MAX)),
                    st: Mutex::new(QueueState::default()),
                    cv: Condvar::new(),
                })
            }
            "lock" | "rlock" => Box::new(LockObj {
                reentrant: kind == "rlock",
                st: Mutex::new(LockState::default()),
                cv: Condvar::new(),
            }),
            "condition" => Box::new(LockObj {
                reentrant: true,
                st: Mutex::new(LockState::default()),
                cv: Condvar::new(),
            })
            .into_condition(),
            "semaphore" | "bounded_semaphore" => {
                let value: u64 = de(args)?;
                Box::new(SemaphoreObj {
                    bound: (kind == "bounded_semaphore").then_some(value),
                    value: Mutex::new(value),
                    cv: Condvar::new(),
                })
            }
            "event" => Box::new(EventObj {
                set: Mutex::new(false),
                cv: Condvar::new(),
            }),
            "barrier" => {
                let parties: u64 = de(args)?;
                if parties == 0 {
                    return Err(RemoteError::new(
                        K::Value,
                        "a barrier needs at least 1 party",
                    ));
                }
                Box::new(BarrierObj {
                    parties,
                    st: Mutex::new(BarrierState::default()),
                    cv: Condvar::new(),
                })
            }
            _ => return Err(RemoteError::new(K::NoSuchObject, String::new())),
        })
    })();
    match made {
        Err(e) if e.kind == K::NoSuchObject => None,
        other => Some(other),
    }
}

// ---------------------------------------------------------------- dict

/// A map that keeps insertion order (as Python's dict).
#[derive(Default)]
struct OrderedMap {
    index: HashMap<Vec<u8>, usize>,
    slots: Vec<Option<(Vec<u8>, Val)>>,
}

impl OrderedMap {
    fn get(&self, k: &[u8]) -> Option<&Val> {
        let i = *self.index.get(k)?;
        self.slots[i].as_ref().map(|(_, v)| v)
    }

    /// Sets `k`; the value it replaces (its holds go when it is dropped).
    fn insert(&mut self, k: Vec<u8>, v: Val) -> Option<Val> {
        match self.index.get(&k) {
            Some(&i) => match &mut self.slots[i] {
                Some(slot) => Some(std::mem::replace(&mut slot.1, v)),
                None => None,
            },
            None => {
                self.index.insert(k.clone(), self.slots.len());
                self.slots.push(Some((k, v)));
                None
            }
        }
    }

    fn remove(&mut self, k: &[u8]) -> Option<Val> {
        let i = self.index.remove(k)?;
        let v = self.slots[i].take().map(|(_, v)| v);
        if self.slots.len() > 2 * self.index.len() + 16 {
            self.slots.retain(Option::is_some);
            for (n, (key, _)) in self.slots.iter().flatten().enumerate() {
                self.index.insert(key.clone(), n);
            }
        }
        v
    }

    fn iter(&self) -> impl Iterator<Item = &(Vec<u8>, Val)> {
        self.slots.iter().flatten()
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    /// Empties the map; the values are returned, to be dropped once the
    /// map's lock is released.
    fn take(&mut self) -> Vec<Option<(Vec<u8>, Val)>> {
        self.index.clear();
        std::mem::take(&mut self.slots)
    }
}

#[derive(Default)]
struct DictObj(Mutex<OrderedMap>);

impl Object for DictObj {
    fn kind(&self) -> &str {
        "dict"
    }

    fn call(&self, cx: &Cx<'_>, method: &str, args: &[u8]) -> Ret {
        let mut m = lock(&self.0);
        match method {
            "get" => {
                let k: Bytes = de(args)?;
                ok(&cx.give_opt(m.get(&k.0)))
            }
            "set" => {
                let (k, v): (Bytes, Item) = de(args)?;
                let old = m.insert(k.0, cx.keep(v)?);
                drop(m);
                drop(old);
                ok(&())
            }
            "remove" => {
                let k: Bytes = de(args)?;
                let old = m.remove(&k.0);
                drop(m);
                ok(&cx.give_opt(old.as_ref()))
            }
            "contains" => {
                let k: Bytes = de(args)?;
                ok(&m.get(&k.0).is_some())
            }
            "len" => ok(&(m.len() as u64)),
            "keys" => ok(&m.iter().map(|(k, _)| Bytes(k.clone())).collect::<Vec<_>>()),
            "values" => ok(&cx.give_all(m.iter().map(|(_, v)| v))),
            "items" => ok(&m
                .iter()
                .map(|(k, v)| (Bytes(k.clone()), cx.give(v)))
                .collect::<Vec<_>>()),
            "update" => {
                let items: Vec<(Bytes, Item)> = de(args)?;
                let mut kept = Vec::with_capacity(items.len().min(1 << 16));
                for (k, v) in items {
                    kept.push((k.0, cx.keep(v)?));
                }
                let old: Vec<Option<Val>> = kept.into_iter().map(|(k, v)| m.insert(k, v)).collect();
                drop(m);
                drop(old);
                ok(&())
            }
            "clear" => {
                let old = m.take();
                drop(m);
                drop(old);
                ok(&())
            }
            "get_or_default" => {
                let (k, d): (Bytes, Item) = de(args)?;
                match m.get(&k.0) {
                    Some(v) => ok(&cx.give(v)),
                    // The default goes back as it came, with holds of its own.
                    None => ok(&cx.give(&cx.keep(d)?)),
                }
            }
            "setdefault" => {
                let (k, d): (Bytes, Item) = de(args)?;
                if let Some(v) = m.get(&k.0) {
                    return ok(&cx.give(v));
                }
                let d = cx.keep(d)?;
                let out = cx.give(&d);
                m.insert(k.0, d);
                ok(&out)
            }
            "cas" => {
                let (k, expected, new): (Bytes, Option<Bytes>, Option<Item>) = de(args)?;
                if m.get(&k.0).map(|v| v.bytes.as_slice())
                    != expected.as_ref().map(|b| b.0.as_slice())
                {
                    return ok(&false);
                }
                let old = match new {
                    Some(v) => {
                        let v = cx.keep(v)?;
                        m.insert(k.0, v)
                    }
                    None => m.remove(&k.0),
                };
                drop(m);
                drop(old);
                ok(&true)
            }
            "add" => {
                let (k, tag, delta): (Bytes, NumTag, Bytes) = de(args)?;
                let sum = num_add(tag, m.get(&k.0).map(|v| v.bytes.as_slice()), &delta.0)?;
                let old = m.insert(k.0, Val::plain(sum.clone()));
                drop(m);
                drop(old);
                ok(&Bytes(sum))
            }
            m => Err(no_method("dict", m)),
        }
    }
}

// ---------------------------------------------------------------- list, array

struct ListObj {
    kind: &'static str,
    items: Mutex<Vec<Val>>,
}

/// Python's index rules: negative counts from the end.
fn norm(i: i64, len: usize) -> Option<usize> {
    let i = if i < 0 { i + len as i64 } else { i };
    (0..len as i64).contains(&i).then_some(i as usize)
}

fn index_error(i: i64, len: usize) -> RemoteError {
    RemoteError::new(K::Index, format!("index {i} out of range for length {len}"))
}

impl Object for ListObj {
    fn kind(&self) -> &str {
        self.kind
    }

    fn call(&self, cx: &Cx<'_>, method: &str, args: &[u8]) -> Ret {
        let mut v = lock(&self.items);
        let fixed = self.kind == "array";
        // Values replaced or removed are dropped after the lock (their
        // holds go back then, which may free other objects).
        let mut dropped: Vec<Val> = Vec::new();
        let r = match method {
            "get" => {
                let i: i64 = de(args)?;
                ok(&cx.give_opt(norm(i, v.len()).map(|i| &v[i])))
            }
            "set" => {
                let (i, x): (i64, Item) = de(args)?;
                let n = norm(i, v.len()).ok_or_else(|| index_error(i, v.len()))?;
                dropped.push(std::mem::replace(&mut v[n], cx.keep(x)?));
                ok(&())
            }
            "len" => ok(&(v.len() as u64)),
            "snapshot" => ok(&cx.give_all(v.iter())),
            "assign" => {
                let all: Vec<Item> = de(args)?;
                if fixed && all.len() != v.len() {
                    return Err(RemoteError::new(
                        K::Value,
                        format!(
                            "an array of length {} cannot take {} items",
                            v.len(),
                            all.len()
                        ),
                    ));
                }
                let kept = all
                    .into_iter()
                    .map(|x| cx.keep(x))
                    .collect::<Result<Vec<_>, _>>()?;
                dropped = std::mem::replace(&mut *v, kept);
                ok(&())
            }
            "contains" => {
                let x: Bytes = de(args)?;
                ok(&v.iter().any(|y| y.bytes == x.0))
            }
            "index" => {
                let x: Bytes = de(args)?;
                ok(&v.iter().position(|y| y.bytes == x.0).map(|p| p as u64))
            }
            _ if fixed => Err(no_method(self.kind, method)),
            "push" => {
                let x: Item = de(args)?;
                v.push(cx.keep(x)?);
                ok(&())
            }
            "extend" => {
                let xs: Vec<Item> = de(args)?;
                let kept = xs
                    .into_iter()
                    .map(|x| cx.keep(x))
                    .collect::<Result<Vec<_>, _>>()?;
                v.extend(kept);
                ok(&())
            }
            "pop" => {
                let i: Option<i64> = de(args)?;
                let len = v.len();
                let at = match i {
                    None => len.checked_sub(1),
                    Some(i) => norm(i, len),
                };
                let out = at.map(|i| v.remove(i));
                let r = ok(&cx.give_opt(out.as_ref()));
                dropped.extend(out);
                r
            }
            "insert" => {
                let (i, x): (i64, Item) = de(args)?;
                let len = v.len() as i64;
                let at = if i < 0 { (i + len).max(0) } else { i.min(len) };
                v.insert(at as usize, cx.keep(x)?);
                ok(&())
            }
            "remove" => {
                let x: Bytes = de(args)?;
                match v.iter().position(|y| y.bytes == x.0) {
                    Some(p) => {
                        dropped.push(v.remove(p));
                        ok(&true)
                    }
                    None => ok(&false),
                }
            }
            "clear" => {
                dropped = std::mem::take(&mut *v);
                ok(&())
            }
            m => Err(no_method(self.kind, m)),
        };
        drop(v);
        drop(dropped);
        r
    }
}

// ---------------------------------------------------------------- set

/// A set of encoded members in insertion order (Python's `set`, whose
/// order is arbitrary: this one is at least stable). Members are compared
/// by their encoding and never hold a proxy, so they hold no object.
#[derive(Default)]
struct SetObj(Mutex<OrderedMap>);

impl SetObj {
    /// Runs one set method on `m`: the whole of the set's behaviour,
    /// apart from its lock (so it is tested without a server).
    fn apply(m: &mut OrderedMap, method: &str, args: &[u8]) -> Ret {
        match method {
            "add" => {
                set_add(m, de::<Bytes>(args)?.0);
                ok(&())
            }
            "discard" => ok(&m.remove(&de::<Bytes>(args)?.0).is_some()),
            "remove" => match m.remove(&de::<Bytes>(args)?.0) {
                Some(_) => ok(&()),
                None => Err(RemoteError::new(K::Key, "the member is not in the set")),
            },
            "pop" => {
                let first = m.iter().next().map(|(k, _)| k.clone());
                if let Some(k) = &first {
                    m.remove(k);
                }
                ok(&first.map(Bytes))
            }
            "clear" => {
                m.take();
                ok(&())
            }
            "contains" => ok(&m.get(&de::<Bytes>(args)?.0).is_some()),
            "len" => ok(&(m.len() as u64)),
            "snapshot" => ok(&set_members(m, |_| true)),
            "update" => {
                for x in de::<Vec<Bytes>>(args)? {
                    set_add(m, x.0);
                }
                ok(&())
            }
            "union" => {
                let mut out = set_members(m, |_| true);
                let mut seen: HashSet<Vec<u8>> = out.iter().map(|b| b.0.clone()).collect();
                out.extend(
                    de::<Vec<Bytes>>(args)?
                        .into_iter()
                        .filter(|x| seen.insert(x.0.clone())),
                );
                ok(&out)
            }
            "intersection" | "intersection_update" | "difference" | "difference_update" => {
                let others = distinct(args)?;
                let keep_common = method.starts_with("intersection");
                let kept = set_members(m, |k| others.contains(k) == keep_common);
                if method.ends_with("_update") {
                    set_replace(m, kept);
                    return ok(&());
                }
                ok(&kept)
            }
            "symmetric_difference" | "symmetric_difference_update" => {
                let mut seen = HashSet::new();
                let mut others = Vec::new();
                for x in de::<Vec<Bytes>>(args)? {
                    if seen.insert(x.0.clone()) {
                        others.push(x);
                    }
                }
                let mut out = set_members(m, |k| !seen.contains(k));
                out.extend(others.into_iter().filter(|x| m.get(&x.0).is_none()));
                if method.ends_with("_update") {
                    set_replace(m, out);
                    return ok(&());
                }
                ok(&out)
            }
            "isdisjoint" => ok(&distinct(args)?.iter().all(|x| m.get(x).is_none())),
            // `s <= xs` and `s < xs` (a proper subset: `xs` has more).
            "issubset" | "is_proper_subset" => {
                let others = distinct(args)?;
                let sub = m.iter().all(|(k, _)| others.contains(k));
                ok(&(sub && (method == "issubset" || others.len() > m.len())))
            }
            // `s >= xs` and `s > xs` (a proper superset: `s` has more).
            "issuperset" | "is_proper_superset" => {
                let others = distinct(args)?;
                let sup = others.iter().all(|x| m.get(x).is_some());
                ok(&(sup && (method == "issuperset" || m.len() > others.len())))
            }
            other => Err(no_method("set", other)),
        }
    }
}

/// Adds a member unless it is there (where it keeps its place).
fn set_add(m: &mut OrderedMap, x: Vec<u8>) {
    if m.get(&x).is_none() {
        m.insert(x, Val::plain(Vec::new()));
    }
}

/// The members that `keep` accepts, in order.
fn set_members(m: &OrderedMap, keep: impl Fn(&[u8]) -> bool) -> Vec<Bytes> {
    m.iter()
        .filter(|(k, _)| keep(k))
        .map(|(k, _)| Bytes(k.clone()))
        .collect()
}

/// Makes `members` (distinct already) the whole set.
fn set_replace(m: &mut OrderedMap, members: Vec<Bytes>) {
    m.take();
    for x in members {
        m.insert(x.0, Val::plain(Vec::new()));
    }
}

/// The distinct members of an encoded `Vec<Bytes>`.
fn distinct(args: &[u8]) -> Result<HashSet<Vec<u8>>, RemoteError> {
    Ok(de::<Vec<Bytes>>(args)?.into_iter().map(|b| b.0).collect())
}

impl Object for SetObj {
    fn kind(&self) -> &str {
        "set"
    }

    fn call(&self, _cx: &Cx<'_>, method: &str, args: &[u8]) -> Ret {
        SetObj::apply(&mut lock(&self.0), method, args)
    }
}

// ---------------------------------------------------------------- namespace

#[derive(Default)]
struct NamespaceObj(Mutex<HashMap<String, Val>>);

impl Object for NamespaceObj {
    fn kind(&self) -> &str {
        "namespace"
    }

    fn call(&self, cx: &Cx<'_>, method: &str, args: &[u8]) -> Ret {
        let mut m = lock(&self.0);
        match method {
            "get" => {
                let name: String = de(args)?;
                ok(&cx.give_opt(m.get(&name)))
            }
            "set" => {
                let (name, v): (String, Item) = de(args)?;
                let old = m.insert(name, cx.keep(v)?);
                drop(m);
                drop(old);
                ok(&())
            }
            "del" => {
                let name: String = de(args)?;
                let old = m.remove(&name);
                drop(m);
                ok(&old.is_some())
            }
            "names" => {
                let mut names: Vec<&String> = m.keys().collect();
                names.sort();
                ok(&names)
            }
            "add" => {
                let (name, tag, delta): (String, NumTag, Bytes) = de(args)?;
                let sum = num_add(tag, m.get(&name).map(|v| v.bytes.as_slice()), &delta.0)?;
                let old = m.insert(name, Val::plain(sum.clone()));
                drop(m);
                drop(old);
                ok(&Bytes(sum))
            }
            m => Err(no_method("namespace", m)),
        }
    }
}

// ---------------------------------------------------------------- value

struct ValueObj(Mutex<Val>);

impl Object for ValueObj {
    fn kind(&self) -> &str {
        "value"
    }

    fn call(&self, cx: &Cx<'_>, method: &str, args: &[u8]) -> Ret {
        let mut v = lock(&self.0);
        match method {
            "get" => ok(&cx.give(&v)),
            "set" => {
                let new = cx.keep(de::<Item>(args)?)?;
                let old = std::mem::replace(&mut *v, new);
                drop(v);
                drop(old);
                ok(&())
            }
            "swap" => {
                let new = cx.keep(de::<Item>(args)?)?;
                let old = std::mem::replace(&mut *v, new);
                drop(v);
                ok(&cx.give(&old))
            }
            "cas" => {
                let (expected, new): (Bytes, Item) = de(args)?;
                if v.bytes != expected.0 {
                    return ok(&false);
                }
                let new = cx.keep(new)?;
                let old = std::mem::replace(&mut *v, new);
                drop(v);
                drop(old);
                ok(&true)
            }
            "add" => {
                let (tag, delta): (NumTag, Bytes) = de(args)?;
                let sum = num_add(tag, Some(&v.bytes), &delta.0)?;
                let old = std::mem::replace(&mut *v, Val::plain(sum.clone()));
                drop(v);
                drop(old);
                ok(&Bytes(sum))
            }
            m => Err(no_method("value", m)),
        }
    }
}

// ---------------------------------------------------------------- queues

#[derive(Default)]
struct QueueState {
    items: VecDeque<Val>,
    unfinished: u64,
}

struct QueueObj {
    joinable: bool,
    maxsize: Option<usize>,
    st: Mutex<QueueState>,
    cv: Condvar,
}

impl Object for QueueObj {
    fn kind(&self) -> &str {
        if self.joinable {
            "joinable_queue"
        } else {
            "queue"
        }
    }

    fn call(&self, cx: &Cx<'_>, method: &str, args: &[u8]) -> Ret {
        let g = lock(&self.st);
        let full = |s: &QueueState| self.maxsize.is_some_and(|m| s.items.len() >= m);
        match method {
            "put" => {
                let (item, wait): (Item, Wait) = de(args)?;
                // Kept (its objects held) before the wait: they cannot go
                // while the putter waits for room.
                let item = cx.keep(item)?;
                let (mut g, r) = wait_until(cx, &self.cv, g, wait, |s| !full(s));
                match r {
                    Ok(()) => {
                        g.items.push_back(item);
                        g.unfinished += 1;
                        self.cv.notify_all();
                        ok(&())
                    }
                    // Python's `put` raises `Full` after a timeout too.
                    Err(Unmet::Timeout) => Err(RemoteError::new(K::Full, "the queue is full")),
                    Err(Unmet::Gone) => Err(gone()),
                }
            }
            "get" => {
                let wait: Wait = de(args)?;
                let (mut g, r) = wait_until(cx, &self.cv, g, wait, |s| !s.items.is_empty());
                match r {
                    Ok(()) => {
                        let item = g
                            .items
                            .pop_front()
                            .unwrap_or_else(|| Val::plain(Vec::new()));
                        self.cv.notify_all();
                        drop(g);
                        ok(&cx.give(&item))
                    }
                    Err(Unmet::Timeout) if wait == Some(Duration::ZERO) => {
                        Err(RemoteError::new(K::Empty, "the queue is empty"))
                    }
                    Err(Unmet::Timeout) => Err(RemoteError::timeout()),
                    Err(Unmet::Gone) => Err(gone()),
                }
            }
            "qsize" => ok(&(g.items.len() as u64)),
            "empty" => ok(&g.items.is_empty()),
            "full" => ok(&full(&g)),
            "task_done" if self.joinable => {
                let mut g = g;
                if g.unfinished == 0 {
                    return Err(RemoteError::new(
                        K::Value,
                        "task_done() called too many times",
                    ));
                }
                g.unfinished -= 1;
                self.cv.notify_all();
                ok(&())
            }
            "join" if self.joinable => {
                let wait: Wait = de(args)?;
                let (_g, r) = wait_until(cx, &self.cv, g, wait, |s| s.unfinished == 0);
                match r {
                    Ok(()) => ok(&true),
                    Err(Unmet::Timeout) => ok(&false),
                    Err(Unmet::Gone) => Err(gone()),
                }
            }
            m => Err(no_method(self.kind(), m)),
        }
    }
}

// ---------------------------------------------------------------- locks, conditions

#[derive(Default)]
struct LockState {
    /// Holder, the connection it took the lock on, and the recursion depth.
    holder: Option<(Owner, u64, u32)>,
    /// Condition waiters in arrival order, by ticket.
    waiting: VecDeque<u64>,
    notified: HashSet<u64>,
    next_ticket: u64,
}

struct LockObj {
    reentrant: bool,
    st: Mutex<LockState>,
    cv: Condvar,
}

impl LockObj {
    fn into_condition(self) -> Box<dyn Object> {
        Box::new(ConditionObj(self))
    }

    fn acquire(&self, cx: &Cx<'_>, owner: Owner, wait: Wait) -> Ret {
        let mut g = lock(&self.st);
        if self.reentrant
            && let Some((o, _, n)) = &mut g.holder
            && *o == owner
        {
            *n += 1;
            return ok(&true);
        }
        let (mut g, r) = wait_until(cx, &self.cv, g, wait, |s| s.holder.is_none());
        match r {
            Ok(()) => {
                g.holder = Some((owner, cx.conn_id, 1));
                ok(&true)
            }
            Err(Unmet::Timeout) => ok(&false),
            Err(Unmet::Gone) => Err(gone()),
        }
    }

    fn release(&self, owner: Owner) -> Ret {
        let mut g = lock(&self.st);
        match &mut g.holder {
            None => Err(RemoteError::new(K::NotOwner, "release of an unlocked lock")),
            // Lock and RLock alike: only the holder releases (the server
            // frees a disconnected client's locks by knowing the holder;
            // `docs/python-mapping.md`, "Deliberately different").
            Some((o, _, _)) if *o != owner => Err(RemoteError::new(
                K::NotOwner,
                "cannot release a lock held by another thread",
            )),
            Some((_, _, n)) => {
                *n -= 1;
                if *n == 0 {
                    g.holder = None;
                    self.cv.notify_all();
                }
                ok(&())
            }
        }
    }

    fn lock_call(&self, cx: &Cx<'_>, kind: &str, method: &str, args: &[u8]) -> Ret {
        match method {
            "acquire" => {
                let (owner, wait): (Owner, Wait) = de(args)?;
                self.acquire(cx, owner, wait)
            }
            "release" => self.release(de(args)?),
            "locked" => ok(&lock(&self.st).holder.is_some()),
            m => Err(no_method(kind, m)),
        }
    }

    fn release_conn(&self, conn: u64) {
        let mut g = lock(&self.st);
        if g.holder.is_some_and(|(_, c, _)| c == conn) {
            tracing::debug!(
                conn,
                "manager: releasing a lock held by a closed connection"
            );
            g.holder = None;
            self.cv.notify_all();
        }
    }
}

impl Object for LockObj {
    fn kind(&self) -> &str {
        if self.reentrant { "rlock" } else { "lock" }
    }

    fn call(&self, cx: &Cx<'_>, method: &str, args: &[u8]) -> Ret {
        self.lock_call(cx, self.kind(), method, args)
    }

    fn holds(&self) -> bool {
        true
    }

    fn release_conn(&self, conn: u64) {
        LockObj::release_conn(self, conn);
    }
}

/// A condition variable with its own reentrant lock (Python's
/// `Condition()` with the default `RLock`).
struct ConditionObj(LockObj);

impl ConditionObj {
    fn must_own<'a>(
        &'a self,
        owner: Owner,
        what: &str,
    ) -> Result<MutexGuard<'a, LockState>, RemoteError> {
        let g = lock(&self.0.st);
        if g.holder.is_some_and(|(o, _, _)| o == owner) {
            Ok(g)
        } else {
            Err(RemoteError::new(
                K::NotOwner,
                format!("cannot {what} on an un-acquired condition"),
            ))
        }
    }
}

impl Object for ConditionObj {
    fn kind(&self) -> &str {
        "condition"
    }

    fn call(&self, cx: &Cx<'_>, method: &str, args: &[u8]) -> Ret {
        let l = &self.0;
        match method {
            "wait" => {
                let (owner, wait): (Owner, Wait) = de(args)?;
                let mut g = self.must_own(owner, "wait")?;
                let (_, _, depth) = g.holder.take().unwrap_or((owner, cx.conn_id, 1));
                let ticket = g.next_ticket;
                g.next_ticket += 1;
                g.waiting.push_back(ticket);
                l.cv.notify_all();
                let (mut g, r) = wait_until(cx, &l.cv, g, wait, |s| s.notified.contains(&ticket));
                let notified = g.notified.remove(&ticket);
                g.waiting.retain(|t| *t != ticket);
                if let Err(Unmet::Gone) = r {
                    return Err(gone());
                }
                // Take the lock back, however long that takes (as Python).
                let (mut g, r) = wait_until(cx, &l.cv, g, None, |s| s.holder.is_none());
                if r.is_err() {
                    return Err(gone());
                }
                g.holder = Some((owner, cx.conn_id, depth));
                ok(&notified)
            }
            "notify" => {
                let (owner, n): (Owner, u64) = de(args)?;
                let mut g = self.must_own(owner, "notify")?;
                for _ in 0..n {
                    match g.waiting.pop_front() {
                        Some(t) => {
                            g.notified.insert(t);
                        }
                        None => break,
                    }
                }
                l.cv.notify_all();
                ok(&())
            }
            "notify_all" => {
                let owner: Owner = de(args)?;
                let mut g = self.must_own(owner, "notify")?;
                while let Some(t) = g.waiting.pop_front() {
                    g.notified.insert(t);
                }
                l.cv.notify_all();
                ok(&())
            }
            m => l.lock_call(cx, "condition", m, args),
        }
    }

    fn holds(&self) -> bool {
        true
    }

    fn release_conn(&self, conn: u64) {
        self.0.release_conn(conn);
    }
}

// ---------------------------------------------------------------- semaphores

struct SemaphoreObj {
    bound: Option<u64>,
    value: Mutex<u64>,
    cv: Condvar,
}

impl Object for SemaphoreObj {
    fn kind(&self) -> &str {
        if self.bound.is_some() {
            "bounded_semaphore"
        } else {
            "semaphore"
        }
    }

    fn call(&self, cx: &Cx<'_>, method: &str, args: &[u8]) -> Ret {
        match method {
            "acquire" => {
                let wait: Wait = de(args)?;
                let g = lock(&self.value);
                let (mut g, r) = wait_until(cx, &self.cv, g, wait, |v| *v > 0);
                match r {
                    Ok(()) => {
                        *g -= 1;
                        ok(&true)
                    }
                    Err(Unmet::Timeout) => ok(&false),
                    Err(Unmet::Gone) => Err(gone()),
                }
            }
            "release" => {
                let n: u64 = de(args)?;
                let mut g = lock(&self.value);
                let new = g
                    .checked_add(n)
                    .ok_or_else(|| RemoteError::new(K::Value, "semaphore value overflows"))?;
                if self.bound.is_some_and(|b| new > b) {
                    return Err(RemoteError::new(
                        K::Value,
                        "semaphore released too many times",
                    ));
                }
                *g = new;
                self.cv.notify_all();
                ok(&())
            }
            "value" => ok(&*lock(&self.value)),
            m => Err(no_method(self.kind(), m)),
        }
    }
}

// ---------------------------------------------------------------- event

struct EventObj {
    set: Mutex<bool>,
    cv: Condvar,
}

impl Object for EventObj {
    fn kind(&self) -> &str {
        "event"
    }

    fn call(&self, cx: &Cx<'_>, method: &str, args: &[u8]) -> Ret {
        let mut g = lock(&self.set);
        match method {
            "set" => {
                *g = true;
                self.cv.notify_all();
                ok(&())
            }
            "clear" => {
                *g = false;
                ok(&())
            }
            "is_set" => ok(&*g),
            "wait" => {
                let wait: Wait = de(args)?;
                let (_g, r) = wait_until(cx, &self.cv, g, wait, |s| *s);
                match r {
                    Ok(()) => ok(&true),
                    Err(Unmet::Timeout) => ok(&false),
                    Err(Unmet::Gone) => Err(gone()),
                }
            }
            m => Err(no_method("event", m)),
        }
    }
}

// ---------------------------------------------------------------- barrier

#[derive(Default)]
struct BarrierState {
    count: u64,
    generation: u64,
    broken: bool,
    /// How recent generations ended: `true` released, `false` reset.
    ended: VecDeque<(u64, bool)>,
}

impl BarrierState {
    fn end(&mut self, released: bool) {
        self.ended.push_back((self.generation, released));
        if self.ended.len() > 64 {
            self.ended.pop_front();
        }
        self.generation += 1;
        self.count = 0;
    }
}

struct BarrierObj {
    parties: u64,
    st: Mutex<BarrierState>,
    cv: Condvar,
}

fn broken() -> RemoteError {
    RemoteError::new(K::BrokenBarrier, "the barrier is broken")
}

impl Object for BarrierObj {
    fn kind(&self) -> &str {
        "barrier"
    }

    fn call(&self, cx: &Cx<'_>, method: &str, args: &[u8]) -> Ret {
        let mut g = lock(&self.st);
        match method {
            "wait" => {
                let wait: Wait = de(args)?;
                if g.broken {
                    return Err(broken());
                }
                let generation = g.generation;
                let index = g.count;
                g.count += 1;
                if g.count == self.parties {
                    g.end(true);
                    self.cv.notify_all();
                    return ok(&index);
                }
                let (mut g, r) = wait_until(cx, &self.cv, g, wait, |s| {
                    s.generation != generation || s.broken
                });
                if g.generation != generation {
                    let released = g
                        .ended
                        .iter()
                        .find(|(n, _)| *n == generation)
                        .is_none_or(|(_, r)| *r);
                    return if released { ok(&index) } else { Err(broken()) };
                }
                // Broken, timed out or the caller left: the barrier breaks
                // for everyone (as Python's on a timeout).
                g.broken = true;
                g.count = g.count.saturating_sub(1);
                self.cv.notify_all();
                match r {
                    Err(Unmet::Gone) => Err(gone()),
                    _ => Err(broken()),
                }
            }
            "abort" => {
                g.broken = true;
                self.cv.notify_all();
                ok(&())
            }
            "reset" => {
                if g.count > 0 || g.broken {
                    g.end(false);
                }
                g.broken = false;
                self.cv.notify_all();
                ok(&())
            }
            "parties" => ok(&self.parties),
            "n_waiting" => ok(&g.count),
            "broken" => ok(&g.broken),
            m => Err(no_method("barrier", m)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_map_keeps_order_through_removals() {
        let mut m = OrderedMap::default();
        for i in 0..100u8 {
            m.insert(vec![i], Val::plain(vec![i]));
        }
        for i in 0..90u8 {
            assert_eq!(m.remove(&[i]).map(|v| v.bytes.clone()), Some(vec![i]));
        }
        m.insert(vec![5], Val::plain(vec![50]));
        let keys: Vec<u8> = m.iter().map(|(k, _)| k[0]).collect();
        assert_eq!(keys, vec![90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 5]);
        assert_eq!(m.get(&[99]).map(|v| v.bytes.clone()), Some(vec![99]));
        assert_eq!(m.len(), 11);
    }

    #[test]
    fn python_indices() {
        assert_eq!(norm(-1, 3), Some(2));
        assert_eq!(norm(3, 3), None);
        assert_eq!(norm(-4, 3), None);
        assert_eq!(norm(0, 0), None);
    }
    /// Runs a set method on `m` with `args`, decoding the reply as `R`.
    fn set_call<A: Serialize + ?Sized, R: DeserializeOwned>(
        m: &mut OrderedMap,
        method: &str,
        args: &A,
    ) -> Result<R, RemoteError> {
        let (args, _) = codec::encode(args).unwrap();
        SetObj::apply(m, method, &args).map(|r| codec::decode(&r, Vec::new()).unwrap())
    }

    fn b(xs: &[u8]) -> Vec<Bytes> {
        xs.iter().map(|&x| Bytes(vec![x])).collect()
    }

    fn members(m: &mut OrderedMap) -> Vec<u8> {
        let all: Vec<Bytes> = set_call(m, "snapshot", &()).unwrap();
        all.into_iter().map(|x| x.0[0]).collect()
    }

    #[test]
    fn set_adds_once_and_keeps_insertion_order() {
        let mut m = OrderedMap::default();
        set_call::<_, ()>(&mut m, "update", &b(&[3, 1, 3, 2])).unwrap();
        set_call::<_, ()>(&mut m, "add", &Bytes(vec![1])).unwrap();
        assert_eq!(members(&mut m), [3, 1, 2]);
        assert_eq!(set_call::<_, u64>(&mut m, "len", &()).unwrap(), 3);
        assert!(set_call::<_, bool>(&mut m, "contains", &Bytes(vec![2])).unwrap());
        assert!(set_call::<_, bool>(&mut m, "discard", &Bytes(vec![2])).unwrap());
        assert!(!set_call::<_, bool>(&mut m, "discard", &Bytes(vec![2])).unwrap());
        let e = set_call::<_, ()>(&mut m, "remove", &Bytes(vec![2])).unwrap_err();
        assert_eq!(e.kind, K::Key);
        let popped: Option<Bytes> = set_call(&mut m, "pop", &()).unwrap();
        assert_eq!(popped.map(|x| x.0), Some(vec![3]));
        set_call::<_, ()>(&mut m, "clear", &()).unwrap();
        assert_eq!(
            set_call::<_, Option<Bytes>>(&mut m, "pop", &()).unwrap(),
            None
        );
    }

    #[test]
    fn set_operations_as_pythons() {
        let mut m = OrderedMap::default();
        set_call::<_, ()>(&mut m, "update", &b(&[1, 2, 3])).unwrap();
        let snap = |m: &mut OrderedMap, op: &str, xs: &[u8]| -> Vec<u8> {
            let r: Vec<Bytes> = set_call(m, op, &b(xs)).unwrap();
            r.into_iter().map(|x| x.0[0]).collect()
        };
        assert_eq!(snap(&mut m, "union", &[4, 2, 4]), [1, 2, 3, 4]);
        assert_eq!(snap(&mut m, "intersection", &[3, 2, 9]), [2, 3]);
        assert_eq!(snap(&mut m, "difference", &[2]), [1, 3]);
        assert_eq!(snap(&mut m, "symmetric_difference", &[3, 4, 4]), [1, 2, 4]);
        // The snapshots left the set as it was.
        assert_eq!(members(&mut m), [1, 2, 3]);
        set_call::<_, ()>(&mut m, "symmetric_difference_update", &b(&[3, 4])).unwrap();
        assert_eq!(members(&mut m), [1, 2, 4]);
        set_call::<_, ()>(&mut m, "intersection_update", &b(&[4, 1, 7])).unwrap();
        assert_eq!(members(&mut m), [1, 4]);
        set_call::<_, ()>(&mut m, "difference_update", &b(&[1])).unwrap();
        assert_eq!(members(&mut m), [4]);
    }

    #[test]
    fn set_comparisons_as_pythons() {
        let mut m = OrderedMap::default();
        set_call::<_, ()>(&mut m, "update", &b(&[1, 2])).unwrap();
        let ask =
            |m: &mut OrderedMap, op: &str, xs: &[u8]| -> bool { set_call(m, op, &b(xs)).unwrap() };
        assert!(ask(&mut m, "issubset", &[1, 2]));
        assert!(!ask(&mut m, "is_proper_subset", &[1, 2, 2]));
        assert!(ask(&mut m, "is_proper_subset", &[2, 1, 3]));
        assert!(!ask(&mut m, "issubset", &[1, 3]));
        assert!(ask(&mut m, "issuperset", &[2, 2]));
        assert!(ask(&mut m, "is_proper_superset", &[2]));
        assert!(!ask(&mut m, "is_proper_superset", &[1, 2]));
        assert!(!ask(&mut m, "issuperset", &[3]));
        assert!(ask(&mut m, "isdisjoint", &[3, 4]));
        assert!(!ask(&mut m, "isdisjoint", &[4, 2]));
        assert!(!ask(&mut m, "issubset", &[]));
    }

    #[test]
    fn set_refuses_bad_arguments_and_unknown_methods() {
        let mut m = OrderedMap::default();
        let e = SetObj::apply(&mut m, "add", &[0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(e.kind, K::BadArguments);
        let e = SetObj::apply(&mut m, "update", &[7]).unwrap_err();
        assert_eq!(e.kind, K::BadArguments);
        let e = SetObj::apply(&mut m, "sort", &[]).unwrap_err();
        assert_eq!(e.kind, K::NoSuchMethod);
        assert_eq!(m.len(), 0);
    }
}
