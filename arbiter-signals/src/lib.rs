//! arbiter-signals (under construction).
