//! Time emulation: the per-request round-trip delay and the per-stream bandwidth cap.

use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// Sleeps for one emulated round trip. Called by whichever worker thread handles the
/// request, so concurrent requests overlap their delays like requests in flight to a
/// server do.
pub fn round_trip(latency: Duration) {
    if !latency.is_zero() {
        thread::sleep(latency);
    }
}

/// A bandwidth cap shared by all requests on one open file, like a single TCP stream:
/// requests queue behind each other for the wire, each occupying it for bytes/rate.
#[derive(Debug)]
pub struct Stream {
    bytes_per_sec: u64,
    /// When the emulated wire becomes free again.
    free_at: Mutex<Instant>,
}

impl Stream {
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            free_at: Mutex::new(Instant::now()),
        }
    }

    /// Blocks until `bytes` have "crossed the wire".
    pub fn transfer(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let done_at = {
            let mut free_at = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
            // An idle stream earns no credit: a burst after a pause is still paced.
            let start = (*free_at).max(Instant::now());
            *free_at = start + cost;
            *free_at
        };
        let now = Instant::now();
        if done_at > now {
            thread::sleep(done_at - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_paces_bytes() {
        let s = Stream::new(10_000_000);
        let t = Instant::now();
        for _ in 0..5 {
            s.transfer(100_000); // 10 ms each
        }
        let el = t.elapsed();
        assert!(el >= Duration::from_millis(50), "{el:?}");
        assert!(el < Duration::from_millis(200), "{el:?}");
    }
}
