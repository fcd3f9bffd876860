//! Typed proxies: handles that call methods of objects in the manager.
//!
//! A proxy is an object id and the process's [`Client`]. Cloning one is
//! free and shares the connections. Serializing one (as a process
//! argument, through a `Queue`, inside a `Connection` message) opens a
//! fresh connection for the receiving process and sends its fd out of band,
//! so two processes never share a connection.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::client::{Client, ProxyWire, dec, enc, serialize_proxy};
use super::protocol::{Bytes, Item, Number, Owner, RemoteErrorKind};
use super::register::Shared;
use crate::error::{Error, Result};
use crate::queue::PutError;

/// An object id and a way to reach its manager (an implementation detail
/// of every proxy).
#[doc(hidden)]
#[derive(Clone)]
pub struct RawProxy {
    pub(crate) client: Arc<Client>,
    pub(crate) id: u64,
    /// The hold this proxy and its clones share on the object, given back
    /// when the last of them is dropped. `None` for a proxy received from
    /// another process: its own connection holds the object instead.
    _hold: Option<Arc<Hold>>,
}

/// One hold on a manager object, given back on drop by the process that
/// took it. A `fork` child inherits its parent's holds rather than taking
/// its own (as CPython's proxies do after a fork, without the round trip),
/// so its copy gives nothing back, and the parent's waits until every
/// `fork` child started since the hold was taken has been reaped.
struct Hold {
    client: Arc<Client>,
    id: u64,
    pid: u32,
    /// The `fork` generation it was taken in.
    generation: u64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            return;
        }
        let (client, id) = (self.client.clone(), self.id);
        crate::globals::release_after_forks(
            self.generation,
            Box::new(move || {
                if let Err(e) = client.release(id) {
                    // The manager has stopped, most likely: nothing to free.
                    tracing::trace!(id, error = %e, "manager: release failed");
                }
            }),
        );
    }
}

impl RawProxy {
    /// A proxy for object `id`, which the server has just counted a hold
    /// on for `client` (it created or looked it up).
    pub(crate) fn held(client: &Arc<Client>, id: u64) -> RawProxy {
        let hold = Arc::new(Hold {
            client: client.clone(),
            id,
            pid: std::process::id(),
            generation: crate::globals::fork_generation(),
        });
        RawProxy {
            client: client.clone(),
            id,
            _hold: Some(hold),
        }
    }

    pub(super) fn call<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<R> {
        self.client.call(self.id, method, args)
    }

    /// Encodes `v` to be stored in this proxy's manager: each proxy inside
    /// becomes a marker with its id, listed in the item's `refs` so that
    /// the container takes a hold on it.
    ///
    /// # Errors
    /// When `v` cannot be encoded, holds a file descriptor, or holds a
    /// proxy of another manager.
    pub(super) fn item<T: Serialize + ?Sized>(&self, v: &T) -> Result<Item> {
        let outer = STORING.with(|st| st.replace(Some(Vec::new())));
        let bytes = enc(v);
        let met = STORING.with(|st| st.replace(outer)).unwrap_or_default();
        let bytes = bytes?;
        let mut refs = Vec::with_capacity(met.len());
        for (client, id) in met {
            if !self.client.same_server(&client)? {
                return Err(Error::Unsupported(
                    "a proxy can only be stored in an object of its own manager",
                ));
            }
            refs.push(id);
        }
        Ok(Item {
            bytes: Bytes(bytes),
            refs,
        })
    }

    /// Encodes a dict key or a set member: as [`RawProxy::item`], but it
    /// holds no proxy.
    fn key<T: Serialize + ?Sized>(&self, k: &T) -> Result<Bytes> {
        let item = self.item(k)?;
        if !item.refs.is_empty() {
            return Err(Error::Unsupported(
                "a proxy cannot be part of a dict key or a set member",
            ));
        }
        Ok(item.bytes)
    }

    /// Encodes a value only to compare it with stored ones (`contains`,
    /// `index`, `remove`): proxies compare by object.
    fn probe<T: Serialize + ?Sized>(&self, v: &T) -> Result<Bytes> {
        self.item(v).map(|i| i.bytes)
    }

    /// Decodes a value the manager handed out. The server took a hold for
    /// this client on each object in `item.refs`; each becomes a proxy
    /// here, which the markers in the bytes take, and any left over (the
    /// value did not decode) gives its hold back at once.
    fn open<T: DeserializeOwned>(&self, item: Item) -> Result<T> {
        let held: Vec<RawProxy> = item
            .refs
            .iter()
            .map(|&id| RawProxy::held(&self.client, id))
            .collect();
        let outer = LOADING.with(|l| l.replace(Some(held)));
        let v = dec(&item.bytes.0);
        let unused = LOADING.with(|l| l.replace(outer));
        drop(unused);
        v
    }

    fn open_opt<T: DeserializeOwned>(&self, item: Option<Item>) -> Result<Option<T>> {
        item.map(|i| self.open(i)).transpose()
    }

    fn open_all<T: DeserializeOwned>(&self, items: Vec<Item>) -> Result<Vec<T>> {
        items.into_iter().map(|i| self.open(i)).collect()
    }

    fn call_item<A: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<T> {
        let item: Item = self.call(method, args)?;
        self.open(item)
    }

    fn call_opt<A: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<Option<T>> {
        let item: Option<Item> = self.call(method, args)?;
        self.open_opt(item)
    }
}

/// The proxies met while a value to store is encoded: client and id.
type Met = Vec<(Arc<Client>, u64)>;

thread_local! {
    /// While a value to store is encoded: the proxies met in it.
    static STORING: RefCell<Option<Met>> = const { RefCell::new(None) };
    /// While a value a manager handed out is decoded: proxies for the
    /// holds the server took for this client, for its markers to take.
    static LOADING: RefCell<Option<Vec<RawProxy>>> = const { RefCell::new(None) };
}

impl fmt::Debug for RawProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} #{}", self.client, self.id)
    }
}

impl Serialize for RawProxy {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let storing = STORING.with(|st| match st.borrow_mut().as_mut() {
            Some(met) => {
                met.push((self.client.clone(), self.id));
                true
            }
            None => false,
        });
        if storing {
            ProxyWire::Stored(self.id).serialize(s)
        } else {
            serialize_proxy(&self.client, self.id, s)
        }
    }
}

impl<'de> Deserialize<'de> for RawProxy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        match ProxyWire::deserialize(d)? {
            ProxyWire::Live(w) => {
                let client = Client::from_wire(w.fd, w.tcp).map_err(D::Error::custom)?;
                Ok(RawProxy {
                    client: Arc::new(client),
                    id: w.id,
                    _hold: None,
                })
            }
            ProxyWire::Stored(id) => LOADING
                .with(|l| {
                    let mut l = l.borrow_mut();
                    let held = l.as_mut()?;
                    let at = held.iter().position(|p| p.id == id)?;
                    Some(held.swap_remove(at))
                })
                .ok_or_else(|| {
                    D::Error::custom(format!(
                        "a stored proxy of object {id} that no manager reply handed out"
                    ))
                }),
        }
    }
}

