//! Round trips a file's copy need not wait for, made on helper threads when the source is on a
//! network or FUSE filesystem: listing the source's xattrs while the copy is created and
//! written, and closing the source once its data is copied.
//!
//! On such a filesystem each of these is a request to the server (LISTXATTR; FLUSH on close),
//! and a worker that makes them in line waits one round trip for each, per file: two of the
//! twelve requests a small file makes. Made aside, they overlap the worker's own requests.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

/// A source's xattr names, as meta::Preserver wants them.
pub type Names = io::Result<Vec<OsString>>;

/// One helper per this many copy workers: each file's aside requests are two of its twelve or
/// so round trips. Bounded below so that a small pool still overlaps them, and above because on
/// a small machine every helper's wake-ups cost CPU the server may share.
const WORKERS_PER_HELPER: usize = 4;
const MIN_HELPERS: usize = 2;
const MAX_HELPERS: usize = 32;
/// Source descriptors waiting to be closed, at most, per helper that runs; past that a worker
/// closes its own, so that open descriptors cannot pile up behind a slow server. Only the
/// waiting ones count: a close a helper has taken is in flight and holds no queue entry.
const CLOSES_PER_HELPER: usize = 8;

/// The helpers, started at the first job (a copy from a local source starts none), drained and
/// joined when dropped, so that every source is closed when the run returns.
#[derive(Default)]
pub struct Aside {
    started: OnceLock<Started>,
}

struct Started {
    queue: Arc<Queue>,
    /// The helpers that were started; with none, every request is made in line, and at most
    /// CLOSES_PER_HELPER closes per helper wait.
    helpers: Vec<JoinHandle<()>>,
}

struct Queue {
    jobs: Mutex<Jobs>,
    ready: Condvar,
}

#[derive(Default)]
struct Jobs {
    waiting: VecDeque<Job>,
    closes: usize,
    stopping: bool,
}

enum Job {
    List(Arc<Slot>),
    Close(OwnedFd),
}

/// A listing handed to a helper. If no helper has started it by the time the names are
/// needed, the worker takes it back and lists in line: asking aside never costs more than the
/// hand-over.
pub struct Pending {
    slot: Arc<Slot>,
}

struct Slot {
    state: Mutex<State>,
    done: Condvar,
}

enum State {
    Queued(Arc<OwnedFd>),
    Running,
    Done(Names),
    Taken,
}

impl Started {
    /// Starts up to `count` helpers. A helper that cannot be started leaves its share to the
    /// others, and the queue is sized by those that run: with none, requests are made in line.
    fn new(count: usize) -> Started {
        Started::with_spawn(count, |name, run| {
            std::thread::Builder::new().name(name).spawn(run)
        })
    }

    /// As new(), starting each helper with `spawn` (a test passes one that fails).
    fn with_spawn(
        count: usize,
        mut spawn: impl FnMut(String, Box<dyn FnOnce() + Send>) -> io::Result<JoinHandle<()>>,
    ) -> Started {
        let queue = Arc::new(Queue {
            jobs: Mutex::new(Jobs::default()),
            ready: Condvar::new(),
        });
        let helpers = (0..count)
            .filter_map(|i| {
                let queue = Arc::clone(&queue);
                spawn(format!("aside-{i}"), Box::new(move || queue.serve())).ok()
            })
            .collect();
        Started { queue, helpers }
    }
}

impl Aside {
    /// Started from a copy worker, sized by its pool.
    fn started(&self) -> &Started {
        self.started.get_or_init(|| {
            Started::new(
                (rayon::current_num_threads() / WORKERS_PER_HELPER).clamp(MIN_HELPERS, MAX_HELPERS),
            )
        })
    }

    /// Starts listing the xattr names of `src` on a helper.
    pub fn list_xattrs(&self, src: &Arc<OwnedFd>) -> Pending {
        let slot = Arc::new(Slot {
            state: Mutex::new(State::Queued(Arc::clone(src))),
            done: Condvar::new(),
        });
        let started = self.started();
        // With no helper, the slot stays queued and wait() lists in line.
        if !started.helpers.is_empty() {
            let queue = &started.queue;
            lock(&queue.jobs)
                .waiting
                .push_back(Job::List(Arc::clone(&slot)));
            queue.ready.notify_one();
        }
        Pending { slot }
    }

    /// Closes `src` on a helper, or here if too many closes already wait to be closed (or no
    /// helper runs). A source's close reports nothing we act on.
    pub fn close(&self, src: Arc<OwnedFd>) {
        let Ok(fd) = Arc::try_unwrap(src) else {
            // A listing still runs through it; the helper's reference closes it.
            return;
        };
        let started = self.started();
        let queue = &started.queue;
        let mut jobs = lock(&queue.jobs);
        if jobs.closes >= started.helpers.len() * CLOSES_PER_HELPER {
            drop(jobs);
            drop(fd);
            return;
        }
        jobs.closes += 1;
        jobs.waiting.push_back(Job::Close(fd));
        drop(jobs);
        queue.ready.notify_one();
    }
}

impl Drop for Aside {
    fn drop(&mut self) {
        let Some(started) = self.started.take() else {
            return;
        };
        lock(&started.queue.jobs).stopping = true;
        started.queue.ready.notify_all();
        // Each helper runs until the queue is empty, so every waiting close is made.
        for helper in started.helpers {
            let _ = helper.join();
        }
    }
}

