//! Helpers for arbiter's integration tests.
