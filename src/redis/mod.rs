//! The Redis provider: one atomic script round trip per decision, shared by every instance.
