//! Write-behind for files of 1 MiB or more on local disks: the ranges a copy has written are
//! handed to a background thread, which writes them out and then drops them from the page
//! cache.
//!
//! Why: a copy of many GiB otherwise leaves every written page dirty in memory, each a page
//! the kernel had to hand out fresh. On this project's VM a page costs about 11 us the first
//! time it is touched (bench/first-touch.py), and once dirty data passes the kernel's
//! threshold the writers are throttled anyway. Pages written out and dropped while the copy
//! goes on are reused by its next writes instead. The copy itself never waits for the disk:
//! a range the thread has no room for is left to the kernel's own writeback, as it would be
//! without this.
//!
//! The thread works on its own open file description of each file, so what it learns from
//! writeback (an I/O error) is not taken from the copy's descriptor: a later fsync of that
//! descriptor still reports it.

use crate::sys;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

/// Files at least this large are written behind: below it the reopen and the two calls per
/// file would cost more than the pages are worth (W1's files are 1-16 KiB).
pub const WRITE_BEHIND_FROM: u64 = 1 << 20;
/// A range handed over while a file is copied: large enough that a message per range is
/// nothing, small enough that the thread follows the copy closely.
const STEP: u64 = 16 << 20;
/// What the thread waits for in one call (about 5 ms of this VM's disk).
const WAIT_PIECE: u64 = 2 << 20;
/// What the thread keeps submitted to the disk at most (about 40 ms of it).
const AHEAD: u64 = 16 << 20;
/// Ranges waiting for the thread, at most (each holds its file open). With the queue full the
/// thread is behind the disk, and a new file is not written behind at all.
const QUEUE: usize = 128;

enum Message {
    Range {
        file: Arc<OwnedFd>,
        offset: u64,
        len: u64,
    },
    /// Answered once everything sent before it is done.
    Flush(mpsc::Sender<()>),
}

/// The background thread, started by the first large file.
#[derive(Default)]
pub struct WriteBehind {
    sender: OnceLock<Option<SyncSender<Message>>>,
    /// Ranges sent and not yet done, shared with the thread.
    pending: Arc<AtomicUsize>,
}

impl WriteBehind {
    fn sender(&self) -> Option<&SyncSender<Message>> {
        self.sender
            .get_or_init(|| {
                let (tx, rx) = mpsc::sync_channel(QUEUE);
                let pending = Arc::clone(&self.pending);
                std::thread::Builder::new()
                    .name("write-behind".into())
                    .spawn(move || serve(rx, &pending))
                    .ok()
                    .map(|_| tx)
            })
            .as_ref()
    }

    /// Write-behind for the file open as `dst`, which the caller writes from offset 0 on; None
    /// where no thread or no second descriptor can be had (the copy goes on without).
    pub fn file(&self, dst: BorrowedFd<'_>) -> Option<Behind<'_>> {
        let sender = self.sender()?;
        if self.pending.load(Ordering::Relaxed) >= QUEUE {
            return None;
        }
        let file = Arc::new(sys::reopen(dst, false, false)?);
        Some(Behind {
            sender,
            pending: &self.pending,
            file,
            sent_to: 0,
        })
    }

    /// Waits until every range handed over so far is written out and dropped.
    pub fn flush(&self) {
        let Some(sender) = self.sender() else {
            return;
        };
        let (tx, rx) = mpsc::channel();
        if sender.send(Message::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

fn serve(rx: Receiver<Message>, pending: &AtomicUsize) {
    for message in rx {
        match message {
            Message::Range { file, offset, len } => {
                write_out(file.as_fd(), offset, len);
                pending.fetch_sub(1, Ordering::Relaxed);
            }
            Message::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Writes the range out and drops it a piece at a time, with at most AHEAD bytes submitted
/// past the piece waited for. The copy's own reads of metadata (a create reads its inode
/// bitmap and table block) queue behind what this thread has submitted: with a whole 64 MiB
/// range submitted at once, one create waited 0.67 s, and every other creator waited for its
/// lock; with one 2 MiB piece at a time the disk idles between pieces and less is recycled.
/// And a wait cannot be interrupted: when treecopy exits, the exit waits for the piece.
fn write_out(file: BorrowedFd<'_>, offset: u64, len: u64) {
    let end = offset + len;
    let mut at = offset;
    while at < end {
        // Pages already under writeback are not dirty: this submits only the window's new end.
        if sys::write_out(file, at, AHEAD.min(end - at), false).is_err() {
            return;
        }
        let piece = WAIT_PIECE.min(end - at);
        // Pages still dirty are not dropped, so the drop waits for the write: a failed
        // write leaves its pages (and its error) to the copy's descriptor.
        if sys::write_out(file, at, piece, true).is_err() {
            return;
        }
        sys::drop_cache_range(file, at, piece);
        at += piece;
    }
}

/// One file's write-behind: told how far the copy has written, it hands over each STEP, and
/// the rest when the copy is done.
pub struct Behind<'w> {
    sender: &'w SyncSender<Message>,
    pending: &'w AtomicUsize,
    file: Arc<OwnedFd>,
    sent_to: u64,
}

impl Behind<'_> {
    /// The file's first `end` bytes are written.
    pub fn written(&mut self, end: u64) {
        if end >= self.sent_to.saturating_add(STEP) {
            self.hand_over(end);
        }
    }

    /// The copy wrote `end` bytes in all.
    pub fn finish(mut self, end: u64) {
        if end > self.sent_to {
            self.hand_over(end);
        }
    }

    fn hand_over(&mut self, end: u64) {
        let message = Message::Range {
            file: Arc::clone(&self.file),
            offset: self.sent_to,
            len: end - self.sent_to,
        };
        // Counted before the send, so the thread never counts it down first.
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.sent_to = match self.sender.try_send(message) {
            Ok(()) => end,
            Err(refused) => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                match refused {
                    // The thread is behind the disk: these pages are left to the kernel.
                    TrySendError::Full(_) => end,
                    TrySendError::Disconnected(_) => u64::MAX,
                }
            }
        };
    }
}
