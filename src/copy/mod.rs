//! One file's data: copy_file_range(2) in a loop, falling back to sendfile(2) and then to
//! read/write, with the structural part of that decision remembered per (source device,
//! destination device) pair so that a million files probe once.

pub mod decide;

use crate::config::Reflink;
use crate::error::{EntryError, EntryResult};
use crate::report::Reporter;
use crate::sys;
use crate::writeback::{Behind, WRITE_BEHIND_FROM, WriteBehind};
use decide::{Decision, Event, decide};
use nix::errno::Errno;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

/// Largest request per call: small enough that progress moves and a signal is noticed within
/// a fraction of a second, large enough that the syscall count is irrelevant.
const CHUNK: usize = 64 << 20;
/// A request to a network server that copies within itself (NFSv4.2 COPY).
const SERVER_COPY_CHUNK: usize = 1 << 30;
/// The first call on an unknown device pair asks for little, because other workers on the
/// same pair wait for its verdict.
const PROBE_CHUNK: usize = 1 << 20;
/// The read/write fallback's per-worker buffer.
const BUFFER: usize = 1 << 20;
/// Files at least this large are copied as chunks by several workers at once (when the
/// engine allows it): one stream rarely fills an NFS link or both CPUs of a local copy.
pub const PARALLEL_FROM: u64 = 64 << 20;
/// The chunk of a parallel copy: large enough that a chunk is many round trips of data,
/// small enough that an 8 GiB file keeps every worker busy to the end.
const PARALLEL_CHUNK: u64 = 16 << 20;
/// A copy_file_range within one network server slower than this is the kernel copying through
/// the client (the server refused): a server-side copy moves data at the server's disk or
/// memory speed, without crossing the network.
const SLOW_SERVER_COPY_BYTES_PER_SEC: u64 = 128 << 20;

/// Whether copying `bytes` within one server in `took` was too slow to be a server-side copy.
fn slow_server_copy(bytes: u64, took: std::time::Duration) -> bool {
    took.as_secs_f64() * SLOW_SERVER_COPY_BYTES_PER_SEC as f64 > bytes as f64
}

/// Whether a file of `size` from device `src_dev` to a network or FUSE directory on
/// `dst_dev` will move as read/write chunks, which write with direct I/O: then its temp file
/// should be opened for direct I/O too, since FUSE serializes a file's direct writes while any
/// descriptor of it uses the page cache (an NFS client does not).
pub fn chunks_with_direct_writes(parallel: bool, size: u64, src_dev: u64, dst_dev: u64) -> bool {
    parallel && src_dev != dst_dev && size >= PARALLEL_FROM
}

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
#[derive(Clone, Copy)]
pub struct Job<'a> {
    pub src: BorrowedFd<'a>,
    pub dst: BorrowedFd<'a>,
    /// st_size of the source; 0 and 4096 are not trusted (procfs, sysfs).
    pub size: u64,
    /// st_blocks of the source (512-byte units): fewer than the size needs means holes.
    pub blocks: u64,
    pub src_dev: u64,
    pub dst_dev: u64,
    pub src_path: &'a Path,
    pub dst_path: &'a Path,
    pub reflink: Reflink,
    /// Chunks of a large file may be copied by other workers (the caller holds nothing they
    /// could wait for, such as a hard-link group's duty).
    pub parallel: bool,
    /// The source and the destination are on network or FUSE filesystems.
    pub src_remote: bool,
    pub dst_remote: bool,
    /// How many workers may copy chunks of this file at once (1: one stream).
    pub chunk_workers: usize,
    /// Where a large file's written ranges go to be written out and dropped from the cache
    /// as the copy goes on (local destinations).
    pub write_behind: Option<&'a WriteBehind>,
}

