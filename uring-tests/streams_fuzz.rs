//! `StreamReader` against asyncio's spec (`asyncio-stream.rst`, and
//! CPython's `streams.py` where the docs are silent).

use std::future::Future;
use std::task::{Context, Poll, Waker};

use ringloop::StreamReader;
use ringloop::prelude::*;

/// The error `set_exception` is given (asyncio's connection-lost error).
const LOST: &str = "fuzz: connection lost";

// ---------------------------------------------------------------- regressions

// Bugs a fuzz of the reader found, each as the smallest case. They use no loop (the
// reader is fed by hand), so they run once, not per backend.

/// Polls `fut` once: these reads must answer without waiting.
fn now<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the read waits"),
    }
}

#[test]
fn readline_takes_a_line_of_limit_bytes_and_its_newline() {
    // CPython: "Limit sets the maximal length of data that can be returned,
    // not counting the separator"; its test_readline_limit reads b"1234567\n"
    // with limit=7.
    let r = StreamReader::new(7).unwrap();
    r.feed_data(b"1234567\n12345678\nok\n");
    assert_eq!(&now(r.readline()).unwrap()[..], b"1234567\n");
    assert!(matches!(
        now(r.readline()),
        Err(Error::LimitOverrun { consumed: 8 })
    ));
    assert_eq!(
        &now(r.readline()).unwrap()[..],
        b"ok\n",
        "the long line was dropped"
    );
}

#[test]
fn readuntil_waits_while_a_long_separator_may_still_end_within_the_limit() {
    // Limit 4: "abcd" may still be followed by "\r\n", so "abcd\r" is no
    // overrun yet; "abcdef" is ("abcde" still waits: asyncio does not look
    // at how much of the separator the tail holds).
    let r = StreamReader::new(4).unwrap();
    r.feed_data(b"abcd\r");
    let mut fut = std::pin::pin!(r.readuntil(b"\r\n"));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    r.feed_data(b"\n");
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(b)) => assert_eq!(&b[..], b"abcd\r\n"),
        other => panic!("{other:?}"),
    }
    r.feed_data(b"abcdef");
    assert!(matches!(
        now(r.readuntil(b"\r\n")),
        Err(Error::LimitOverrun { consumed: 5 })
    ));
}

#[test]
fn readuntil_any_returns_the_shortest_result() {
    // "the shortest possible that has any separator as the suffix"
    let r = StreamReader::new(64).unwrap();
    r.feed_data(b"a;b\nrest");
    assert_eq!(&now(r.readuntil_any(&[b"a;b\n", b";"])).unwrap()[..], b"a;");
    assert_eq!(&now(r.readuntil_any(&[b"b\n", b"\n"])).unwrap()[..], b"b\n");
    // On a tie the shorter separator is the match, also for the limit.
    let r = StreamReader::new(1).unwrap();
    r.feed_data(b"xab");
    assert!(matches!(
        now(r.readuntil_any(&[b"xab", b"b"])),
        Err(Error::LimitOverrun { consumed: 2 })
    ));
}

#[test]
fn read_raises_the_connection_error_first() {
    // CPython's read() raises the exception before it looks at n or EOF.
    let r = StreamReader::new(16).unwrap();
    r.feed_data(b"data");
    r.feed_eof();
    r.set_exception(Error::Closed(LOST.into()));
    assert!(matches!(now(r.read(0)), Err(Error::Closed(_))));
    assert!(matches!(now(r.read(-1)), Err(Error::Closed(_))));
    assert!(matches!(now(r.read(2)), Err(Error::Closed(_))));
}