/// What every proxy type has (Python's `BaseProxy`).
pub trait BaseProxy: Sized {
    /// The kind of object it refers to.
    fn kind() -> &'static str;

    /// Whether an object of `kind` can be reached through this proxy type.
    fn accepts(kind: &str) -> bool {
        kind == Self::kind()
    }

    /// The referent's id in its manager.
    fn id(&self) -> u64;

    #[doc(hidden)]
    fn __from_raw(raw: RawProxy) -> Self;

    #[doc(hidden)]
    fn __raw(&self) -> &RawProxy;
}

macro_rules! proxy {
    ($(#[$m:meta])* $name:ident [$($g:ident),*] $kind:literal $(| $also:literal)?) => {
        $(#[$m])*
        pub struct $name<$($g),*> {
            raw: RawProxy,
            _t: PhantomData<fn() -> ($($g,)*)>,
        }

        impl<$($g),*> Clone for $name<$($g),*> {
            fn clone(&self) -> Self {
                $name { raw: self.raw.clone(), _t: PhantomData }
            }
        }

        impl<$($g),*> fmt::Debug for $name<$($g),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:?})"), self.raw)
            }
        }

        impl<$($g),*> Serialize for $name<$($g),*> {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                self.raw.serialize(s)
            }
        }

        impl<'de, $($g),*> Deserialize<'de> for $name<$($g),*> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                RawProxy::deserialize(d).map(|raw| $name { raw, _t: PhantomData })
            }
        }

        impl<$($g),*> BaseProxy for $name<$($g),*> {
            fn kind() -> &'static str {
                $kind
            }
            fn accepts(kind: &str) -> bool {
                kind == $kind $(|| kind == $also)?
            }
            fn id(&self) -> u64 {
                self.raw.id
            }
            fn __from_raw(raw: RawProxy) -> Self {
                $name { raw, _t: PhantomData }
            }
            fn __raw(&self) -> &RawProxy {
                &self.raw
            }
        }
    };
}

pub(super) use proxy;

fn all<T: DeserializeOwned>(v: Vec<Bytes>) -> Result<Vec<T>> {
    v.iter().map(|b| dec(&b.0)).collect()
}

// ------------------------------------------------------------------ Dict

