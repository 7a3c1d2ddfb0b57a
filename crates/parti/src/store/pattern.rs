//! NATS-style key patterns for `list` and `watch`.

/// Whether `key` matches `pattern`: tokens split on `.`, `*` matches exactly one token and a
/// final `>` matches one or more.
///
/// ```
/// use parti::store::key_matches;
/// assert!(key_matches("worker.>", "worker.worker-1"));
/// assert!(key_matches(">", "cluster"));
/// assert!(key_matches("a.*.c", "a.b.c"));
/// assert!(!key_matches("worker.>", "worker"));
/// assert!(!key_matches("cluster", "cluster.x"));
/// ```
pub fn key_matches(pattern: &str, key: &str) -> bool {
    let mut keys = key.split('.');
    let mut pats = pattern.split('.').peekable();
    while let Some(p) = pats.next() {
        if p == ">" && pats.peek().is_none() {
            return keys.next().is_some();
        }
        match keys.next() {
            Some(k) if p == "*" || p == k => {}
            _ => return false,
        }
    }
    keys.next().is_none()
}
