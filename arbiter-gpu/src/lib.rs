//! arbiter-gpu: pure GPU balancing for pre-forked workers.
//!
//! Model: a [`GpuConfig`] names the devices (opaque ids such as `0`, `GPU-8d2c...`, `MIG-...`),
//! how many each worker gets, and the environment variable that carries them
//! ([`DEFAULT_ENV_VAR`]). A [`Balancer`] maps each stable worker slot to a fixed set of devices
//! (slot `s` gets the `k` devices starting at `(s*k) % D`, wrapping) and counts live holders
//! per device, keyed by unique worker id.
//!
//! Invariants: the mapping depends only on the slot, so a respawned worker sees its
//! predecessor's GPUs and changing the worker count moves no slot; with one worker per slot
//! `0..N`, per-device counts differ by at most one and never exceed
//! [`Balancer::cap`]; `release` is idempotent, so counters never drift or underflow (gunicorn's
//! `USE_GPUS` balancer decremented only on kill and murder, and twice for an aborted then
//! killed worker).
//!
//! Limits: no OS access, no clock, no discovery of devices (the ids are not checked against
//! hardware); during a rolling reload two workers of one slot both hold its devices, so a
//! device's load may exceed the cap by the number of slots being rolled at once.
//!
//! ```
//! use arbiter_gpu::{Balancer, GpuConfig, DEFAULT_ENV_VAR};
//!
//! let devices = GpuConfig::parse_list("0, 1, 2")?;
//! let mut gpus = Balancer::new(GpuConfig::new(devices, 1, DEFAULT_ENV_VAR)?, 7);
//! for slot in 0..7 {
//!     // Worker ids are the core's ages: unique, never reused.
//!     let devices = gpus.acquire(slot as u64 + 1, slot);
//!     assert_eq!(Balancer::env_value(&devices), (slot % 3).to_string());
//! }
//! assert_eq!(gpus.cap(), 3);
//! let loads: Vec<usize> = gpus.load().into_iter().map(|(_, n)| n).collect();
//! assert_eq!(loads, [3, 2, 2]);
//!
//! gpus.release(5); // the worker of slot 4 crashed ...
//! gpus.release(5); // ... and a second report of its exit changes nothing
//! assert_eq!(gpus.acquire(8, 4), ["1"]); // its replacement gets the same GPU
//! assert_eq!(gpus.env_var(), "CUDA_VISIBLE_DEVICES");
//! # Ok::<(), arbiter_gpu::GpuError>(())
//! ```

#![forbid(unsafe_code)]

mod balancer;
mod config;
mod error;

pub use balancer::Balancer;
pub use config::{DeviceId, GpuConfig, DEFAULT_ENV_VAR};
pub use error::GpuError;
