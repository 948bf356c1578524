//! arbiter-sockets (under construction).
