//! The clients of a running arbiter: `arbiter ctl` and `arbiter upgrade`. They speak the
//! control protocol ([`crate::protocol`]) and send signals named by the pidfile; they share no
//! code with the runtime.

pub mod ctl;
pub mod upgrade;