proxy! {
    /// A dict in the manager (Python's `Manager().dict()`): keys `K`,
    /// values `V`, insertion-ordered. Each method is one atomic call; for a
    /// read-modify-write use [`Dict::add`], [`Dict::update_with`] or a
    /// manager [`Lock`] (the seeds' `d["count"] += 1` is a `get` and a
    /// `set`, and loses updates under contention without one).
    ///
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// let manager = mproc::get_context("forkserver")?.manager()?;
    /// let d = manager.dict::<String, i64>()?;
    /// d.set("count", &10)?;
    /// assert_eq!(d.add("count", -1)?, 9);
    /// assert_eq!(d.get("count")?, Some(9));
    /// assert_eq!(d.len()?, 1);
    /// # Ok(()) }
    /// ```
    #[doc(alias = "DictProxy")]
    Dict[K, V] "dict"
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> Dict<K, V> {
    /// `d[k]` when present (Python's `d.get(k)`).
    ///
    /// # Errors
    /// When the manager cannot be reached or the value does not decode as `V`.
    #[doc(alias = "__getitem__")]
    pub fn get<Q: Serialize + ?Sized>(&self, k: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
    {
        self.raw.call_opt("get", &self.raw.key(k)?)
    }

    /// `d[k] = v`. `v` may hold proxies of this manager (nested proxies):
    /// the dict then holds their objects while it keeps `v`.
    ///
    /// # Errors
    /// When the manager cannot be reached, or `k` or `v` cannot be encoded
    /// ([`Error::Unsupported`] for a proxy of another manager, or a proxy
    /// in `k`).
    #[doc(alias = "__setitem__")]
    pub fn set<Q: Serialize + ?Sized, W: Serialize + ?Sized>(&self, k: &Q, v: &W) -> Result<()>
    where
        K: Borrow<Q>,
        V: Borrow<W>,
    {
        self.raw.call("set", &(self.raw.key(k)?, self.raw.item(v)?))
    }

    /// Removes `k`, returning its value (Python's `d.pop(k, None)`).
    ///
    /// # Errors
    /// As [`Dict::get`].
    #[doc(alias = "pop")]
    #[doc(alias = "__delitem__")]
    pub fn remove<Q: Serialize + ?Sized>(&self, k: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
    {
        self.raw.call_opt("remove", &self.raw.key(k)?)
    }

    /// `k in d`.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "__contains__")]
    pub fn contains<Q: Serialize + ?Sized>(&self, k: &Q) -> Result<bool>
    where
        K: Borrow<Q>,
    {
        self.raw.call("contains", &self.raw.key(k)?)
    }

    /// `len(d)`.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "__len__")]
    pub fn len(&self) -> Result<usize> {
        self.raw.call::<_, u64>("len", &()).map(|n| n as usize)
    }

    /// `len(d) == 0`.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// The keys, in insertion order (a snapshot).
    ///
    /// # Errors
    /// As [`Dict::get`].
    pub fn keys(&self) -> Result<Vec<K>> {
        all(self.raw.call("keys", &())?)
    }

    /// The values, in insertion order (a snapshot).
    ///
    /// # Errors
    /// As [`Dict::get`].
    pub fn values(&self) -> Result<Vec<V>> {
        let items: Vec<Item> = self.raw.call("values", &())?;
        self.raw.open_all(items)
    }

    /// The pairs, in insertion order (a snapshot; Python's `d.items()`,
    /// `d.copy()`).
    ///
    /// # Errors
    /// As [`Dict::get`].
    #[doc(alias = "copy")]
    pub fn items(&self) -> Result<Vec<(K, V)>> {
        let pairs: Vec<(Bytes, Item)> = self.raw.call("items", &())?;
        pairs
            .into_iter()
            .map(|(k, v)| Ok((dec(&k.0)?, self.raw.open(v)?)))
            .collect()
    }

    /// Sets every pair, in one atomic call (Python's `d.update(...)`).
    ///
    /// # Errors
    /// As [`Dict::set`].
    pub fn update<'a>(&self, items: impl IntoIterator<Item = (&'a K, &'a V)>) -> Result<()>
    where
        K: 'a,
        V: 'a,
    {
        let items: Vec<(Bytes, Item)> = items
            .into_iter()
            .map(|(k, v)| Ok((self.raw.key(k)?, self.raw.item(v)?)))
            .collect::<Result<_>>()?;
        self.raw.call("update", &items)
    }

    /// Removes every pair.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn clear(&self) -> Result<()> {
        self.raw.call("clear", &())
    }

    /// `d.get(k, default)`: the value, or `default` (not inserted).
    ///
    /// # Errors
    /// As [`Dict::get`].
    pub fn get_or_default<Q: Serialize + ?Sized>(&self, k: &Q, default: &V) -> Result<V>
    where
        K: Borrow<Q>,
    {
        self.raw.call_item(
            "get_or_default",
            &(self.raw.key(k)?, self.raw.item(default)?),
        )
    }

    /// `d.setdefault(k, default)`: the value, inserting `default` first if
    /// `k` is absent.
    ///
    /// # Errors
    /// As [`Dict::get`].
    pub fn setdefault<Q: Serialize + ?Sized>(&self, k: &Q, default: &V) -> Result<V>
    where
        K: Borrow<Q>,
    {
        self.raw
            .call_item("setdefault", &(self.raw.key(k)?, self.raw.item(default)?))
    }

    /// Sets `k` to `new` (removes it for `None`) only if its value is still
    /// `expected` (`None`: absent); whether it did. Compares encodings.
    ///
    /// # Errors
    /// As [`Dict::set`].
    pub fn compare_and_set<Q: Serialize + ?Sized>(
        &self,
        k: &Q,
        expected: Option<&V>,
        new: Option<&V>,
    ) -> Result<bool>
    where
        K: Borrow<Q>,
    {
        let expected = expected.map(|e| self.raw.probe(e)).transpose()?;
        let new = new.map(|n| self.raw.item(n)).transpose()?;
        self.raw.call("cas", &(self.raw.key(k)?, expected, new))
    }

    /// Atomically replaces `d[k]` with `f(d.get(k))` (removing it when `f`
    /// returns `None`) and returns the new value. `f` runs here and may run
    /// again if another client changed the entry meanwhile.
    ///
    /// # Errors
    /// As [`Dict::set`].
    pub fn update_with<Q: Serialize + ?Sized>(
        &self,
        k: &Q,
        mut f: impl FnMut(Option<V>) -> Option<V>,
    ) -> Result<Option<V>>
    where
        K: Borrow<Q>,
    {
        let key = self.raw.key(k)?;
        loop {
            let old: Option<Item> = self.raw.call("get", &key)?;
            let expected = old.as_ref().map(|i| i.bytes.clone());
            let new = f(self.raw.open_opt(old)?);
            let new_item = new.as_ref().map(|n| self.raw.item(n)).transpose()?;
            if self
                .raw
                .call::<_, bool>("cas", &(&key, expected, new_item))?
            {
                return Ok(new);
            }
        }
    }
}

impl<K: Serialize + DeserializeOwned, V: Number> Dict<K, V> {
    /// Atomically adds `delta` to `d[k]` (taken as zero when absent) and
    /// returns the sum: the seeds' `d["count"] += n`, without a race.
    ///
    /// # Errors
    /// When the manager cannot be reached, or the sum overflows (the value
    /// is then unchanged).
    #[doc(alias = "__iadd__")]
    pub fn add<Q: Serialize + ?Sized>(&self, k: &Q, delta: V) -> Result<V>
    where
        K: Borrow<Q>,
    {
        let v: Bytes = self
            .raw
            .call("add", &(self.raw.key(k)?, V::TAG.0, Bytes(enc(&delta)?)))?;
        dec(&v.0)
    }
}

// ------------------------------------------------------------------ List

proxy! {
    /// A list in the manager (Python's `Manager().list()`). Indices follow
    /// Python: negative ones count from the end.
    ///
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// let manager = mproc::get_context("forkserver")?.manager()?;
    /// let l = manager.list::<u32>()?;
    /// l.extend(&[1, 2, 3])?;
    /// l.push(&4)?;
    /// assert_eq!(l.get(-1)?, Some(4));
    /// assert_eq!(l.pop()?, Some(4));
    /// assert_eq!(l.to_vec()?, vec![1, 2, 3]);
    /// # Ok(()) }
    /// ```
    #[doc(alias = "ListProxy")]
    List[T] "list"
}

impl<T: Serialize + DeserializeOwned> List<T> {
    /// Appends `x` (Python's `append`). `x` may hold proxies of this
    /// manager: the list then holds their objects while it keeps `x`.
    ///
    /// # Errors
    /// When the manager cannot be reached or `x` cannot be encoded
    /// ([`Error::Unsupported`] for a proxy of another manager).
    #[doc(alias = "append")]
    pub fn push<U: Serialize + ?Sized>(&self, x: &U) -> Result<()>
    where
        T: Borrow<U>,
    {
        self.raw.call("push", &self.raw.item(x)?)
    }

    /// Appends `x` (Python's name for [`List::push`]).
    ///
    /// # Errors
    /// As [`List::push`].
    pub fn append<U: Serialize + ?Sized>(&self, x: &U) -> Result<()>
    where
        T: Borrow<U>,
    {
        self.push(x)
    }

    /// Appends every item, in one atomic call.
    ///
    /// # Errors
    /// As [`List::push`].
    pub fn extend<'a>(&self, items: impl IntoIterator<Item = &'a T>) -> Result<()>
    where
        T: 'a,
    {
        let items: Vec<Item> = items
            .into_iter()
            .map(|x| self.raw.item(x))
            .collect::<Result<_>>()?;
        self.raw.call("extend", &items)
    }

    /// `l[i]`, or `None` when out of range.
    ///
    /// # Errors
    /// When the manager cannot be reached or the item does not decode.
    #[doc(alias = "__getitem__")]
    pub fn get(&self, i: isize) -> Result<Option<T>> {
        self.raw.call_opt("get", &(i as i64))
    }

    /// `l[i] = x`.
    ///
    /// # Errors
    /// [`crate::Error::Remote`] of kind `Index` (Python's `IndexError`) when `i` is out of
    /// range.
    #[doc(alias = "__setitem__")]
    pub fn set<U: Serialize + ?Sized>(&self, i: isize, x: &U) -> Result<()>
    where
        T: Borrow<U>,
    {
        self.raw.call("set", &(i as i64, self.raw.item(x)?))
    }

    /// Removes and returns the last item.
    ///
    /// # Errors
    /// As [`List::get`].
    pub fn pop(&self) -> Result<Option<T>> {
        self.raw.call_opt("pop", &None::<i64>)
    }

    /// Removes and returns item `i` (`None` when out of range).
    ///
    /// # Errors
    /// As [`List::get`].
    pub fn pop_at(&self, i: isize) -> Result<Option<T>> {
        self.raw.call_opt("pop", &Some(i as i64))
    }

    /// Inserts `x` before index `i` (clamped, as Python).
    ///
    /// # Errors
    /// As [`List::push`].
    pub fn insert<U: Serialize + ?Sized>(&self, i: isize, x: &U) -> Result<()>
    where
        T: Borrow<U>,
    {
        self.raw.call("insert", &(i as i64, self.raw.item(x)?))
    }

    /// Removes the first item equal to `x`; whether there was one.
    ///
    /// # Errors
    /// As [`List::push`].
    pub fn remove<U: Serialize + ?Sized>(&self, x: &U) -> Result<bool>
    where
        T: Borrow<U>,
    {
        self.raw.call("remove", &self.raw.probe(x)?)
    }

    /// `x in l`.
    ///
    /// # Errors
    /// As [`List::push`].
    pub fn contains<U: Serialize + ?Sized>(&self, x: &U) -> Result<bool>
    where
        T: Borrow<U>,
    {
        self.raw.call("contains", &self.raw.probe(x)?)
    }

    /// The position of the first item equal to `x`.
    ///
    /// # Errors
    /// As [`List::push`].
    pub fn index<U: Serialize + ?Sized>(&self, x: &U) -> Result<Option<usize>>
    where
        T: Borrow<U>,
    {
        self.raw
            .call::<_, Option<u64>>("index", &self.raw.probe(x)?)
            .map(|i| i.map(|i| i as usize))
    }

    /// `len(l)`.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn len(&self) -> Result<usize> {
        self.raw.call::<_, u64>("len", &()).map(|n| n as usize)
    }

    /// `len(l) == 0`.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// Removes every item.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn clear(&self) -> Result<()> {
        self.raw.call("clear", &())
    }

    /// A snapshot of the whole list (Python's `l[:]`, `list(l)`).
    ///
    /// # Errors
    /// As [`List::get`].
    pub fn to_vec(&self) -> Result<Vec<T>> {
        let items: Vec<Item> = self.raw.call("snapshot", &())?;
        self.raw.open_all(items)
    }

    /// Iterates over a snapshot taken now.
    ///
    /// # Errors
    /// As [`List::to_vec`].
    #[doc(alias = "__iter__")]
    pub fn iter(&self) -> Result<std::vec::IntoIter<T>> {
        self.to_vec().map(Vec::into_iter)
    }
}

