//! `wait_until` and `wait_until_sync`: polling, deadlines and their error messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::time::Duration;

use parti_testkit::{TestkitError, wait_until, wait_until_sync};

#[tokio::test]
async fn returns_once_the_condition_holds() {
    let calls = Cell::new(0);
    let elapsed = wait_until(Duration::from_secs(5), "the third poll", || {
        calls.set(calls.get() + 1);
        let done = calls.get() >= 3;
        async move { done }
    })
    .await
    .unwrap();
    assert_eq!(calls.get(), 3);
    assert!(elapsed < Duration::from_secs(5));
}

#[tokio::test]
async fn timeout_names_what_was_awaited() {
    let err = wait_until(Duration::from_millis(100), "the impossible", || async {
        false
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, TestkitError::Timeout { waited, .. } if waited == Duration::from_millis(100))
    );
    assert_eq!(
        err.to_string(),
        "timed out after 100ms waiting for the impossible"
    );
}

#[tokio::test]
async fn a_hanging_condition_is_cut_off_at_the_deadline() {
    let err = wait_until(
        Duration::from_millis(100),
        "a reply",
        std::future::pending::<bool>,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("a reply"));
}

#[tokio::test]
async fn sync_conditions_are_polled_too() {
    let mut calls = 0;
    wait_until_sync(Duration::from_secs(5), "the second poll", || {
        calls += 1;
        calls == 2
    })
    .await
    .unwrap();
    assert_eq!(calls, 2);
    let err = wait_until_sync(Duration::from_millis(50), "never", || false)
        .await
        .unwrap_err();
    assert!(err.to_string().ends_with("waiting for never"));
}