impl Job<'_> {
    /// Between two devices of which one is a network or FUSE filesystem: no server-side copy
    /// is possible, and the kernel's own fallback for copy_file_range and sendfile moves
    /// 64 KiB per round trip; read/write with a large buffer moves a megabyte.
    fn remote_between(&self) -> bool {
        self.src_dev != self.dst_dev && (self.src_remote || self.dst_remote)
    }

    /// Whether st_size can be believed. Pseudo-filesystems report 0 or one page whatever a
    /// file holds, so for those sizes only a 0 return ends the copy. A one-page file without
    /// blocks on a real filesystem is a hole, and is believed (asking the filesystem costs a
    /// call, so only such files ask).
    fn size_trusted(&self) -> bool {
        match self.size {
            0 => false,
            4096 => self.blocks != 0 || !sys::is_pseudo_fs(self.src),
            _ => true,
        }
    }

    /// A file with holes: fewer blocks allocated than its size needs.
    fn sparse(&self, size_trusted: bool) -> bool {
        size_trusted && self.blocks.saturating_mul(512) < self.size
    }

    fn copy_error(&self, errno: Errno) -> EntryError {
        EntryError::between("copy", self.src_path, self.dst_path, errno)
    }
}

/// Read/write buffers, shared by every worker: a copy takes one for a span and puts it back, so
/// the memory held is that of the most read/write copies running at once (with 64 workers on a
/// network mount, mostly small files), not a megabyte for every thread that ever copied.
static BUFFERS: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

/// Direct I/O wants its buffer aligned to the device's block (4096 covers every device).
const BUFFER_ALIGN: usize = 4096;

/// Runs `f` with a read/write buffer of BUFFER bytes, aligned for direct I/O. A new buffer is
/// zero-allocated, so its pages cost memory only once a copy touches them: a 10 KiB file
/// touches three.
fn with_buffer<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    let taken = BUFFERS.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut buf = taken.unwrap_or_else(|| vec![0u8; BUFFER + BUFFER_ALIGN].into_boxed_slice());
    let skip = buf.as_ptr().align_offset(BUFFER_ALIGN);
    let result = f(&mut buf[skip..skip + BUFFER]);
    BUFFERS.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
    result
}

/// Chunk runners of all large files together: 16 streams of 1 MiB requests fill a link the
/// way more do not, and each holds a buffer.
const MAX_STREAMS: usize = 16;
static STREAMS_IN_USE: AtomicUsize = AtomicUsize::new(0);

/// A share of MAX_STREAMS for one file: as many as are free, up to `want`, and always one (a
/// file is at least one stream, as it is when not chunked).
struct Streams(usize);

impl Streams {
    fn reserve(want: usize) -> Self {
        let mut taken = 0;
        let _ = STREAMS_IN_USE.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            taken = want.min(MAX_STREAMS.saturating_sub(used)).max(1);
            Some(used + taken)
        });
        Streams(taken)
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        STREAMS_IN_USE.fetch_sub(self.0, Ordering::AcqRel);
    }
}

/// What one method's loop ended with.
enum Stage {
    Finished,
    /// Go on with this method; nothing of the file was copied yet.
    Next(Method),
}

/// A stretch of the file to copy from the current offsets of both descriptors.
struct Span {
    /// Bytes to copy; None: until a call returns 0 (pseudo-files).
    want: Option<u64>,
    done: u64,
}

impl Span {
    fn complete(&self) -> bool {
        self.want.is_some_and(|want| self.done >= want)
    }

    /// The next request's length: a chunk, or what is left of the span.
    fn request(&self, chunk: usize) -> usize {
        match self.want {
            Some(want) => (want - self.done).min(chunk as u64) as usize,
            None => chunk,
        }
    }
}