// ------------------------------------------------------------------ Set

proxy! {
    /// A set in the manager (Python's `Manager().set()`, new in CPython
    /// 3.14): members `T`, compared by their encoding, kept in insertion
    /// order. The operations with other collections (`union`,
    /// `intersection`, ...) take the others' members as an iterator and
    /// return a snapshot, as Python's return a plain `set`; the `_update`
    /// forms change this set in one atomic call.
    ///
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// let manager = mproc::get_context("forkserver")?.manager()?;
    /// let s = manager.set::<u32>()?;
    /// s.update(&[1, 2, 3])?;
    /// s.add(&2)?;
    /// assert_eq!(s.len()?, 3);
    /// assert!(s.contains(&3)?);
    /// assert!(s.discard(&3)?);
    /// assert_eq!(s.union(&[2, 9])?, vec![1, 2, 9]);
    /// assert_eq!(s.intersection(&[2, 9])?, vec![2]);
    /// s.symmetric_difference_update(&[2, 7])?;
    /// assert_eq!(s.to_vec()?, vec![1, 7]);
    /// assert!(s.remove(&5).is_err()); // Python's KeyError
    /// # Ok(()) }
    /// ```
    #[doc(alias = "SetProxy")]
    Set[T] "set"
}

impl<T: Serialize + DeserializeOwned> Set<T> {
    fn members<'a>(&self, xs: impl IntoIterator<Item = &'a T>) -> Result<Vec<Bytes>>
    where
        T: 'a,
    {
        xs.into_iter().map(|x| self.raw.key(x)).collect()
    }

    fn snapshot_call(&self, method: &str, args: &[Bytes]) -> Result<Vec<T>> {
        all(self.raw.call(method, args)?)
    }

    /// Adds `x` (no change when it is there).
    ///
    /// # Errors
    /// When the manager cannot be reached or `x` cannot be encoded
    /// ([`Error::Unsupported`] for a member holding a proxy).
    pub fn add(&self, x: &T) -> Result<()> {
        self.raw.call("add", &self.raw.key(x)?)
    }

    /// Removes `x` if it is there; whether it was.
    ///
    /// # Errors
    /// As [`Set::add`].
    pub fn discard(&self, x: &T) -> Result<bool> {
        self.raw.call("discard", &self.raw.key(x)?)
    }

    /// Removes `x`, which must be there.
    ///
    /// # Errors
    /// [`Error::Remote`] of kind `Key` (Python's `KeyError`) when it is not;
    /// otherwise as [`Set::add`].
    pub fn remove(&self, x: &T) -> Result<()> {
        self.raw.call("remove", &self.raw.key(x)?)
    }

    /// Removes and returns some member (the oldest), `None` when empty
    /// (where Python raises `KeyError`).
    ///
    /// # Errors
    /// When the manager cannot be reached or the member does not decode.
    pub fn pop(&self) -> Result<Option<T>> {
        let b: Option<Bytes> = self.raw.call("pop", &())?;
        b.map(|b| dec(&b.0)).transpose()
    }

    /// Removes every member.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn clear(&self) -> Result<()> {
        self.raw.call("clear", &())
    }

    /// `x in s`.
    ///
    /// # Errors
    /// As [`Set::add`].
    #[doc(alias = "__contains__")]
    pub fn contains(&self, x: &T) -> Result<bool> {
        self.raw.call("contains", &self.raw.key(x)?)
    }

    /// `len(s)`.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "__len__")]
    pub fn len(&self) -> Result<usize> {
        self.raw.call::<_, u64>("len", &()).map(|n| n as usize)
    }

    /// `len(s) == 0`.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// The members, in insertion order (a snapshot; Python's `s.copy()`).
    ///
    /// # Errors
    /// When the manager cannot be reached or a member does not decode.
    #[doc(alias = "copy")]
    pub fn to_vec(&self) -> Result<Vec<T>> {
        self.snapshot_call("snapshot", &[])
    }

    /// Iterates over a snapshot taken now.
    ///
    /// # Errors
    /// As [`Set::to_vec`].
    #[doc(alias = "__iter__")]
    pub fn iter(&self) -> Result<std::vec::IntoIter<T>> {
        self.to_vec().map(Vec::into_iter)
    }

    /// Adds every member of `xs`, in one atomic call (`s |= xs`).
    ///
    /// # Errors
    /// As [`Set::add`].
    #[doc(alias = "__ior__")]
    pub fn update<'a>(&self, xs: impl IntoIterator<Item = &'a T>) -> Result<()>
    where
        T: 'a,
    {
        self.raw.call("update", &self.members(xs)?)
    }

    /// The members of this set and of `xs` (`s | xs`), a snapshot.
    ///
    /// # Errors
    /// As [`Set::to_vec`].
    #[doc(alias = "__or__")]
    pub fn union<'a>(&self, xs: impl IntoIterator<Item = &'a T>) -> Result<Vec<T>>
    where
        T: 'a,
    {
        self.snapshot_call("union", &self.members(xs)?)
    }

    /// The members also in `xs` (`s & xs`), a snapshot.
    ///
    /// # Errors
    /// As [`Set::to_vec`].
    #[doc(alias = "__and__")]
    pub fn intersection<'a>(&self, xs: impl IntoIterator<Item = &'a T>) -> Result<Vec<T>>
    where
        T: 'a,
    {
        self.snapshot_call("intersection", &self.members(xs)?)
    }

    /// The members not in `xs` (`s - xs`), a snapshot.
    ///
    /// # Errors
    /// As [`Set::to_vec`].
    #[doc(alias = "__sub__")]
    pub fn difference<'a>(&self, xs: impl IntoIterator<Item = &'a T>) -> Result<Vec<T>>
    where
        T: 'a,
    {
        self.snapshot_call("difference", &self.members(xs)?)
    }

    /// The members in exactly one of this set and `xs` (`s ^ xs`), a
    /// snapshot.
    ///
    /// # Errors
    /// As [`Set::to_vec`].
    #[doc(alias = "__xor__")]
    pub fn symmetric_difference<'a>(&self, xs: impl IntoIterator<Item = &'a T>) -> Result<Vec<T>>
    where
        T: 'a,
    {
        self.snapshot_call("symmetric_difference", &self.members(xs)?)
    }

    /// Keeps only the members also in `xs` (`s &= xs`), atomically.
    ///
    /// # Errors
    /// As [`Set::add`].
    #[doc(alias = "__iand__")]
    pub fn intersection_update<'a>(&self, xs: impl IntoIterator<Item = &'a T>) -> Result<()>
    where
        T: 'a,
    {
        self.raw.call("intersection_update", &self.members(xs)?)
    }

    /// Removes the members in `xs` (`s -= xs`), atomically.
    ///
    /// # Errors
    /// As [`Set::add`].
    #[doc(alias = "__isub__")]
    pub fn difference_update<'a>(&self, xs: impl IntoIterator<Item = &'a T>) -> Result<()>
    where
        T: 'a,
    {
        self.raw.call("difference_update", &self.members(xs)?)
    }

    /// Keeps the members in exactly one of this set and `xs` (`s ^= xs`),
    /// atomically.
    ///
    /// # Errors
    /// As [`Set::add`].
    #[doc(alias = "__ixor__")]
    pub fn symmetric_difference_update<'a>(&self, xs: impl IntoIterator<Item = &'a T>) -> Result<()>
    where
        T: 'a,
    {
        self.raw
            .call("symmetric_difference_update", &self.members(xs)?)
    }

    /// Whether no member is in `xs`.
    ///
    /// # Errors
    /// As [`Set::add`].
    pub fn isdisjoint<'a>(&self, xs: impl IntoIterator<Item = &'a T>) -> Result<bool>
    where
        T: 'a,
    {
        self.raw.call("isdisjoint", &self.members(xs)?)
    }

    /// Whether every member is in `xs` (`s <= xs`).
    ///
    /// # Errors
    /// As [`Set::add`].
    #[doc(alias = "__le__")]
    pub fn issubset<'a>(&self, xs: impl IntoIterator<Item = &'a T>) -> Result<bool>
    where
        T: 'a,
    {
        self.raw.call("issubset", &self.members(xs)?)
    }

    /// Whether every member is in `xs` and `xs` has others too (`s < xs`).
    ///
    /// # Errors
    /// As [`Set::add`].
    #[doc(alias = "__lt__")]
    pub fn is_proper_subset<'a>(&self, xs: impl IntoIterator<Item = &'a T>) -> Result<bool>
    where
        T: 'a,
    {
        self.raw.call("is_proper_subset", &self.members(xs)?)
    }

    /// Whether every member of `xs` is in this set and it has others too
    /// (`s > xs`).
    ///
    /// # Errors
    /// As [`Set::add`].
    #[doc(alias = "__gt__")]
    pub fn is_proper_superset<'a>(&self, xs: impl IntoIterator<Item = &'a T>) -> Result<bool>
    where
        T: 'a,
    {
        self.raw.call("is_proper_superset", &self.members(xs)?)
    }

    /// Whether every member of `xs` is in this set (`s >= xs`).
    ///
    /// # Errors
    /// As [`Set::add`].
    #[doc(alias = "__ge__")]
    pub fn issuperset<'a>(&self, xs: impl IntoIterator<Item = &'a T>) -> Result<bool>
    where
        T: 'a,
    {
        self.raw.call("issuperset", &self.members(xs)?)
    }
}

