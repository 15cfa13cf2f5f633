//! One file's data: copy_file_range(2) in a loop, falling back to sendfile(2) and then to
//! read/write, with the structural part of that decision remembered per (source device,
//! destination device) pair so that a million files probe once.

pub mod decide;

use crate::config::Reflink;
use crate::error::{EntryError, EntryResult};
use crate::report::Reporter;
use crate::sys;
use decide::{Decision, Event, decide};
use nix::errno::Errno;
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::{Condvar, Mutex};

/// Largest request per call: small enough that progress moves and a signal is noticed within
/// a fraction of a second, large enough that the syscall count is irrelevant.
const CHUNK: usize = 64 << 20;
/// The first call on an unknown device pair asks for little, because other workers on the
/// same pair wait for its verdict.
const PROBE_CHUNK: usize = 1 << 20;
/// The read/write fallback's per-worker buffer.
const BUFFER: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// FICLONE: the whole file as shared extents (--reflink=always).
    Clone,
    CopyFileRange,
    Sendfile,
    ReadWrite,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Clone => "clone",
            Method::CopyFileRange => "copy_file_range",
            Method::Sendfile => "sendfile",
            Method::ReadWrite => "read/write",
        }
    }
}

enum PairState {
    /// One worker's first call is out; the others wait for its verdict.
    Probing,
    Known(Method),
}

/// Which method works between two devices, learnt from the first file copied between them.
#[derive(Default)]
pub struct DeviceCache {
    pairs: Mutex<HashMap<(u64, u64), PairState>>,
    settled: Condvar,
}

enum Start<'a> {
    Known(Method),
    Probe(Probe<'a>),
}

/// The right to decide a pair's method. Dropped without a verdict (this file's call was
/// inconclusive, or it failed), the pair goes back to unknown and the next file probes.
struct Probe<'a> {
    cache: &'a DeviceCache,
    pair: (u64, u64),
    settled: bool,
}

impl DeviceCache {
    fn start(&self, pair: (u64, u64)) -> Start<'_> {
        let mut pairs = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match pairs.get(&pair) {
                Some(PairState::Known(method)) => return Start::Known(*method),
                Some(PairState::Probing) => {
                    pairs = self.settled.wait(pairs).unwrap_or_else(|e| e.into_inner())
                }
                None => {
                    pairs.insert(pair, PairState::Probing);
                    return Start::Probe(Probe {
                        cache: self,
                        pair,
                        settled: false,
                    });
                }
            }
        }
    }
}

impl Probe<'_> {
    fn settle(mut self, method: Method) {
        self.finish(Some(method));
    }

    fn finish(&mut self, verdict: Option<Method>) {
        if self.settled {
            return;
        }
        self.settled = true;
        let mut pairs = self.cache.pairs.lock().unwrap_or_else(|e| e.into_inner());
        match verdict {
            Some(method) => pairs.insert(self.pair, PairState::Known(method)),
            None => pairs.remove(&self.pair),
        };
        self.cache.settled.notify_all();
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.finish(None);
    }
}

/// One file's data copy: open descriptors at offset 0, and what messages should call them.
pub struct Job<'a> {
    pub src: BorrowedFd<'a>,
    pub dst: BorrowedFd<'a>,
    /// st_size of the source; 0 and 4096 are not trusted (procfs, sysfs).
    pub size: u64,
    pub src_dev: u64,
    pub dst_dev: u64,
    pub src_path: &'a Path,
    pub dst_path: &'a Path,
    pub reflink: Reflink,
}

impl Job<'_> {
    /// Whether `copied` bytes complete the file. Pseudo-filesystems report st_size 0 or one
    /// page whatever they hold, so for those sizes only a 0 return ends the copy.
    fn complete(&self, copied: u64) -> bool {
        copied >= self.size && self.size != 0 && self.size != 4096
    }

    fn copy_error(&self, errno: Errno) -> EntryError {
        EntryError::between("copy", self.src_path, self.dst_path, errno)
    }
}

