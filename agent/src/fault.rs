//! Fault injection per backend: abort a share of requests with a status (and
//! `Retry-After`), delay a share, or cut a share of streamed responses after
//! some chunks. Every fault set carries an expiry time.
//!
//! Generic: decisions come from plain settings and random draws.

use std::time::{Duration, SystemTime};

use http::StatusCode;

/// Answer with an error instead of sending the request.
#[derive(Debug, Clone, PartialEq)]
pub struct Abort {
    pub percent: f64,
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
}

/// Hold the request before sending it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delay {
    pub percent: f64,
    pub duration: Duration,
}

/// End a streamed response after some chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamCut {
    pub percent: f64,
    pub after_chunks: u32,
}

/// The faults of one backend.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSettings {
    pub abort: Option<Abort>,
    pub delay: Option<Delay>,
    pub stream_cut: Option<StreamCut>,
    /// After this the faults are ignored.
    pub expires_at: SystemTime,
}

/// What to do to one attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    pub delay: Option<Duration>,
    pub abort: Option<(StatusCode, Option<Duration>)>,
    pub cut_after: Option<u32>,
}

/// Draws the faults for one attempt. `draw` returns uniform values in
/// `[0, 100)`, one per fault kind that is set.
pub fn decide(
    settings: &FaultSettings,
    now: SystemTime,
    mut draw: impl FnMut() -> f64,
) -> Decision {
    if now >= settings.expires_at {
        return Decision::default();
    }
    let mut d = Decision::default();
    if let Some(delay) = &settings.delay
        && draw() < delay.percent
    {
        d.delay = Some(delay.duration);
    }
    if let Some(abort) = &settings.abort
        && draw() < abort.percent
    {
        d.abort = Some((abort.status, abort.retry_after));
    }
    if let Some(cut) = &settings.stream_cut
        && draw() < cut.percent
    {
        d.cut_after = Some(cut.after_chunks);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(expires_in: i64) -> (FaultSettings, SystemTime) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let expires_at = if expires_in >= 0 {
            now + Duration::from_secs(expires_in as u64)
        } else {
            now - Duration::from_secs((-expires_in) as u64)
        };
        (
            FaultSettings {
                abort: Some(Abort {
                    percent: 25.0,
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    retry_after: Some(Duration::from_secs(1)),
                }),
                delay: Some(Delay {
                    percent: 50.0,
                    duration: Duration::from_millis(200),
                }),
                stream_cut: Some(StreamCut {
                    percent: 100.0,
                    after_chunks: 3,
                }),
                expires_at,
            },
            now,
        )
    }

    /// Each fault applies when its draw falls under its percentage.
    #[test]
    fn draws_against_percentages() {
        let (s, now) = settings(60);
        let mut draws = [10.0, 20.0, 99.9].into_iter();
        let d = decide(&s, now, || draws.next().unwrap());
        assert_eq!(d.delay, Some(Duration::from_millis(200)));
        assert_eq!(
            d.abort,
            Some((
                StatusCode::SERVICE_UNAVAILABLE,
                Some(Duration::from_secs(1))
            ))
        );
        assert_eq!(d.cut_after, Some(3));
        let mut draws = [50.0, 25.0, 0.0].into_iter();
        let d = decide(&s, now, || draws.next().unwrap());
        assert_eq!((d.delay, d.abort), (None, None));
    }

    /// Expired faults do nothing.
    #[test]
    fn expired_faults_are_ignored() {
        let (s, now) = settings(-1);
        assert_eq!(decide(&s, now, || 0.0), Decision::default());
    }
}
