//! Test support for Parti.
