//! Refusals in the log, rate-limited: the first refusal after a quiet
//! spell is logged in full (status, reason, client, what the client was
//! told); the ones that follow within [`INTERVAL`] are counted and told as
//! one summary line when it ends ("refused 1234 connections in the last
//! 10 s (409 source_taken: 1200, 400 bad_name: 34)"), so a storm costs one
//! line per interval however large it is.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// How long after a logged refusal further ones are only counted.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

/// The log's state: the open window and what it counted.
#[derive(Debug, Default)]
struct Window {
    /// When the last line was logged; `None` before the first refusal.
    since: Option<Instant>,
    /// Refusals counted since, by status and reason.
    counts: BTreeMap<(u16, &'static str), u64>,
    /// Whether a summary is scheduled.
    summary_due: bool,
}

/// The relay's rate-limited refusal log. See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct RefusalLog {
    window: Arc<Mutex<Window>>,
    interval: Duration,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self::with_interval(INTERVAL)
    }
}

fn lock(m: &Mutex<Window>) -> MutexGuard<'_, Window> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RefusalLog {
    /// A log that summarizes every `interval`.
    fn with_interval(interval: Duration) -> Self {
        Self {
            window: Arc::default(),
            interval,
        }
    }

    /// Logs (or counts) a refusal answered `status`, counted as `reason`,
    /// the client told `text`.
    pub(crate) fn note(&self, status: u16, reason: &'static str, text: &str, client: IpAddr) {
        let now = Instant::now();
        let mut w = lock(&self.window);
        if w.since
            .is_none_or(|since| now.duration_since(since) >= self.interval)
        {
            w.since = Some(now);
            drop(w);
            tracing::info!(status, reason, %client, "refused: {text}");
            return;
        }
        *w.counts.entry((status, reason)).or_default() += 1;
        if w.summary_due {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        w.summary_due = true;
        let at = w.since.map_or(now, |s| s + self.interval);
        let (window, interval) = (self.window.clone(), self.interval);
        rt.spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut w = lock(&window);
            let counts = std::mem::take(&mut w.counts);
            w.summary_due = false;
            w.since = Some(Instant::now());
            drop(w);
            if let Some(line) = summary(&counts, interval) {
                tracing::info!("{line}");
            }
        });
    }
}

/// The summary line of `counts`, `None` when there is nothing to tell.
fn summary(counts: &BTreeMap<(u16, &'static str), u64>, interval: Duration) -> Option<String> {
    let total: u64 = counts.values().sum();
    if total == 0 {
        return None;
    }
    let mut by: Vec<_> = counts.iter().collect();
    by.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut line = format!(
        "refused {total} more connection{} in the last {} s (",
        if total == 1 { "" } else { "s" },
        interval.as_secs_f64()
    );
    for (i, ((status, reason), n)) in by.into_iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(line, "{sep}{status} {reason}: {n}");
    }
    line.push(')');
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_each_status_and_reason_busiest_first() {
        let mut c = BTreeMap::new();
        assert_eq!(summary(&c, INTERVAL), None);
        c.insert((400, "bad_name"), 34);
        c.insert((409, "source_taken"), 1200);
        assert_eq!(
            summary(&c, INTERVAL).as_deref(),
            Some("refused 1234 more connections in the last 10 s (409 source_taken: 1200, 400 bad_name: 34)")
        );
    }

    #[tokio::test]
    async fn a_storm_is_one_line_and_one_summary() {
        let interval = Duration::from_millis(50);
        let log = RefusalLog::with_interval(interval);
        let ip = IpAddr::from([127, 0, 0, 1]);
        for _ in 0..1000 {
            log.note(409, "source_taken", "channel already has a source", ip);
        }
        {
            let w = lock(&log.window);
            assert_eq!(w.counts.get(&(409, "source_taken")), Some(&999));
            assert!(w.summary_due);
        }
        // The summary, once the interval is over, empties the counts.
        let start = Instant::now();
        while lock(&log.window).summary_due {
            assert!(start.elapsed() < Duration::from_secs(20), "no summary");
            tokio::time::sleep(interval).await;
        }
        assert!(lock(&log.window).counts.is_empty());
    }
}