/// One file's copy in progress: the method in use, the right to decide the device pair's
/// method if we hold it, and the bytes of the file copied so far (which decide whether a
/// fallback is still allowed).
struct Copy<'c, 'j> {
    job: &'j Job<'j>,
    rep: &'j Reporter,
    method: Method,
    probe: Option<Probe<'c>>,
    copied: u64,
    /// The source has holes its filesystem does not report (no SEEK_DATA, as on FUSE or
    /// NFSv3): read/write, seeking over all-zero blocks instead of writing them.
    skip_zeros: bool,
    /// A network server copies this file itself: one request asks it for up to
    /// SERVER_COPY_CHUNK, since each request is a round trip and the server's work is the same.
    server_copy: bool,
    /// Write-behind of a file copied in one stream from offset 0, so `copied` is how far the
    /// destination is written.
    behind: Option<Behind<'j>>,
}

/// Copies the whole file, returning the byte count and the method that did it.
pub fn copy(cache: &DeviceCache, job: &Job<'_>, rep: &Reporter) -> EntryResult<(u64, Method)> {
    let (method, probe) = match job.reflink {
        Reflink::Always => return clone(job, rep),
        // copy_file_range clones wherever the filesystem can, and cannot be told not to.
        Reflink::Never => (Method::Sendfile, None),
        // Empty or a pseudo-file: one read tells which, no probe needed.
        Reflink::Auto if job.size == 0 => (Method::ReadWrite, None),
        Reflink::Auto if job.remote_between() => (Method::ReadWrite, None),
        Reflink::Auto => match cache.start((job.src_dev, job.dst_dev)) {
            Start::Known(method) => (method, None),
            Start::Probe(probe) => (Method::CopyFileRange, Some(probe)),
        },
    };
    let mut run = Copy {
        job,
        rep,
        method,
        probe,
        copied: 0,
        skip_zeros: false,
        server_copy: false,
        behind: None,
    };
    let trusted = job.size_trusted();
    if job.sparse(trusted) {
        // The final size first: data written past the end of file makes XFS preallocate
        // beyond it, and extending the size later would keep those blocks inside the file.
        sys::set_len(job.dst, job.size)
            .map_err(|e| EntryError::new("truncate", job.dst_path, e))?;
        match job
            .parallel
            .then(|| run.data_pieces())
            .transpose()?
            .flatten()
        {
            Some(pieces) => run.copy_in_chunks(&pieces)?,
            None => run.copy_data_extents()?,
        }
        sys::set_len(job.dst, job.size)
            .map_err(|e| EntryError::new("truncate", job.dst_path, e))?;
    } else if trusted && job.parallel && job.size >= PARALLEL_FROM {
        run.copy_in_chunks(&split(0, job.size))?;
    } else {
        let want = trusted.then_some(job.size);
        if want.is_some_and(|size| size >= WRITE_BEHIND_FROM) {
            run.behind = job.write_behind.and_then(|wb| wb.file(job.dst));
        }
        run.copy_span(Span { want, done: 0 })?;
        if let Some(behind) = run.behind.take() {
            behind.finish(run.copied);
        }
    }
    Ok((run.copied, run.method))
}

impl Copy<'_, '_> {
    /// Copies only the data extents of a sparse source, at their offsets, then sets the size:
    /// holes stay holes whichever method moves the data.
    fn copy_data_extents(&mut self) -> EntryResult<()> {
        let job = self.job;
        for extent in data_extents(job) {
            let (start, end) = extent?;
            if (start, end) == (0, job.size) {
                self.find_holes_by_zeros();
            }
            sys::seek_to(job.src, start)
                .map_err(|e| EntryError::of_source("seek", job.src_path, e))?;
            sys::seek_to(job.dst, start).map_err(|e| EntryError::new("seek", job.dst_path, e))?;
            self.copy_span(Span {
                want: Some(end - start),
                done: 0,
            })?;
        }
        Ok(())
    }

    /// The allocation says holes, the extent map says all data: the filesystem does not
    /// report holes (FUSE, NFSv3). They are found by their zeros, through read/write.
    fn find_holes_by_zeros(&mut self) {
        self.skip_zeros = true;
        self.probe.take();
        self.method = Method::ReadWrite;
    }

