//! Serving your own types (Python's `BaseManager.register`).
//!
//! A type that implements [`Shared`] can live in the manager process: its
//! methods are dispatched by name, with arguments and results encoded by
//! serde, and a [`Proxy`](super::Proxy) calls them from any process. The
//! server must know the type's code, so registration is part of the
//! server's type: [`ManagerBuilder::register`](super::ManagerBuilder::register)
//! adds the type to a type-level list that the server's entry function is
//! instantiated with, and no function pointer ever needs to cross a process
//! boundary.

use std::any::type_name;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::objects::{Cx, Object, Ret};
use super::protocol::{RemoteError, RemoteErrorKind};
use crate::codec;

/// A type a manager can serve, with methods called by name (the object
/// behind Python's `BaseManager.register(typeid, callable)`).
///
/// # Examples
///
/// ```
/// # fn main() -> mproc::Result<()> {
/// use mproc::manager::{Call, CallError, Returned, Shared};
///
/// struct Maths { total: i64 }
///
/// impl Shared for Maths {
///     type Init = i64;
///     fn new(start: i64) -> Self { Maths { total: start } }
///     fn call(&mut self, call: Call<'_>) -> Result<Returned, CallError> {
///         match call.method() {
///             "add" => {
///                 let n: i64 = call.args()?;
///                 self.total += n;
///                 call.ret(&self.total)
///             }
///             "total" => call.ret(&self.total),
///             _ => Err(call.no_such_method()),
///         }
///     }
/// }
///
/// let ctx = mproc::get_context("spawn")?;
/// let manager = ctx.manager_builder().register::<Maths>().start()?;
/// let maths = manager.create::<Maths>(&40)?;
/// assert_eq!(maths.call::<_, i64>("add", &2)?, 42);
/// assert_eq!(maths.call::<_, i64>("total", &())?, 42);
/// assert!(maths.call::<_, ()>("divide", &()).is_err());
/// # Ok(()) }
/// ```
#[doc(alias = "register")]
#[doc(alias = "BaseManager")]
pub trait Shared: Send + 'static {
    /// What [`Manager::create`](super::Manager::create) sends to build one.
    type Init: Serialize + DeserializeOwned;

    /// Builds the object in the manager process.
    fn new(init: Self::Init) -> Self;

    /// Runs one method call. Calls on one object never overlap.
    ///
    /// # Errors
    /// A [`CallError`] the caller receives as a
    /// [`RemoteError`](super::RemoteError) of kind `Failed` (or
    /// `NoSuchMethod` / `BadArguments`).
    fn call(&mut self, call: Call<'_>) -> Result<Returned, CallError>;
}

/// One method call on a [`Shared`] object: its name and encoded arguments.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    method: &'a str,
    args: &'a [u8],
}

impl<'a> Call<'a> {
    /// The method's name.
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The arguments, decoded as `A` (a tuple for several).
    ///
    /// # Errors
    /// When they do not decode as `A`.
    pub fn args<A: DeserializeOwned>(&self) -> Result<A, CallError> {
        codec::decode(self.args, Vec::new()).map_err(|e| CallError {
            kind: RemoteErrorKind::BadArguments,
            message: format!("{}: {e}", self.method),
        })
    }

    /// Encodes the method's return value.
    ///
    /// # Errors
    /// When `value` cannot be encoded (or holds a file descriptor).
    pub fn ret<T: Serialize + ?Sized>(&self, value: &T) -> Result<Returned, CallError> {
        match codec::encode(value) {
            Ok((b, fds)) if fds.is_empty() => Ok(Returned(b)),
            Ok(_) => Err(CallError::new("a manager cannot return file descriptors")),
            Err(e) => Err(CallError::new(e.to_string())),
        }
    }

    /// The error for a method name the type does not have.
    pub fn no_such_method(&self) -> CallError {
        CallError {
            kind: RemoteErrorKind::NoSuchMethod,
            message: format!("no method {:?}", self.method),
        }
    }
}

/// An encoded return value, made by [`Call::ret`].
#[derive(Debug)]
pub struct Returned(Vec<u8>);

/// Why a [`Shared`] method failed.
#[derive(Debug, Clone)]
pub struct CallError {
    kind: RemoteErrorKind,
    message: String,
}

impl CallError {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> CallError {
        CallError {
            kind: RemoteErrorKind::Failed,
            message: message.into(),
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CallError {}

/// A [`Shared`] object with its type erased (an implementation detail).
#[doc(hidden)]
pub trait DynShared: Send {
    fn call_dyn(&mut self, method: &str, args: &[u8]) -> Result<Vec<u8>, CallError>;
}

impl<T: Shared> DynShared for T {
    fn call_dyn(&mut self, method: &str, args: &[u8]) -> Result<Vec<u8>, CallError> {
        self.call(Call { method, args }).map(|r| r.0)
    }
}

/// The types a manager server can build: `()`, or `(T, Rest)` with `T:
/// Shared`. Built by [`ManagerBuilder::register`](super::ManagerBuilder::register).
pub trait Registry: 'static {
    #[doc(hidden)]
    fn __create(kind: &str, args: &[u8]) -> Option<Result<Box<dyn DynShared>, CallError>>;
}

impl Registry for () {
    fn __create(_: &str, _: &[u8]) -> Option<Result<Box<dyn DynShared>, CallError>> {
        None
    }
}

impl<T: Shared, Rest: Registry> Registry for (T, Rest) {
    fn __create(kind: &str, args: &[u8]) -> Option<Result<Box<dyn DynShared>, CallError>> {
        if kind != type_name::<T>() {
            return Rest::__create(kind, args);
        }
        Some(
            codec::decode::<T::Init>(args, Vec::new())
                .map(|init| Box::new(T::new(init)) as Box<dyn DynShared>)
                .map_err(|e| CallError::new(format!("building {kind}: {e}"))),
        )
    }
}

/// A registered object in the server.
pub(crate) struct UserObject {
    kind: String,
    inner: Mutex<Box<dyn DynShared>>,
}

impl UserObject {
    pub(crate) fn new(kind: String, inner: Box<dyn DynShared>) -> UserObject {
        UserObject {
            kind,
            inner: Mutex::new(inner),
        }
    }
}

impl Object for UserObject {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn call(&self, _cx: &Cx<'_>, method: &str, args: &[u8]) -> Ret {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inner.call_dyn(method, args)
        }));
        match r {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(RemoteError::new(e.kind, e.message)),
            Err(p) => Err(RemoteError::new(
                RemoteErrorKind::Failed,
                format!(
                    "{}.{method} panicked: {}",
                    self.kind,
                    crate::job::panic_message(&*p)
                ),
            )),
        }
    }
}
