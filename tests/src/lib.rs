//! Shared helpers for the integration tests: counting fds and zombies, and
//! running a program under a process limit.

pub mod fd_limit;
pub mod limited;
mod zombies;

pub use zombies::zombies_of;

/// Number of open fds of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}
