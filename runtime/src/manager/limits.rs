//! What a manager's TCP listener lets an unauthenticated peer take (see
//! `listener`): set on the builder, carried to the server with its start
//! arguments. Compiled without the `net` feature too, so the start
//! arguments keep one shape.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How much an unauthenticated TCP peer may take (set with
/// [`ManagerBuilder::handshake_timeout`](super::ManagerBuilder::handshake_timeout)
/// and [`ManagerBuilder::max_handshakes`](super::ManagerBuilder::max_handshakes)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(feature = "net"), allow(dead_code))]
pub(crate) struct Limits {
    /// Longest time from accept to a finished handshake.
    pub(crate) handshake_timeout: Duration,
    /// Most connections in the handshake at once, per listener.
    pub(crate) max_handshakes: usize,
}

/// Default [`Limits::handshake_timeout`].
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default [`Limits::max_handshakes`].
pub(crate) const MAX_HANDSHAKES: usize = 64;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_handshakes: MAX_HANDSHAKES,
        }
    }
}
