//! The `parti` command.

fn main() {}