impl Queue {
    /// A helper: runs jobs until the queue is stopped and empty.
    fn serve(&self) {
        loop {
            let job = {
                let mut jobs = lock(&self.jobs);
                loop {
                    if let Some(job) = jobs.waiting.pop_front() {
                        if matches!(job, Job::Close(_)) {
                            jobs.closes -= 1;
                        }
                        break job;
                    }
                    if jobs.stopping {
                        return;
                    }
                    jobs = self.ready.wait(jobs).unwrap_or_else(|e| e.into_inner());
                }
            };
            match job {
                Job::Close(fd) => drop(fd),
                Job::List(slot) => slot.run(),
            }
        }
    }
}

impl Slot {
    fn run(&self) {
        let src = {
            let mut state = lock(&self.state);
            match std::mem::replace(&mut *state, State::Running) {
                State::Queued(src) => src,
                // The worker took it back.
                other => {
                    *state = other;
                    return;
                }
            }
        };
        let names = crate::meta::list_xattrs_fd(src.as_fd());
        // Dropped before the worker hears of it, so that the worker's reference is the last
        // one and the close happens where the worker sends it.
        drop(src);
        *lock(&self.state) = State::Done(names);
        self.done.notify_one();
    }
}

impl Pending {
    /// The names: as a helper listed them, or listed here if no helper has started.
    pub fn wait(self) -> Names {
        let mut state = lock(&self.slot.state);
        loop {
            match std::mem::replace(&mut *state, State::Taken) {
                State::Queued(src) => {
                    drop(state);
                    return crate::meta::list_xattrs_fd(src.as_fd());
                }
                State::Done(names) => return names,
                State::Running => {
                    *state = State::Running;
                    state = self
                        .slot
                        .done
                        .wait(state)
                        .unwrap_or_else(|e| e.into_inner());
                }
                State::Taken => unreachable!("a listing is waited for once"),
            }
        }
    }
}

impl Drop for Pending {
    /// A listing given up (the copy failed before its metadata) lets go of the source, so
    /// that the worker's reference is the last one and its close is not skipped, and a
    /// helper that reaches the slot later makes no request.
    fn drop(&mut self) {
        let mut state = lock(&self.slot.state);
        if matches!(*state, State::Queued(_)) {
            *state = State::Taken;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn open(path: &Path) -> Arc<OwnedFd> {
        Arc::new(std::fs::File::open(path).unwrap().into())
    }

    /// Descriptors of this process open on files under `dir` (other tests open others).
    fn open_under(dir: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.starts_with(dir))
            .count()
    }

    #[test]
    fn a_listing_made_aside_returns_the_names_and_every_source_is_closed_by_the_drop() {
        let dir = tempfile::tempdir().unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(8)
            .build()
            .unwrap();
        pool.install(|| {
            let aside = Aside::default();
            let mut tagged = 0;
            for i in 0..50 {
                let path = dir.path().join(format!("f{i}"));
                std::fs::write(&path, b"x").unwrap();
                let name = format!("user.n{i}");
                // A filesystem that refuses user xattrs lists none: then only the closes
                // are checked.
                let has = xattr::set(&path, &name, b"v").is_ok();
                let src = open(&path);
                let names = aside.list_xattrs(&src).wait().unwrap();
                assert_eq!(names.iter().any(|n| *n == *name), has, "{names:?}");
                tagged += usize::from(has);
                aside.close(src);
            }
            eprintln!("{tagged} of 50 sources had an xattr to list");
            drop(aside);
        });
        assert_eq!(open_under(dir.path()), 0, "sources left open");
    }

    #[test]
    fn a_worker_that_gives_up_still_has_its_source_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let aside = Aside::default();
        let src = open(&path);
        // The copy failed: its worker drops the listing and the source without waiting.
        drop(aside.list_xattrs(&src));
        drop(src);
        drop(aside);
        assert_eq!(open_under(dir.path()), 0, "the source stayed open");
    }

    #[test]
    fn a_listing_given_up_lets_go_of_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let src = open(&path);
        // A slot no helper has reached, as when every helper is busy.
        let pending = Pending {
            slot: Arc::new(Slot {
                state: Mutex::new(State::Queued(Arc::clone(&src))),
                done: Condvar::new(),
            }),
        };
        let queued = Arc::clone(&pending.slot);
        drop(pending);
        assert_eq!(
            Arc::strong_count(&src),
            1,
            "the slot still holds the source"
        );
        assert!(matches!(*lock(&queued.state), State::Taken));
        // So the worker's close is the last reference and closes it.
        drop(src);
        assert_eq!(open_under(dir.path()), 0, "the source stayed open");
    }

    #[test]
    fn with_no_helper_started_every_request_is_made_in_line() {
        let dir = tempfile::tempdir().unwrap();
        // Four asked for, none started: the queue must be sized by those that run.
        let started = Started::with_spawn(4, |_, _| Err(io::Error::other("no threads")));
        let aside = Aside {
            started: OnceLock::from(started),
        };
        for i in 0..20 {
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, b"x").unwrap();
            let has = xattr::set(&path, "user.t", b"v").is_ok();
            let src = open(&path);
            let names = aside.list_xattrs(&src).wait().unwrap();
            assert_eq!(names.iter().any(|n| n == "user.t"), has, "{names:?}");
            aside.close(src);
            // Closed now, not left for a helper that does not exist.
            assert_eq!(open_under(dir.path()), 0, "source {i} left open");
        }
        assert!(
            lock(&aside.started().queue.jobs).waiting.is_empty(),
            "jobs queued for no helper"
        );
    }
}