    /// The data of a large sparse source, in pieces for `copy_in_chunks`; None when it is too
    /// small to be worth chunks, or its extents too many to hold (then one stream copies it).
    /// Where the filesystem reports no holes, the whole file, its zero blocks to be left as
    /// holes.
    fn data_pieces(&mut self) -> EntryResult<Option<Vec<(u64, u64)>>> {
        const MAX_EXTENTS: usize = 1 << 16;
        let job = self.job;
        let (mut extents, mut data) = (Vec::new(), 0);
        for extent in data_extents(job) {
            if extents.len() == MAX_EXTENTS {
                return Ok(None);
            }
            let (start, end) = extent?;
            extents.push((start, end));
            data += end - start;
        }
        if data < PARALLEL_FROM {
            return Ok(None);
        }
        if extents == [(0, job.size)] {
            self.find_holes_by_zeros();
        }
        Ok(Some(
            extents
                .into_iter()
                .flat_map(|(start, end)| split(start, end))
                .collect(),
        ))
    }

    /// Copies a large file's `pieces` (offset, length; in order, of at most PARALLEL_CHUNK
    /// each: all of it, or a sparse file's data) on several workers. The first piece is
    /// copied here, by the usual loop: it settles the device pair's method (other workers may
    /// be waiting for that verdict, so it must not wait for them). The rest are positioned
    /// copies at their offsets, spawned on the pool; this worker helps with them (and with
    /// other work) until all are done. Nothing this worker holds is waited for by a task it
    /// may pick up.
    fn copy_in_chunks(&mut self, pieces: &[(u64, u64)]) -> EntryResult<()> {
        let job = self.job;
        let Some((&(at, first), rest)) = pieces.split_first() else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        // Finding a sparse file's data moved the source's offset (SEEK_DATA).
        sys::seek_to(job.src, at).map_err(|e| EntryError::of_source("seek", job.src_path, e))?;
        sys::seek_to(job.dst, at).map_err(|e| EntryError::new("seek", job.dst_path, e))?;
        self.copy_span(Span {
            want: Some(first),
            done: 0,
        })?;
        if self.copied < first {
            // The file shrank under us: it ended within the first chunk.
            return Ok(());
        }
        // The first chunk's verdict holds for the file; a kernel copy that then fails at the
        // start of a chunk falls back to positioned read/write for that chunk.
        if self.method == Method::CopyFileRange && job.src_dev == job.dst_dev {
            if !slow_server_copy(first, started.elapsed()) {
                // A copy within one server: the server moves the data (NFSv4.2 COPY).
                // Chunks in parallel only contend for the destination's lock there: 1 GiB
                // within a latencyfs mount took 1.1 s in 16 streams against 0.65 s in one.
                self.server_copy = true;
                for &(offset, len) in rest {
                    sys::seek_to(job.src, offset)
                        .map_err(|e| EntryError::of_source("seek", job.src_path, e))?;
                    sys::seek_to(job.dst, offset)
                        .map_err(|e| EntryError::new("seek", job.dst_path, e))?;
                    self.copy_span(Span {
                        want: Some(len),
                        done: 0,
                    })?;
                }
                return Ok(());
            }
            // The server refused and the kernel copies through this client instead, a pipe
            // (64 KiB) per request on FUSE: parallel chunks of read/write move 1 MiB per
            // request in many streams (1 GiB on latencyfs without server-side copy: 12 s in
            // one stream of copy_file_range).
            self.method = Method::ReadWrite;
            self.rep.verbose(|| {
                format!(
                    "{}: copy_file_range within the server moved {first} bytes in {:?}, slower \
                     than a server-side copy; read/write chunks for the rest",
                    job.src_path.display(),
                    started.elapsed()
                )
            });
        }
        let (method, skip_zeros) = (self.method, self.skip_zeros);
        // Whatever the first chunk made of the device pair's probe, it is given up now.
        self.probe.take();
        let failed: Mutex<Option<EntryError>> = Mutex::new(None);
        let copied = AtomicU64::new(0);
        let rep = self.rep;
        // The file gets its final size first, so no chunk's write extends it: a remote
        // server may then take several writes to it at once.
        sys::set_len(job.dst, job.size)
            .map_err(|e| EntryError::new("truncate", job.dst_path, e))?;
        let chunks = rest.len() as u64;
        let next = AtomicU64::new(0);
        // A few runners take chunks in turn (not a task per chunk), within the streams left
        // of MAX_STREAMS.
        let want = (job.chunk_workers as u64).clamp(1, chunks) as usize;
        let streams = Streams::reserve(want);
        rayon::scope(|scope| {
            for _ in 0..streams.0 {
                let (failed, copied, next) = (&failed, &copied, &next);
                scope.spawn(move |_| {
                    // A runner gets open files of its own where it can: on NFS-like mounts
                    // each open file is a stream with its own bandwidth, and direct I/O
                    // there makes each call one request of the buffer's size. The shared
                    // descriptors remain the fallback for a chunk direct I/O refuses.
                    let direct = method == Method::ReadWrite;
                    let src = sys::reopen(job.src, false, direct && job.src_remote);
                    let dst = sys::reopen(job.dst, true, direct && job.dst_remote);
                    let own = Job {
                        src: src.as_ref().map_or(job.src, |fd| fd.as_fd()),
                        dst: dst.as_ref().map_or(job.dst, |fd| fd.as_fd()),
                        ..*job
                    };
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= chunks
                            || failed.lock().unwrap_or_else(|e| e.into_inner()).is_some()
                        {
                            return;
                        }
                        let (offset, len) = rest[index as usize];
                        let chunk = Chunk {
                            method,
                            offset,
                            len,
                            skip_zeros,
                        };
                        let result = match copy_chunk(&own, &chunk, rep) {
                            // Direct I/O wants alignment this chunk's tail lacks: again,
                            // through the file's own descriptors.
                            Err(e) if e.source.raw_os_error() == Some(libc::EINVAL) => {
                                copy_chunk(job, &chunk, rep)
                            }
                            other => other,
                        };
                        match result {
                            Ok(n) => {
                                copied.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(e) => {
                                failed
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        self.copied += copied.into_inner();
        Ok(())
    }

    /// Copies one span with the current method, falling back as the table says.
    fn copy_span(&mut self, mut span: Span) -> EntryResult<()> {
        loop {
            let stage = match self.method {
                Method::Clone => unreachable!("clones are whole-file and handled before"),
                Method::CopyFileRange | Method::Sendfile => self.kernel_copy(&mut span)?,
                Method::ReadWrite => self.read_write(&mut span)?,
            };
            match stage {
                Stage::Finished => return Ok(()),
                Stage::Next(next) => self.method = next,
            }
        }
    }

    fn advanced(&mut self, span: &mut Span, n: usize) {
        self.copied += n as u64;
        span.done += n as u64;
        self.rep.copied_bytes(n as u64);
        if let Some(behind) = &mut self.behind {
            behind.written(self.copied);
        }
    }

    /// Runs a method the kernel copies with (copy_file_range, sendfile) over the span. The
    /// first successful copy_file_range on an unknown device pair settles the pair's method;
    /// a structural refusal settles the fallback for the pair; anything else falls back for
    /// this file only.
    fn kernel_copy(&mut self, span: &mut Span) -> EntryResult<Stage> {
        let (job, method) = (self.job, self.method);
        let next = match method {
            Method::CopyFileRange => Method::Sendfile,
            _ => Method::ReadWrite,
        };
        loop {
            interrupted(job)?;
            if span.complete() {
                return Ok(Stage::Finished);
            }
            let result = match method {
                Method::CopyFileRange => {
                    let chunk = if self.probe.is_some() {
                        PROBE_CHUNK
                    } else if self.server_copy {
                        SERVER_COPY_CHUNK
                    } else {
                        CHUNK
                    };
                    sys::copy_file_range(job.src, job.dst, span.request(chunk))
                }
                _ => sys::sendfile(job.dst, job.src, span.request(CHUNK)),
            };
            let event = match result {
                Ok(0) => Event::Zero,
                Ok(n) => {
                    self.advanced(span, n);
                    self.settle_pair(method, None);
                    continue;
                }
                Err(errno) => Event::Error(errno),
            };
            match decide(event, self.copied) {
                Decision::Retry => continue,
                Decision::Done => return Ok(Stage::Finished),
                Decision::Fail => return Err(job.copy_error(errno_of(event))),
                Decision::FallBackForPair if self.probe.is_some() => {
                    self.settle_pair(next, Some((method, event)));
                    return Ok(Stage::Next(next));
                }
                Decision::FallBackForPair | Decision::FallBackForFile => {
                    // Inconclusive for the pair: give the probe back so another file decides.
                    self.probe.take();
                    self.rep.verbose(|| {
                        format!(
                            "fallback for {}: {} {}, using {} for this file",
                            job.src_path.display(),
                            method.name(),
                            describe(event),
                            next.name()
                        )
                    });
                    return Ok(Stage::Next(next));
                }
            }
        }
    }

    /// Records `method` for this device pair if we hold the probe, and says so once with -v;
    /// `because` is the refusal that led to it.
    fn settle_pair(&mut self, method: Method, because: Option<(Method, Event)>) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        probe.settle(method);
        let job = self.job;
        self.rep.verbose(|| {
            let reason = because
                .map(|(refused, event)| format!(" ({}: {})", refused.name(), describe(event)))
                .unwrap_or_default();
            format!(
                "decision for device pair ({} -> {}): {}{reason}",
                sys::dev_name(job.src_dev),
                sys::dev_name(job.dst_dev),
                method.name()
            )
        });
    }

    /// The last resort, and the only method that works everywhere.
    fn read_write(&mut self, span: &mut Span) -> EntryResult<Stage> {
        let job = self.job;
        with_buffer(|buf| {
            loop {
                interrupted(job)?;
                if span.complete() {
                    return Ok(Stage::Finished);
                }
                let want = span.request(buf.len());
                let n = match sys::read(job.src, &mut buf[..want]) {
                    Ok(0) => return Ok(Stage::Finished),
                    Ok(n) => n,
                    Err(Errno::EINTR | Errno::EAGAIN) => continue,
                    Err(errno) => return Err(EntryError::of_source("read", job.src_path, errno)),
                };
                if self.skip_zeros {
                    write_skipping_zeros(job, &buf[..n])?;
                } else {
                    write_all(job, &buf[..n])?;
                }
                self.advanced(span, n);
            }
        })
    }
}

/// The source's data extents (start, end), in order, as SEEK_DATA/SEEK_HOLE report them.
/// (--reflink=always never gets here: it clones the whole file.)
fn data_extents<'j>(job: &'j Job<'j>) -> impl Iterator<Item = EntryResult<(u64, u64)>> + 'j {
    let mut offset = 0;
    std::iter::from_fn(move || {
        if offset >= job.size {
            return None;
        }
        match sys::next_data(job.src, offset, job.size) {
            Ok(Some((start, end))) => {
                offset = end;
                Some(Ok((start, end)))
            }
            Ok(None) => None,
            Err(e) => {
                offset = job.size;
                Some(Err(EntryError::of_source("seek", job.src_path, e)))
            }
        }
    })
}

/// `start..end` in pieces of at most PARALLEL_CHUNK.
fn split(start: u64, end: u64) -> Vec<(u64, u64)> {
    (start..end)
        .step_by(PARALLEL_CHUNK as usize)
        .map(|offset| (offset, PARALLEL_CHUNK.min(end - offset)))
        .collect()
}

/// One chunk of a parallel copy: `len` bytes at `offset` in both files.
struct Chunk {
    method: Method,
    offset: u64,
    len: u64,
    /// Zero blocks are left as holes (a sparse source whose filesystem reports no holes).
    skip_zeros: bool,
}

/// Copies a chunk by positioned calls that leave the shared descriptors' offsets alone.
/// Returns the bytes copied (fewer if the source ended early).
fn copy_chunk(job: &Job<'_>, chunk: &Chunk, rep: &Reporter) -> EntryResult<u64> {
    let Chunk {
        method,
        offset,
        len,
        skip_zeros,
    } = *chunk;
    let mut done = 0u64;
    if method == Method::CopyFileRange {
        while done < len {
            interrupted(job)?;
            let want = (len - done).min(CHUNK as u64) as usize;
            match sys::copy_file_range_at(job.src, offset + done, job.dst, offset + done, want) {
                Ok(0) => return Ok(done),
                Ok(n) => {
                    done += n as u64;
                    rep.copied_bytes(n as u64);
                }
                Err(errno) => match decide(Event::Error(errno), done) {
                    Decision::Retry => continue,
                    Decision::FallBackForPair | Decision::FallBackForFile => break,
                    Decision::Fail | Decision::Done => return Err(job.copy_error(errno)),
                },
            }
        }
        if done == len {
            return Ok(done);
        }
    }
    with_buffer(|buf| {
        while done < len {
            interrupted(job)?;
            let want = (len - done).min(buf.len() as u64) as usize;
            let n = match sys::pread(job.src, &mut buf[..want], offset + done) {
                Ok(0) => return Ok(done),
                Ok(n) => n,
                Err(Errno::EINTR | Errno::EAGAIN) => continue,
                Err(errno) => return Err(EntryError::of_source("read", job.src_path, errno)),
            };
            for (start, end) in data_blocks(&buf[..n], skip_zeros) {
                pwrite_all(job, &buf[start..end], offset + done + start as u64)?;
            }
            done += n as u64;
            rep.copied_bytes(n as u64);
        }
        Ok(done)
    })
}

fn pwrite_all(job: &Job<'_>, data: &[u8], at: u64) -> EntryResult<()> {
    let mut written = 0;
    while written < data.len() {
        match sys::pwrite(job.dst, &data[written..], at + written as u64) {
            Ok(0) => return Err(EntryError::new("write", job.dst_path, Errno::EIO)),
            Ok(w) => written += w,
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(errno) => return Err(EntryError::new("write", job.dst_path, errno)),
        }
    }
    Ok(())
}

/// The ranges of `data` to write: all of it, or with `skip_zeros` its runs of blocks that are
/// not all zero (the others stay holes).
fn data_blocks(data: &[u8], skip_zeros: bool) -> Vec<(usize, usize)> {
    if !skip_zeros {
        return vec![(0, data.len())];
    }
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for start in (0..data.len()).step_by(ZERO_BLOCK) {
        let end = (start + ZERO_BLOCK).min(data.len());
        if data[start..end].iter().all(|&b| b == 0) {
            continue;
        }
        match runs.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => runs.push((start, end)),
        }
    }
    runs
}

fn write_all(job: &Job<'_>, data: &[u8]) -> EntryResult<()> {
    let mut written = 0;
    while written < data.len() {
        match sys::write(job.dst, &data[written..]) {
            Ok(0) => return Err(EntryError::new("write", job.dst_path, Errno::EIO)),
            Ok(w) => written += w,
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(errno) => return Err(EntryError::new("write", job.dst_path, errno)),
        }
    }
    Ok(())
}

/// The block size zeros are looked for in: the page size, which every filesystem's holes
/// are a multiple of.
const ZERO_BLOCK: usize = 4096;

/// Writes `data` at the destination's offset, leaving holes where whole blocks are zero; the
/// caller sets the final size, so trailing holes are kept too.
fn write_skipping_zeros(job: &Job<'_>, data: &[u8]) -> EntryResult<()> {
    let mut start = 0;
    while start < data.len() {
        let zero = |block: &[u8]| block.iter().all(|&b| b == 0);
        let block_end = |at: usize| (at + ZERO_BLOCK).min(data.len());
        let is_zero = zero(&data[start..block_end(start)]);
        let mut end = block_end(start);
        while end < data.len() && zero(&data[end..block_end(end)]) == is_zero {
            end = block_end(end);
        }
        if is_zero {
            sys::seek_by(job.dst, (end - start) as i64)
                .map_err(|e| EntryError::new("seek", job.dst_path, e))?;
        } else {
            write_all(job, &data[start..end])?;
        }
        start = end;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    /// Zero blocks become holes; data, including a partial last block, is written in place.
    #[test]
    fn pieces_cover_a_range_in_parallel_chunks() {
        const M: u64 = 1 << 20;
        assert_eq!(
            split(8 * M, 48 * M),
            [(8 * M, 16 * M), (24 * M, 16 * M), (40 * M, 8 * M)]
        );
        assert!(split(5, 5).is_empty());
    }

    #[test]
    fn only_blocks_with_data_are_written_when_zeros_are_holes() {
        let mut data = vec![0u8; 5 * ZERO_BLOCK + 100];
        data[ZERO_BLOCK + 7] = 1;
        data[2 * ZERO_BLOCK] = 2;
        data[5 * ZERO_BLOCK + 99] = 3;
        let runs = data_blocks(&data, true);
        let end = data.len();
        assert_eq!(runs, [(ZERO_BLOCK, 3 * ZERO_BLOCK), (5 * ZERO_BLOCK, end)]);
        assert_eq!(data_blocks(&data, false), [(0, end)]);
        assert!(data_blocks(&[0; 3 * ZERO_BLOCK], true).is_empty());
    }

    #[test]
    fn zero_blocks_are_left_as_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = std::fs::File::create(&path).unwrap();
        let mut data = vec![0u8; 64 * ZERO_BLOCK + 100];
        data[10 * ZERO_BLOCK + 7] = 1;
        data[64 * ZERO_BLOCK + 99] = 2;
        let job = Job {
            src: file.as_fd(),
            dst: file.as_fd(),
            size: data.len() as u64,
            blocks: 0,
            src_dev: 0,
            dst_dev: 0,
            src_path: &path,
            dst_path: &path,
            reflink: Reflink::Auto,
            parallel: false,
            src_remote: false,
            dst_remote: false,
            chunk_workers: 1,
            write_behind: None,
        };
        write_skipping_zeros(&job, &data).unwrap();
        sys::set_len(file.as_fd(), data.len() as u64).unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        let meta = std::fs::metadata(&path).unwrap();
        // Two data blocks, where the filesystem keeps holes (tmpfs and ext4 do), not 65.
        assert!(
            meta.blocks() * 512 <= 4 * ZERO_BLOCK as u64,
            "{} blocks allocated",
            meta.blocks()
        );
    }

    #[test]
    fn a_server_side_copy_is_told_from_the_kernel_copying_through_the_client() {
        use std::time::Duration;
        let chunk = 16 << 20;
        // 16 MiB in 10 ms: a server copying in memory.
        assert!(!slow_server_copy(chunk, Duration::from_millis(10)));
        // 16 MiB in 200 ms: 256 round trips of 64 KiB, as measured on latencyfs.
        assert!(slow_server_copy(chunk, Duration::from_millis(200)));
        // The boundary is 128 MiB/s: 125 ms for 16 MiB.
        assert!(!slow_server_copy(chunk, Duration::from_millis(124)));
        assert!(slow_server_copy(chunk, Duration::from_millis(126)));
    }
}
