//! The open connections of a listener: a cap on how many, and a deadline
//! for each connection's first request, whatever its protocol (an HTTP/1.1
//! head, or for h2c the preface, SETTINGS and a first HEADERS frame).
//!
//! A connection that has sent no request when its deadline passes is shut
//! down gracefully (h2 gets a GOAWAY), as is one that is still in
//! hyper-util's protocol sniff (half a preface, or nothing at all). At the
//! cap, a new connection makes room by closing the oldest connection that
//! has not yet sent a request; if every open connection has, the new one is
//! closed at once. So a flood of connections that never speak cannot take
//! the file descriptors an agent needs for its app and its upstreams.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The connections of one listener (or of several sharing a port).
#[derive(Debug, Clone)]
pub struct Connections {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    cap: AtomicUsize,
    state: Mutex<State>,
    refused: AtomicU64,
    evicted: AtomicU64,
    timed_out: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    open: usize,
    /// Connections that have not sent a request yet, oldest first.
    waiting: BTreeMap<u64, CancellationToken>,
}

/// What a listener's connections have been through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnCounts {
    pub open: usize,
    pub cap: usize,
    /// Closed at once: at the cap with every connection having asked.
    pub refused: u64,
    /// Closed to make room for a newer one, before sending a request.
    pub evicted: u64,
    /// Closed for sending no request within the deadline.
    pub timed_out: u64,
}

impl Default for Connections {
    /// A cap of [`default_cap`].
    fn default() -> Self {
        Self::new(default_cap())
    }
}

impl Connections {
    /// At most `cap` connections open at once.
    pub fn new(cap: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                cap: AtomicUsize::new(cap.max(1)),
                state: Mutex::new(State::default()),
                refused: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
                timed_out: AtomicU64::new(0),
            }),
        }
    }

    /// Changes the cap (for connections admitted from now on).
    pub fn set_cap(&self, cap: usize) {
        self.shared.cap.store(cap.max(1), Ordering::Relaxed);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn counts(&self) -> ConnCounts {
        let open = self.state().open;
        ConnCounts {
            open,
            cap: self.shared.cap.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
            evicted: self.shared.evicted.load(Ordering::Relaxed),
            timed_out: self.shared.timed_out.load(Ordering::Relaxed),
        }
    }

    /// Takes a new connection in. At the cap the oldest connection that
    /// has sent no request is told to close; if there is none, `None`: the
    /// new connection is to be closed at once.
    pub fn admit(&self) -> Option<Conn> {
        let cap = self.shared.cap.load(Ordering::Relaxed);
        let mut state = self.state();
        if state.open >= cap {
            match state.waiting.pop_first() {
                Some((_, oldest)) => {
                    // It leaves `open` when its task ends; the room is
                    // taken now.
                    oldest.cancel();
                    state.open -= 1;
                    self.shared.evicted.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.shared.refused.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        let id = state.next;
        state.next += 1;
        state.open += 1;
        let evict = CancellationToken::new();
        state.waiting.insert(id, evict.clone());
        Some(Conn {
            owner: self.clone(),
            id,
            asked: AtomicBool::new(false),
            evict,
        })
    }
}

/// One admitted connection; dropping it gives its room back.
#[derive(Debug)]
pub struct Conn {
    owner: Connections,
    id: u64,
    asked: AtomicBool,
    evict: CancellationToken,
}

impl Conn {
    /// A request arrived on the connection: it is no longer one to evict,
    /// and its first-request deadline no longer applies.
    pub fn asked(&self) {
        if !self.asked.swap(true, Ordering::Relaxed) {
            self.owner.state().waiting.remove(&self.id);
        }
    }

    pub fn has_asked(&self) -> bool {
        self.asked.load(Ordering::Relaxed)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let mut state = self.owner.state();
        // An evicted connection gave its room back when it was evicted.
        if !self.evict.is_cancelled() {
            state.open -= 1;
        }
        state.waiting.remove(&self.id);
    }
}

/// Why a connection is to be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// It sent no request in time, or was evicted: it has nothing in
    /// flight, and gets [`IDLE_GRACE`] to go (an h2 client to read its
    /// GOAWAY) before it is dropped.
    Idle,
    /// The listener is draining: requests in flight finish.
    Drain,
}

/// How long a connection closed as idle may linger after its graceful
/// shutdown began (an h2 client that never answers the GOAWAY's ping would
/// otherwise hold it until the keep-alive timeout).
pub const IDLE_GRACE: Duration = Duration::from_secs(1);

/// Resolves when a connection is to be shut down gracefully, and why: when
/// `drain` fires, when it is evicted to make room, or when it has sent no
/// request `first_request` after it was accepted. Callers select on it
/// beside the connection (`biased`, the connection first), shut it down,
/// and wait for it ([`IDLE_GRACE`] at most for [`Closing::Idle`]).
pub fn close_signal(
    guard: Arc<Conn>,
    first_request: Duration,
    drain: CancellationToken,
) -> CloseSignal {
    CloseSignal {
        deadline: Some(Box::pin(tokio::time::sleep(first_request))),
        evicted: Some(Box::pin(guard.evict.clone().cancelled_owned())),
        drained: Box::pin(drain.cancelled_owned()),
        guard,
    }
}

/// See [`close_signal`]. Polled on every wake of its connection, so once
/// the connection has asked it waits on the drain alone.
#[derive(Debug)]
pub struct CloseSignal {
    guard: Arc<Conn>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    evicted: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    drained: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Future for CloseSignal {
    type Output = Closing;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Closing> {
        let this = &mut *self;
        if this.drained.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Closing::Drain);
        }
        if this.deadline.is_some() && this.guard.has_asked() {
            // It asked: neither evicted nor timed out any more.
            this.deadline = None;
            this.evicted = None;
        }
        if let Some(evicted) = &mut this.evicted
            && evicted.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Closing::Idle);
        }
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.deadline = None;
            this.evicted = None;
            if !this.guard.has_asked() {
                this.guard
                    .owner
                    .shared
                    .timed_out
                    .fetch_add(1, Ordering::Relaxed);
                return Poll::Ready(Closing::Idle);
            }
        }
        Poll::Pending
    }
}

