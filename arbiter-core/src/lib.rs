//! arbiter-core (under construction).