// ------------------------------------------------------------------ Array

proxy! {
    /// A fixed-length array in the manager (Python's `Manager().Array`).
    ///
    /// # Errors
    /// Indexing out of range is [`crate::Error::Remote`] of kind `Index`.
    #[doc(alias = "ArrayProxy")]
    Array[T] "array"
}

impl<T: Serialize + DeserializeOwned> Array<T> {
    /// `a[i]`.
    ///
    /// # Errors
    /// When `i` is out of range or the manager cannot be reached.
    pub fn get(&self, i: isize) -> Result<T> {
        match self.raw.call_opt("get", &(i as i64))? {
            Some(v) => Ok(v),
            None => Err(crate::Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("array index {i} out of range"),
            ))),
        }
    }

    /// `a[i] = x`.
    ///
    /// # Errors
    /// When `i` is out of range or the manager cannot be reached.
    pub fn set(&self, i: isize, x: &T) -> Result<()> {
        self.raw.call("set", &(i as i64, self.raw.item(x)?))
    }

    /// `len(a)`.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn len(&self) -> Result<usize> {
        self.raw.call::<_, u64>("len", &()).map(|n| n as usize)
    }

    /// `len(a) == 0`.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// A snapshot (Python's `a[:]`).
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        let items: Vec<Item> = self.raw.call("snapshot", &())?;
        self.raw.open_all(items)
    }

    /// Replaces every item at once (`a[:] = items`); the length must match.
    ///
    /// # Errors
    /// [`crate::Error::Remote`] for another length.
    pub fn assign(&self, items: &[T]) -> Result<()> {
        let items: Vec<Item> = items
            .iter()
            .map(|x| self.raw.item(x))
            .collect::<Result<_>>()?;
        self.raw.call("assign", &items)
    }
}

// ------------------------------------------------------------------ Value

proxy! {
    /// One value in the manager (Python's `Manager().Value`).
    ///
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// let manager = mproc::get_context("forkserver")?.manager()?;
    /// let v = manager.value(&1.5f64)?;
    /// assert_eq!(v.add(1.0)?, 2.5);
    /// v.set(&0.0)?;
    /// assert_eq!(v.get()?, 0.0);
    /// # Ok(()) }
    /// ```
    #[doc(alias = "ValueProxy")]
    Value[T] "value"
}

impl<T: Serialize + DeserializeOwned> Value<T> {
    /// `v.value`.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn get(&self) -> Result<T> {
        self.raw.call_item("get", &())
    }

    /// `v.value = x`.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn set(&self, x: &T) -> Result<()> {
        self.raw.call("set", &self.raw.item(x)?)
    }

    /// Sets `x` and returns the old value, atomically.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn swap(&self, x: &T) -> Result<T> {
        self.raw.call_item("swap", &self.raw.item(x)?)
    }

    /// Sets `new` only if the value is still `expected`; whether it did.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn compare_and_set(&self, expected: &T, new: &T) -> Result<bool> {
        self.raw
            .call("cas", &(self.raw.probe(expected)?, self.raw.item(new)?))
    }

    /// Atomically replaces the value with `f(value)`; the new value. `f`
    /// may run more than once under contention.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn update_with(&self, mut f: impl FnMut(T) -> T) -> Result<T> {
        loop {
            let old: Item = self.raw.call("get", &())?;
            let expected = old.bytes.clone();
            let new = f(self.raw.open(old)?);
            if self
                .raw
                .call::<_, bool>("cas", &(&expected, self.raw.item(&new)?))?
            {
                return Ok(new);
            }
        }
    }
}

