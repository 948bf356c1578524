//! arbiter-gpu (under construction).
