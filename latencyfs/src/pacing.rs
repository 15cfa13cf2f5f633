//! Time emulation: when a request's reply is due, from its round trip and, for data,
//! the per-stream bandwidth cap. Nothing here sleeps: the deadlines go to the reply
//! queue (`replies`), which sends each answer when its time comes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When the answer to a request that arrived at `arrived` may be sent: one emulated
/// round trip later. Concurrent requests overlap their round trips, like requests in
/// flight to a server do. None when there is no latency (answer at once).
pub fn round_trip_done(arrived: Instant, latency: Duration) -> Option<Instant> {
    (!latency.is_zero()).then(|| arrived + latency)
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

    /// Books the wire for `bytes` that can start crossing it at `ready` (when the request
    /// reached the "server") and returns when they will have crossed it, i.e. when the
    /// reply is due. The wire is taken in booking order, like one TCP stream.
    pub fn transfer(&self, bytes: u64, ready: Instant) -> Instant {
        if bytes == 0 {
            return ready;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let mut free_at = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
        // An idle stream earns no credit: a burst after a pause is still paced.
        let start = (*free_at).max(ready);
        *free_at = start + cost;
        *free_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_paces_bytes() {
        let s = Stream::new(10_000_000);
        let t = Instant::now();
        let ms = Duration::from_millis;
        // Back to back: each 100 kB occupies the wire for 10 ms after the previous one.
        let done: Vec<_> = (0..5).map(|_| s.transfer(100_000, t) - t).collect();
        assert!(
            done.iter().zip(1..).all(|(&d, i)| d >= ms(10 * i)),
            "{done:?}"
        );
        assert!(done[4] < ms(50) + ms(20), "{done:?}");
        // A request that reaches the server after the wire went idle starts then.
        let late = t + ms(200);
        assert_eq!(s.transfer(100_000, late), late + ms(10));
        assert_eq!(s.transfer(0, late), late);
        assert_eq!(round_trip_done(t, Duration::ZERO), None);
        assert_eq!(round_trip_done(t, ms(1)), Some(t + ms(1)));
    }
}
