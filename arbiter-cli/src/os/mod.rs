//! The OS seam's real side: spawning (fork and exec), reaping, the notify socket, heartbeat
//! files, the pidfile, the process title, daemonizing, and the workers' memory (`/proc`).
//!
//! Model: tokio's `process/unix`: small wrappers that carry out what the runtime was told to
//! do and report what the kernel said. Nothing here decides: no policy, no deadlines. The only
//! `unsafe` of the runtime lives in `spawn` (fork, execve, the child's fd and signal set-up),
//! each block with its `SAFETY` reasoning.

pub mod daemon;
pub mod heartbeat;
pub mod hooks;
pub mod identity;
pub mod limits;
pub mod notify;
pub mod pidfile;
pub mod procfs;
pub mod seam;
pub mod spawn;
pub mod title;