/// The default cap of a listener: half the process's open-file limit (the
/// other half is left for upstream connections, the other listener and
/// files), or 4096 where the limit cannot be read.
/// Read once per process.
pub fn default_cap() -> usize {
    static CAP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| {
        std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|text| open_files_limit(&text))
            .map_or(4096, |limit| (limit / 2).max(16))
    })
}

/// The soft "Max open files" limit of a `/proc/self/limits` text.
fn open_files_limit(text: &str) -> Option<usize> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(1 << 20);
    }
    soft.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At the cap the oldest silent connection makes room; once every open
    /// connection has asked, a new one is refused; a dropped connection
    /// gives its room back.
    #[test]
    fn cap_evicts_the_oldest_silent_connection() {
        let c = Connections::new(2);
        let first = c.admit().unwrap();
        let second = c.admit().unwrap();
        let third = c.admit().unwrap();
        assert!(first.evict.is_cancelled());
        assert!(!second.evict.is_cancelled());
        assert_eq!((c.counts().open, c.counts().evicted), (2, 1));
        drop(first);
        assert_eq!(c.counts().open, 2);
        second.asked();
        third.asked();
        assert!(c.admit().is_none());
        assert_eq!(c.counts().refused, 1);
        drop(third);
        let fourth = c.admit().unwrap();
        assert!(!second.evict.is_cancelled());
        assert_eq!(c.counts().open, 2);
        drop((second, fourth));
        assert_eq!(c.counts().open, 0);
    }

    /// The soft limit is read from /proc/self/limits' format.
    #[test]
    fn reads_the_open_files_limit() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             63724                63724                processes \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(open_files_limit(text), Some(1024));
        assert_eq!(
            open_files_limit(
                "Max open files            unlimited            unlimited            files"
            ),
            Some(1 << 20)
        );
        assert_eq!(open_files_limit("nothing"), None);
        assert!(default_cap() >= 16);
    }
}
