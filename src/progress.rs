//! How progress is shown: an indicatif bar on a terminal, periodic plain lines when forced
//! on elsewhere, or nothing. The only file that knows indicatif. The display reads the shared
//! counters on its own timer, so workers never wait on the terminal.

use crate::report::Counters;
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The display of a run. `println` is the only way lines reach stderr while it is active.
pub trait Progress: Send + Sync {
    fn println(&self, line: &str);
    /// Writes one line (with its newline) on stdout without garbling the bar.
    fn print_out(&self, line: &[u8]) {
        write_out(line);
    }
    /// Stops the display for good; later lines go straight to stderr.
    fn finish(&self);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    Bar,
    /// A plain line every few seconds (progress forced on, stderr not a terminal).
    Lines,
    None,
}

pub fn start(display: Display, counters: Arc<Counters>) -> Box<dyn Progress> {
    match display {
        Display::Bar => Box::new(Bar::start(counters)),
        Display::Lines => Box::new(Lines::start(counters)),
        Display::None => Box::new(Plain),
    }
}

/// The first error writing stdout other than a closed pipe (errno), 0 while there is none.
static STDOUT_ERRNO: AtomicI32 = AtomicI32::new(0);

fn write_out(line: &[u8]) {
    // A closed stdout (`| head`) is not the copy's failure: the lines are dropped. Any other
    // error (a full disk under `-i > list`) means the list a script asked for is incomplete.
    if let Err(e) = std::io::stdout().lock().write_all(line) {
        note_stdout_error(&e);
    }
}

/// Records a failed write to stdout, unless the reader just went away.
pub fn note_stdout_error(e: &std::io::Error) {
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        let _ = STDOUT_ERRNO.compare_exchange(0, errno, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The first error writing stdout, after flushing what is buffered.
pub fn stdout_error() -> Option<std::io::Error> {
    if let Err(e) = std::io::stdout().lock().flush() {
        note_stdout_error(&e);
    }
    match STDOUT_ERRNO.load(Ordering::Relaxed) {
        0 => None,
        errno => Some(std::io::Error::from_raw_os_error(errno)),
    }
}

/// No display: lines go straight to stderr.
struct Plain;

impl Progress for Plain {
    fn println(&self, line: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
    fn finish(&self) {}
}

/// A background thread that wakes every `period` until told to stop.
struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Ticker {
    fn spawn(period: Duration, mut tick: impl FnMut() + Send + 'static) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (lock, cv) = &*flag;
            let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !*stopped {
                let (guard, _) = cv
                    .wait_timeout(stopped, period)
                    .unwrap_or_else(|e| e.into_inner());
                stopped = guard;
                if !*stopped {
                    tick();
                }
            }
        });
        Ticker {
            stop,
            thread: Mutex::new(Some(thread)),
        }
    }

    fn stop(&self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

struct Bar {
    bar: ProgressBar,
    ticker: Ticker,
    finished: AtomicBool,
}

impl Bar {
    fn start(counters: Arc<Counters>) -> Self {
        let files = {
            let counters = Arc::clone(&counters);
            move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(
                    w,
                    "{}/{} files",
                    counters.entries_done(),
                    Counters::get(&counters.found_entries)
                );
            }
        };
        let style = ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {files}",
        )
        .expect("the template is valid")
        .with_key("files", files)
        .progress_chars("=> ");
        let bar =
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr()).with_style(style);
        let ticking = bar.clone();
        let ticker = Ticker::spawn(Duration::from_millis(100), move || {
            ticking.set_length(Counters::get(&counters.found_bytes));
            ticking.set_position(Counters::get(&counters.bytes));
        });
        Bar {
            bar,
            ticker,
            finished: AtomicBool::new(false),
        }
    }
}

impl Progress for Bar {
    fn println(&self, line: &str) {
        if self.finished.load(Ordering::Acquire) {
            Plain.println(line);
        } else {
            self.bar.suspend(|| Plain.println(line));
        }
    }

    fn print_out(&self, line: &[u8]) {
        if self.finished.load(Ordering::Acquire) {
            write_out(line);
        } else {
            self.bar.suspend(|| write_out(line));
        }
    }

    fn finish(&self) {
        if !self.finished.swap(true, Ordering::AcqRel) {
            self.ticker.stop();
            self.bar.finish_and_clear();
        }
    }
}

struct Lines {
    ticker: Ticker,
}

impl Lines {
    fn start(counters: Arc<Counters>) -> Self {
        let started = Instant::now();
        let ticker = Ticker::spawn(Duration::from_secs(5), move || {
            let bytes = Counters::get(&counters.bytes);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            Plain.println(&format!(
                "treecopy: progress files={}/{} bytes={}/{} rate={}/s",
                counters.entries_done(),
                Counters::get(&counters.found_entries),
                bytes,
                Counters::get(&counters.found_bytes),
                HumanBytes((bytes as f64 / secs) as u64),
            ));
        });
        Lines { ticker }
    }
}

impl Progress for Lines {
    fn println(&self, line: &str) {
        Plain.println(line);
    }

    fn finish(&self) {
        self.ticker.stop();
    }
}
