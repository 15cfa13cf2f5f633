//! Deferred replies: a deadline-ordered queue of prepared FUSE answers and the one timer
//! thread that sends each when its emulated round trip is over.
//!
//! A session thread handles a request at once (backing syscall, reply prepared) and
//! hands the reply here instead of sleeping, so the emulated latency costs no thread and
//! almost no CPU: the timer thread sleeps on a timerfd set to the earliest deadline,
//! and each time it fires sends every reply that is due, in one batch.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// A prepared answer: calling it writes the reply to the kernel.
pub type SendReply = Box<dyn FnOnce() + Send>;

struct Pending {
    due: Instant,
    /// Arrival order, so replies with the same deadline go out first-come first-served.
    seq: u64,
    send: SendReply,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    /// Reversed, so that BinaryHeap (a max-heap) pops the earliest deadline first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

struct State {
    heap: BinaryHeap<Pending>,
    next_seq: u64,
    /// When the timerfd is set to fire; None when it is disarmed (nothing queued).
    armed: Option<Instant>,
}

struct Shared {
    state: Mutex<State>,
    /// The timer thread blocks reading this. Producers re-arm it themselves when they
    /// queue an earlier deadline, instead of waking the thread only for it to go back to
    /// sleep with a new timeout: that saves two context switches per request whenever
    /// few requests are in flight.
    timer: OwnedFd,
}

impl Shared {
    /// Sets the timer to fire at `due` (at once if that has passed). Called with the
    /// state locked, so arming and `armed` change together.
    fn arm(&self, st: &mut State, due: Instant) {
        st.armed = Some(due);
        // A zero it_value would disarm the timer; 1 ns means "fire now".
        let wait = due
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(wait.subsec_nanos() as i32),
            },
        };
        // SAFETY: valid timerfd and itimerspec. It can only fail for invalid values,
        // which this never passes.
        unsafe { libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A reply closure runs outside the lock, so a poisoned lock can only come from a
    // panic between two heap operations; the heap is still valid then.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Handle to the queue; cloning shares the same timer thread.
#[derive(Clone)]
pub struct ReplyQueue {
    shared: Arc<Shared>,
}

impl ReplyQueue {
    /// Starts the timer thread. It runs until the process exits; replies still queued
    /// then are never sent, which is harmless because the kernel has already aborted the
    /// connection they belong to.
    pub fn start() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                heap: BinaryHeap::new(),
                next_seq: 0,
                armed: None,
            }),
            // SAFETY: timerfd_create returned a fresh fd we own.
            timer: unsafe { OwnedFd::from_raw_fd(fd) },
        });
        let worker = shared.clone();
        thread::Builder::new()
            .name("replies".into())
            .spawn(move || timer_loop(&worker))?;
        Ok(Self { shared })
    }

    /// Sends `send` at `due`: at once (on the calling thread) if that is already past,
    /// otherwise from the timer thread.
    pub fn send_at(&self, due: Instant, send: SendReply) {
        if due <= Instant::now() {
            send();
            return;
        }
        let mut st = lock(&self.shared.state);
        let seq = st.next_seq;
        st.next_seq += 1;
        st.heap.push(Pending { due, seq, send });
        // With a constant latency deadlines arrive in order, so while requests are in
        // flight the timer is already set earlier and queueing costs no syscall.
        if st.armed.is_none_or(|armed| due < armed) {
            self.shared.arm(&mut st, due);
        }
    }
}

fn timer_loop(shared: &Shared) {
    let mut batch: Vec<SendReply> = Vec::new();
    loop {
        let mut expirations = [0u8; 8];
        // SAFETY: reading 8 bytes (the expiration count) into a local buffer. Errors
        // (EINTR; the control signals are blocked in this thread anyway) just retry.
        unsafe {
            libc::read(
                shared.timer.as_raw_fd(),
                expirations.as_mut_ptr().cast(),
                expirations.len(),
            )
        };
        {
            let mut st = lock(&shared.state);
            let now = Instant::now();
            while st.heap.peek().is_some_and(|p| p.due <= now) {
                batch.push(st.heap.pop().expect("peeked").send);
            }
            match st.heap.peek().map(|p| p.due) {
                Some(next) => shared.arm(&mut st, next),
                None => st.armed = None,
            }
        }
        // Writing to /dev/fuse happens outside the lock so session threads never wait
        // for it.
        for send in batch.drain(..) {
            send();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn sends_in_deadline_order_and_never_early() {
        let q = ReplyQueue::start().unwrap();
        let (tx, rx) = mpsc::channel();
        let start = Instant::now();
        // Queued out of order; the same deadline keeps arrival order.
        for (i, ms) in [(0, 30u64), (1, 10), (2, 20), (3, 10)] {
            let tx = tx.clone();
            let due = start + Duration::from_millis(ms);
            q.send_at(
                due,
                Box::new(move || tx.send((i, Instant::now() >= due)).unwrap()),
            );
        }
        let got: Vec<_> = (0..4)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        assert_eq!(got, vec![(1, true), (3, true), (2, true), (0, true)]);
        // A deadline already past is answered inline.
        let (tx2, rx2) = mpsc::channel();
        q.send_at(start, Box::new(move || tx2.send(()).unwrap()));
        assert!(rx2.try_recv().is_ok());
    }
}