impl<T: Number> Value<T> {
    /// Atomically adds `delta`; the sum.
    ///
    /// # Errors
    /// When the manager cannot be reached or the sum overflows.
    #[doc(alias = "__iadd__")]
    pub fn add(&self, delta: T) -> Result<T> {
        let v: Bytes = self.raw.call("add", &(T::TAG.0, Bytes(enc(&delta)?)))?;
        dec(&v.0)
    }
}

// ------------------------------------------------------------------ Namespace

/// Named attributes in the manager (Python's `Manager().Namespace()`).
///
/// As in Python, a name starting with `_` belongs to this proxy alone and
/// is never sent to the manager (the seeds: "`_xxx` attributes belong to the
/// proxy").
///
/// ```
/// # fn main() -> mproc::Result<()> {
/// let manager = mproc::get_context("forkserver")?.manager()?;
/// let ns = manager.namespace()?;
/// ns.set("x", &10)?;
/// ns.set("name", "n")?;
/// ns.set("_local", &1)?;
/// assert_eq!(ns.get::<i32>("x")?, Some(10));
/// assert_eq!(ns.names()?, vec!["name".to_string(), "x".to_string()]);
/// # Ok(()) }
/// ```
#[doc(alias = "NamespaceProxy")]
pub struct Namespace {
    raw: RawProxy,
    local: Mutex<HashMap<String, Vec<u8>>>,
}

impl Clone for Namespace {
    fn clone(&self) -> Self {
        Namespace {
            raw: self.raw.clone(),
            local: Mutex::new(
                self.local
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
            ),
        }
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({:?})", self.raw)
    }
}

impl Serialize for Namespace {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Namespace {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        RawProxy::deserialize(d).map(Namespace::__from_raw)
    }
}

impl BaseProxy for Namespace {
    fn kind() -> &'static str {
        "namespace"
    }
    fn id(&self) -> u64 {
        self.raw.id
    }
    fn __from_raw(raw: RawProxy) -> Self {
        Namespace {
            raw,
            local: Mutex::new(HashMap::new()),
        }
    }
    fn __raw(&self) -> &RawProxy {
        &self.raw
    }
}

impl Namespace {
    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `getattr(ns, name, None)`.
    ///
    /// # Errors
    /// When the manager cannot be reached or the value does not decode as `T`.
    #[doc(alias = "__getattr__")]
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        if name.starts_with('_') {
            return self.local().get(name).map(|v| dec(v)).transpose();
        }
        self.raw.call_opt("get", name)
    }

    /// `setattr(ns, name, value)`.
    ///
    /// # Errors
    /// When the manager cannot be reached or `value` cannot be encoded.
    #[doc(alias = "__setattr__")]
    pub fn set<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<()> {
        if name.starts_with('_') {
            self.local().insert(name.to_string(), enc(value)?);
            return Ok(());
        }
        self.raw.call("set", &(name, self.raw.item(value)?))
    }

    /// `delattr(ns, name)`; whether it was there.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "__delattr__")]
    pub fn del(&self, name: &str) -> Result<bool> {
        if name.starts_with('_') {
            return Ok(self.local().remove(name).is_some());
        }
        self.raw.call("del", name)
    }

    /// The shared attribute names, sorted.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn names(&self) -> Result<Vec<String>> {
        self.raw.call("names", &())
    }

    /// Atomically adds `delta` to a numeric attribute (zero when absent);
    /// the sum.
    ///
    /// # Errors
    /// When the manager cannot be reached, or the sum overflows.
    pub fn add<T: Number>(&self, name: &str, delta: T) -> Result<T> {
        let v: Bytes = self
            .raw
            .call("add", &(name, T::TAG.0, Bytes(enc(&delta)?)))?;
        dec(&v.0)
    }
}

// ------------------------------------------------------------------ Queue

proxy! {
    /// A queue in the manager (Python's `Manager().Queue()`): any process
    /// holding the proxy can put and get, and items never pass through a
    /// feeder thread of the putter (nothing is lost when a putter exits).
    ///
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// let manager = mproc::get_context("forkserver")?.manager()?;
    /// let q = manager.queue::<String>()?;
    /// q.put("job".to_string())?;
    /// assert_eq!(q.get_timeout(std::time::Duration::from_secs(5))?, "job");
    /// assert_eq!(q.try_get()?, None);
    /// # Ok(()) }
    /// ```
    #[doc(alias = "QueueProxy")]
    Queue[T] "queue" | "joinable_queue"
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    fn put_wait(&self, item: T, wait: Option<Duration>) -> std::result::Result<(), PutError<T>> {
        let bytes = match self.raw.item(&item) {
            Ok(bytes) => bytes,
            Err(e) => return Err(PutError::Failed(item, e)),
        };
        match self.raw.call::<_, ()>("put", &(bytes, wait)) {
            Ok(()) => Ok(()),
            Err(Error::Remote(e)) if e.kind == RemoteErrorKind::Full => Err(PutError::Full(item)),
            Err(e) => Err(PutError::Failed(item, e)),
        }
    }

    fn get_wait(&self, wait: Option<Duration>) -> Result<T> {
        self.raw.call_item("get", &wait)
    }

    /// Puts `item` at the back, waiting while a bounded queue is full
    /// (Python's `put`): the putter is held back until a `get` makes room.
    ///
    /// # Errors
    /// [`PutError::Failed`] when the item cannot be encoded or the manager
    /// cannot be reached. The item comes back in the error.
    pub fn put(&self, item: T) -> std::result::Result<(), PutError<T>> {
        self.put_wait(item, None)
    }

    /// [`put`](Queue::put) waiting at most `timeout` for room (Python's
    /// `put(item, timeout=…)`).
    ///
    /// # Errors
    /// As `put`, plus [`PutError::Full`] (Python's `queue.Full`) when no room
    /// came in time.
    pub fn put_timeout(&self, item: T, timeout: Duration) -> std::result::Result<(), PutError<T>> {
        self.put_wait(item, Some(timeout))
    }

    /// [`put`](Queue::put) only if there is room now (Python's `put_nowait`
    /// and `put(item, False)`).
    ///
    /// # Errors
    /// As `put`, plus [`PutError::Full`] (Python's `queue.Full`) when full.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// let manager = mproc::get_context("forkserver")?.manager()?;
    /// let q = manager.bounded_queue::<String>(1)?;
    /// q.put_nowait("first".to_string())?;
    /// let err = q.put_nowait("second".to_string()).unwrap_err();
    /// assert!(err.is_full());
    /// assert_eq!(err.into_inner(), "second");
    /// # Ok(()) }
    /// ```
    pub fn put_nowait(&self, item: T) -> std::result::Result<(), PutError<T>> {
        self.put_wait(item, Some(Duration::ZERO))
    }

    /// Takes the oldest item, waiting for one.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn get(&self) -> Result<T> {
        self.get_wait(None)
    }

    /// Takes the oldest item, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`crate::Error::Timeout`] when none came (Python's `queue.Empty`).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_wait(Some(timeout))
    }

    /// Takes the oldest item if there is one now (Python's `get_nowait`).
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "get_nowait")]
    pub fn try_get(&self) -> Result<Option<T>> {
        match self.get_wait(Some(Duration::ZERO)) {
            Ok(v) => Ok(Some(v)),
            Err(Error::Remote(e)) if e.kind == RemoteErrorKind::Empty => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The number of items.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn qsize(&self) -> Result<usize> {
        self.raw.call::<_, u64>("qsize", &()).map(|n| n as usize)
    }

    /// Whether it is empty.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn empty(&self) -> Result<bool> {
        self.raw.call("empty", &())
    }

    /// Whether a bounded queue is full.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn full(&self) -> Result<bool> {
        self.raw.call("full", &())
    }
}

