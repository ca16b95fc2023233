//! A deadline on a remote shuffle fetch's progress: a peer that accepted a `do_get` and
//! then sends nothing (hung, or cut off without the connection closing) fails the fetch
//! instead of holding the task forever. The task then reports the output unreadable and
//! the scheduler computes it again elsewhere.
//!
//! Only time the reader spends waiting counts: a task suspended by the scheduler stops
//! polling its fetches, and the wait starts over when it comes back.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::time::{Instant, Sleep};

/// A poll later than this after the deadline passed means the reader was away (its task
/// suspended), not that the peer was silent: the wait starts over.
const AWAY: Duration = Duration::from_millis(500);

/// `inner`, failing with `stalled()` once it yields nothing for `limit` while polled.
pub struct ProgressDeadline<S, F> {
    inner: S,
    limit: Duration,
    sleep: Pin<Box<Sleep>>,
    waiting: bool,
    stalled: F,
}

impl<S, F> ProgressDeadline<S, F> {
    /// Wraps `inner`; `stalled` makes the error it ends with.
    pub fn new(inner: S, limit: Duration, stalled: F) -> Self {
        Self {
            inner,
            limit,
            sleep: Box::pin(tokio::time::sleep(limit)),
            waiting: false,
            stalled,
        }
    }
}

impl<S, T, E, F> Stream for ProgressDeadline<S, F>
where
    S: Stream<Item = Result<T, E>> + Unpin,
    F: Fn() -> E + Unpin,
{
    type Item = Result<T, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Poll::Ready(item) = Pin::new(&mut this.inner).poll_next(cx) {
            this.waiting = false;
            return Poll::Ready(item);
        }
        let now = Instant::now();
        let away = this.sleep.is_elapsed() && now > this.sleep.deadline() + AWAY;
        if !this.waiting || away {
            this.sleep.as_mut().reset(now + this.limit);
            this.waiting = true;
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.waiting = false;
            return Poll::Ready(Some(Err((this.stalled)())));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn stalled() -> String {
        "stalled".to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_fails_after_the_limit_and_a_lively_one_does_not() {
        let silent = futures::stream::pending::<Result<u32, String>>();
        let mut watched = ProgressDeadline::new(silent, Duration::from_secs(5), stalled);
        let started = Instant::now();
        assert_eq!(watched.next().await, Some(Err("stalled".into())));
        assert_eq!(started.elapsed(), Duration::from_secs(5));

        // An item every 4 s never trips a 5 s limit.
        let lively = futures::stream::iter(0..3u32).then(|i| async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            Ok::<_, String>(i)
        });
        let watched = ProgressDeadline::new(Box::pin(lively), Duration::from_secs(5), stalled);
        let items: Vec<_> = watched.collect().await;
        assert_eq!(items, vec![Ok(0), Ok(1), Ok(2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_reader_spends_away_does_not_count() {
        let silent = futures::stream::pending::<Result<u32, String>>();
        let mut watched = ProgressDeadline::new(silent, Duration::from_secs(5), stalled);
        // Polled once, then not for a minute (its task suspended).
        assert!(futures::poll!(watched.next()).is_pending());
        tokio::time::advance(Duration::from_secs(60)).await;
        let resumed = Instant::now();
        assert_eq!(watched.next().await, Some(Err("stalled".into())));
        // The wait started over when it was polled again.
        assert_eq!(resumed.elapsed(), Duration::from_secs(5));
    }
}