thread_local! {
    static BUFFER_OF_WORKER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What one stage of the copy ended with.
enum Stage {
    Finished,
    /// Go on with this method; nothing of the file was copied yet.
    Next(Method),
}

/// Copies the whole file, returning the byte count and the method that did it.
pub fn copy(cache: &DeviceCache, job: &Job<'_>, rep: &Reporter) -> EntryResult<(u64, Method)> {
    let mut copied = 0;
    let mut method = if job.reflink == Reflink::Always {
        return clone(job, rep);
    } else if job.reflink == Reflink::Never {
        // copy_file_range clones wherever the filesystem can, and cannot be told not to.
        Method::Sendfile
    } else if job.size == 0 {
        // Empty or a pseudo-file: one read tells which, no probe needed.
        Method::ReadWrite
    } else {
        match cache.start((job.src_dev, job.dst_dev)) {
            Start::Known(method) => method,
            Start::Probe(probe) => match copy_file_range(job, rep, &mut copied, Some(probe))? {
                Stage::Finished => return Ok((copied, Method::CopyFileRange)),
                Stage::Next(next) => next,
            },
        }
    };
    loop {
        let stage = match method {
            Method::Clone => return clone(job, rep),
            Method::CopyFileRange => copy_file_range(job, rep, &mut copied, None)?,
            Method::Sendfile => sendfile(job, rep, &mut copied)?,
            Method::ReadWrite => {
                read_write(job, rep, &mut copied)?;
                Stage::Finished
            }
        };
        match stage {
            Stage::Finished => return Ok((copied, method)),
            Stage::Next(next) => method = next,
        }
    }
}

/// Clones the whole file or fails it: --reflink=always promises shared extents.
fn clone(job: &Job<'_>, rep: &Reporter) -> EntryResult<(u64, Method)> {
    interrupted(job)?;
    sys::ficlone(job.dst, job.src)
        .map_err(|e| EntryError::between("clone", job.src_path, job.dst_path, e))?;
    rep.copied_bytes(job.size);
    Ok((job.size, Method::Clone))
}

fn interrupted(job: &Job<'_>) -> EntryResult<()> {
    match crate::signal::received() {
        Some(_) => Err(EntryError::interrupted(job.dst_path)),
        None => Ok(()),
    }
}

fn copy_file_range(
    job: &Job<'_>,
    rep: &Reporter,
    copied: &mut u64,
    mut probe: Option<Probe<'_>>,
) -> EntryResult<Stage> {
    let pair = || {
        format!(
            "({} -> {})",
            sys::dev_name(job.src_dev),
            sys::dev_name(job.dst_dev)
        )
    };
    loop {
        interrupted(job)?;
        let want = if probe.is_some() { PROBE_CHUNK } else { CHUNK };
        let event = match sys::copy_file_range(job.src, job.dst, want) {
            Ok(0) => Event::Zero,
            Ok(n) => {
                *copied += n as u64;
                rep.copied_bytes(n as u64);
                if let Some(probe) = probe.take() {
                    probe.settle(Method::CopyFileRange);
                    rep.verbose(|| format!("decision for device pair {}: copy_file_range", pair()));
                }
                if job.complete(*copied) {
                    return Ok(Stage::Finished);
                }
                continue;
            }
            Err(errno) => Event::Error(errno),
        };
        match decide(event, *copied) {
            Decision::Retry => continue,
            Decision::Done => return Ok(Stage::Finished),
            Decision::Fail => return Err(job.copy_error(errno_of(event))),
            Decision::FallBackForPair if probe.is_some() => {
                if let Some(probe) = probe.take() {
                    probe.settle(Method::Sendfile);
                }
                rep.verbose(|| {
                    format!(
                        "decision for device pair {}: sendfile (copy_file_range: {})",
                        pair(),
                        describe(event)
                    )
                });
                return Ok(Stage::Next(Method::Sendfile));
            }
            Decision::FallBackForPair | Decision::FallBackForFile => {
                // Inconclusive for the pair: the probe (if we held it) is released by drop.
                rep.verbose(|| {
                    format!(
                        "fallback for {}: copy_file_range {}, using sendfile for this file",
                        job.src_path.display(),
                        describe(event)
                    )
                });
                return Ok(Stage::Next(Method::Sendfile));
            }
        }
    }
}

fn sendfile(job: &Job<'_>, rep: &Reporter, copied: &mut u64) -> EntryResult<Stage> {
    loop {
        interrupted(job)?;
        let event = match sys::sendfile(job.dst, job.src, CHUNK) {
            Ok(0) => Event::Zero,
            Ok(n) => {
                *copied += n as u64;
                rep.copied_bytes(n as u64);
                if job.complete(*copied) {
                    return Ok(Stage::Finished);
                }
                continue;
            }
            Err(errno) => Event::Error(errno),
        };
        match decide(event, *copied) {
            Decision::Retry => continue,
            Decision::Done => return Ok(Stage::Finished),
            Decision::Fail => return Err(job.copy_error(errno_of(event))),
            Decision::FallBackForPair | Decision::FallBackForFile => {
                rep.verbose(|| {
                    format!(
                        "fallback for {}: sendfile {}, using read/write",
                        job.src_path.display(),
                        describe(event)
                    )
                });
                return Ok(Stage::Next(Method::ReadWrite));
            }
        }
    }
}

/// The last resort, and the only method that works everywhere: reads until a read returns 0.
fn read_write(job: &Job<'_>, rep: &Reporter, copied: &mut u64) -> EntryResult<()> {
    BUFFER_OF_WORKER.with_borrow_mut(|buf| {
        if buf.len() < BUFFER {
            buf.resize(BUFFER, 0);
        }
        loop {
            interrupted(job)?;
            let n = match sys::read(job.src, buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(Errno::EINTR | Errno::EAGAIN) => continue,
                Err(errno) => return Err(EntryError::new("read", job.src_path, errno)),
            };
            let mut written = 0;
            while written < n {
                match sys::write(job.dst, &buf[written..n]) {
                    Ok(0) => {
                        return Err(EntryError::new("write", job.dst_path, Errno::EIO));
                    }
                    Ok(w) => written += w,
                    Err(Errno::EINTR | Errno::EAGAIN) => continue,
                    Err(errno) => return Err(EntryError::new("write", job.dst_path, errno)),
                }
            }
            *copied += n as u64;
            rep.copied_bytes(n as u64);
        }
    })
}

fn errno_of(event: Event) -> Errno {
    match event {
        Event::Error(errno) => errno,
        // A 0 return is never a failure by the table; this keeps the message honest anyway.
        Event::Zero => Errno::EIO,
    }
}

fn describe(event: Event) -> String {
    match event {
        Event::Error(errno) => format!("failed: {}", std::io::Error::from(errno)),
        Event::Zero => "returned 0 at offset 0".to_string(),
    }
}