/// A queue that counts unfinished tasks (Python's
/// `Manager().JoinableQueue()`); everything of [`Queue`] through `Deref`.
///
/// ```
/// # fn main() -> mproc::Result<()> {
/// let manager = mproc::get_context("forkserver")?.manager()?;
/// let q = manager.joinable_queue::<u32>()?;
/// q.put(1)?;
/// assert!(!q.join_timeout(std::time::Duration::from_millis(10))?);
/// assert_eq!(q.get()?, 1);
/// q.task_done()?;
/// assert!(q.join_timeout(std::time::Duration::from_secs(5))?);
/// # Ok(()) }
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinableQueue({:?})", self.queue.raw)
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.queue.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        RawProxy::deserialize(d).map(JoinableQueue::__from_raw)
    }
}

impl<T> BaseProxy for JoinableQueue<T> {
    fn kind() -> &'static str {
        "joinable_queue"
    }
    fn id(&self) -> u64 {
        self.queue.raw.id
    }
    fn __from_raw(raw: RawProxy) -> Self {
        JoinableQueue {
            queue: Queue::__from_raw(raw),
        }
    }
    fn __raw(&self) -> &RawProxy {
        &self.queue.raw
    }
}

impl<T> std::ops::Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// Marks one item taken earlier as done.
    ///
    /// # Errors
    /// [`crate::Error::Remote`] of kind `Value` (Python's `ValueError`) when called more
    /// times than items were put.
    pub fn task_done(&self) -> Result<()> {
        self.queue.raw.call("task_done", &())
    }

    /// Waits until every item put has been marked done.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn join(&self) -> Result<()> {
        self.queue
            .raw
            .call::<_, bool>("join", &None::<Duration>)
            .map(drop)
    }

    /// [`JoinableQueue::join`] for at most `timeout`; whether all were done.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool> {
        self.queue.raw.call("join", &Some(timeout))
    }
}

// ------------------------------------------------------------------ locks

/// Releases a manager lock when dropped (from [`Lock::lock`],
/// [`RLock::lock`], [`Condition::lock`]).
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct LockGuard<'a> {
    raw: &'a RawProxy,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.raw.call::<_, ()>("release", &Owner::current()) {
            tracing::debug!(error = %e, "manager: releasing a lock guard failed");
        }
    }
}

macro_rules! lock_methods {
    ($name:ident) => {
        impl $name {
            fn acquire_wait(&self, wait: Option<Duration>) -> Result<bool> {
                self.raw.call("acquire", &(Owner::current(), wait))
            }

            /// Acquires, waiting as long as it takes (Python's `acquire()`).
            ///
            /// # Errors
            /// When the manager cannot be reached.
            pub fn acquire(&self) -> Result<()> {
                self.acquire_wait(None).map(drop)
            }

            /// Acquires, waiting at most `timeout`; whether it did (Python's
            /// `acquire(timeout=t)`).
            ///
            /// # Errors
            /// When the manager cannot be reached.
            pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool> {
                self.acquire_wait(Some(timeout))
            }

            /// Acquires only if free now (Python's `acquire(False)`).
            ///
            /// # Errors
            /// When the manager cannot be reached.
            pub fn try_acquire(&self) -> Result<bool> {
                self.acquire_wait(Some(Duration::ZERO))
            }

            /// Releases.
            ///
            /// # Errors
            /// [`crate::Error::Remote`] with a [`RemoteError`](super::RemoteError) of
            /// kind `NotOwner` when it is not held (by this thread, for the
            /// reentrant kinds).
            pub fn release(&self) -> Result<()> {
                self.raw.call("release", &Owner::current())
            }

            /// Acquires and returns a guard that releases on drop (Python's
            /// `with lock:`).
            ///
            /// # Errors
            /// When the manager cannot be reached.
            #[doc(alias = "__enter__")]
            pub fn lock(&self) -> Result<LockGuard<'_>> {
                self.acquire()?;
                Ok(LockGuard { raw: &self.raw })
            }

            /// Whether anyone holds it.
            ///
            /// # Errors
            /// When the manager cannot be reached.
            pub fn locked(&self) -> Result<bool> {
                self.raw.call("locked", &())
            }
        }
    };
}

proxy! {
    /// A lock in the manager (Python's `Manager().Lock()`). Any thread may
    /// release it; if the connection that took it closes (its process died)
    /// it is released, so a killed holder never stalls the others.
    ///
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// let manager = mproc::get_context("forkserver")?.manager()?;
    /// let lock = manager.lock()?;
    /// {
    ///     let _held = lock.lock()?;
    ///     assert!(!lock.try_acquire()?);
    /// }
    /// assert!(lock.try_acquire()?);
    /// lock.release()?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "AcquirerProxy")]
    Lock[] "lock"
}
lock_methods!(Lock);

proxy! {
    /// A reentrant lock in the manager (Python's `Manager().RLock()`): the
    /// thread holding it may acquire it again, and must release it as often.
    #[doc(alias = "RLockProxy")]
    RLock[] "rlock"
}
lock_methods!(RLock);

proxy! {
    /// A condition variable in the manager with its own reentrant lock
    /// (Python's `Manager().Condition()`).
    ///
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// let manager = mproc::get_context("forkserver")?.manager()?;
    /// let cond = manager.condition()?;
    /// let _held = cond.lock()?;
    /// // Nobody notifies: the wait times out and the lock is held again.
    /// assert!(!cond.wait_timeout(std::time::Duration::from_millis(10))?);
    /// cond.notify_all()?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "ConditionProxy")]
    Condition[] "condition"
}
lock_methods!(Condition);

impl Condition {
    /// Releases the lock, waits for a notification, takes the lock back.
    ///
    /// # Errors
    /// `NotOwner` when this thread does not hold the lock.
    pub fn wait(&self) -> Result<()> {
        self.raw
            .call::<_, bool>("wait", &(Owner::current(), None::<Duration>))
            .map(drop)
    }

    /// [`Condition::wait`] for at most `timeout`; whether it was notified.
    ///
    /// # Errors
    /// As [`Condition::wait`].
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.raw.call("wait", &(Owner::current(), Some(timeout)))
    }

    /// Waits until `pred()` holds, for at most `timeout` in all (Python's
    /// `wait_for`); the last value of `pred()`.
    ///
    /// # Errors
    /// As [`Condition::wait`].
    pub fn wait_for(&self, mut pred: impl FnMut() -> bool, timeout: Duration) -> Result<bool> {
        let end = std::time::Instant::now().checked_add(timeout);
        loop {
            if pred() {
                return Ok(true);
            }
            let left = end.map_or(timeout, |e| {
                e.saturating_duration_since(std::time::Instant::now())
            });
            if left.is_zero() {
                return Ok(false);
            }
            self.wait_timeout(left)?;
        }
    }

    /// Wakes one waiter.
    ///
    /// # Errors
    /// `NotOwner` when this thread does not hold the lock.
    pub fn notify(&self) -> Result<()> {
        self.notify_n(1)
    }

    /// Wakes up to `n` waiters.
    ///
    /// # Errors
    /// As [`Condition::notify`].
    pub fn notify_n(&self, n: usize) -> Result<()> {
        self.raw.call("notify", &(Owner::current(), n as u64))
    }

    /// Wakes every waiter.
    ///
    /// # Errors
    /// As [`Condition::notify`].
    pub fn notify_all(&self) -> Result<()> {
        self.raw.call("notify_all", &Owner::current())
    }
}

proxy! {
    /// A semaphore in the manager (Python's `Manager().Semaphore(n)` and
    /// `BoundedSemaphore(n)`, which refuses to be released above its start).
    #[doc(alias = "BoundedSemaphore")]
    Semaphore[] "semaphore" | "bounded_semaphore"
}

impl Semaphore {
    fn acquire_wait(&self, wait: Option<Duration>) -> Result<bool> {
        self.raw.call("acquire", &wait)
    }

    /// Takes one unit, waiting for it.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn acquire(&self) -> Result<()> {
        self.acquire_wait(None).map(drop)
    }

    /// Takes one unit, waiting at most `timeout`; whether it did.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool> {
        self.acquire_wait(Some(timeout))
    }

    /// Takes one unit if there is one now.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn try_acquire(&self) -> Result<bool> {
        self.acquire_wait(Some(Duration::ZERO))
    }

    /// Gives one unit back.
    ///
    /// # Errors
    /// [`crate::Error::Remote`] of kind `Value` (Python's `ValueError`) when a bounded
    /// semaphore would exceed its start value.
    pub fn release(&self) -> Result<()> {
        self.raw.call("release", &1u64)
    }

    /// The units available now.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "get_value")]
    pub fn value(&self) -> Result<u64> {
        self.raw.call("value", &())
    }
}

proxy! {
    /// An event in the manager (Python's `Manager().Event()`).
    ///
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// let manager = mproc::get_context("forkserver")?.manager()?;
    /// let e = manager.event()?;
    /// assert!(!e.wait_timeout(std::time::Duration::from_millis(10))?);
    /// e.set()?;
    /// assert!(e.is_set()?);
    /// e.wait()?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "EventProxy")]
    Event[] "event"
}

impl Event {
    /// Sets the flag and wakes every waiter.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn set(&self) -> Result<()> {
        self.raw.call("set", &())
    }

    /// Clears the flag.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn clear(&self) -> Result<()> {
        self.raw.call("clear", &())
    }

    /// Whether the flag is set.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn is_set(&self) -> Result<bool> {
        self.raw.call("is_set", &())
    }

    /// Waits until the flag is set.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn wait(&self) -> Result<()> {
        self.raw
            .call::<_, bool>("wait", &None::<Duration>)
            .map(drop)
    }

    /// Waits at most `timeout`; whether the flag is set.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.raw.call("wait", &Some(timeout))
    }
}

proxy! {
    /// A barrier in the manager (Python's `Manager().Barrier(parties)`).
    ///
    /// # Errors
    /// A wait on a broken barrier (aborted, reset, or a waiter that timed
    /// out) fails with [`crate::Error::Remote`] of kind `BrokenBarrier`.
    #[doc(alias = "BarrierProxy")]
    Barrier[] "barrier"
}

impl Barrier {
    /// Waits until `parties` callers are waiting; this caller's arrival
    /// index (`0..parties`).
    ///
    /// # Errors
    /// `BrokenBarrier` as described on [`Barrier`].
    pub fn wait(&self) -> Result<usize> {
        self.raw
            .call::<_, u64>("wait", &None::<Duration>)
            .map(|n| n as usize)
    }

    /// [`Barrier::wait`] for at most `timeout`; a timeout breaks the barrier
    /// (as Python's).
    ///
    /// # Errors
    /// `BrokenBarrier` as described on [`Barrier`].
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize> {
        self.raw
            .call::<_, u64>("wait", &Some(timeout))
            .map(|n| n as usize)
    }

    /// Breaks the barrier: every waiter and later caller fails.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn abort(&self) -> Result<()> {
        self.raw.call("abort", &())
    }

    /// Back to the empty, unbroken state; current waiters fail.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn reset(&self) -> Result<()> {
        self.raw.call("reset", &())
    }

    /// The number of parties.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn parties(&self) -> Result<usize> {
        self.raw.call::<_, u64>("parties", &()).map(|n| n as usize)
    }

    /// How many are waiting now.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn n_waiting(&self) -> Result<usize> {
        self.raw
            .call::<_, u64>("n_waiting", &())
            .map(|n| n as usize)
    }

    /// Whether it is broken.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn broken(&self) -> Result<bool> {
        self.raw.call("broken", &())
    }
}

// ------------------------------------------------------------------ registered types

/// A proxy to a registered [`Shared`] object (Python's `AutoProxy`).
pub struct Proxy<T> {
    raw: RawProxy,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Proxy<T> {
    fn clone(&self) -> Self {
        Proxy {
            raw: self.raw.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Proxy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proxy<{}>({:?})", std::any::type_name::<T>(), self.raw)
    }
}

impl<T> Serialize for Proxy<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Proxy<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        RawProxy::deserialize(d).map(|raw| Proxy {
            raw,
            _t: PhantomData,
        })
    }
}

impl<T: Shared> BaseProxy for Proxy<T> {
    fn kind() -> &'static str {
        std::any::type_name::<T>()
    }
    fn id(&self) -> u64 {
        self.raw.id
    }
    fn __from_raw(raw: RawProxy) -> Self {
        Proxy {
            raw,
            _t: PhantomData,
        }
    }
    fn __raw(&self) -> &RawProxy {
        &self.raw
    }
}

impl<T: Shared> Proxy<T> {
    /// Calls `method` with `args` (a tuple for several) and decodes its
    /// result as `R` (Python's `proxy._callmethod(name, args)`).
    ///
    /// # Errors
    /// When the manager cannot be reached, or the method fails, does not
    /// exist, or returns something that does not decode as `R`.
    #[doc(alias = "_callmethod")]
    pub fn call<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<R> {
        self.raw.call(method, args)
    }
}
