//! Sampling a file's size during a run: e.g. the relay's SQLite WAL, which
//! must stay bounded under sustained writes and empty once they stop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::task::JoinHandle;

use crate::stats::Report;

/// How often the size is read while the run goes on.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// Options shared by the benchmarks that write (`ingest`, `seed`).
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Sample this file's size every 10 ms during the run and report the
    /// largest, e.g. the relay's WAL: `--watch-file DATA_DIR/cairn.db-wal`.
    #[arg(long, value_name = "FILE")]
    pub watch_file: Option<PathBuf>,
    /// With `--watch-file`: after the run, wait this long and report the
    /// size again (what the relay leaves once writes stop).
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub settle_secs: u64,
}

/// A running sampler; [`FileWatch::finish`] stops it and reports.
#[derive(Debug)]
pub struct FileWatch {
    path: PathBuf,
    settle: Duration,
    running: Arc<AtomicBool>,
    task: JoinHandle<u64>,
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

impl FileWatch {
    /// Start sampling, if the options name a file.
    pub fn start(args: &WatchArgs) -> Option<Self> {
        let path = args.watch_file.clone()?;
        let running = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn({
            let path = path.clone();
            let running = Arc::clone(&running);
            async move {
                let mut largest = 0;
                while running.load(Ordering::Relaxed) {
                    largest = largest.max(size(&path));
                    tokio::time::sleep(SAMPLE_EVERY).await;
                }
                largest
            }
        });
        Some(Self {
            path,
            settle: Duration::from_secs(args.settle_secs),
            running,
            task,
        })
    }

    /// Stop sampling; add the largest size, the size now, and the size
    /// after the settle time to `report`.
    pub async fn finish(self, report: &mut Report) {
        let at_end = size(&self.path);
        self.running.store(false, Ordering::Relaxed);
        let largest = self.task.await.unwrap_or(0).max(at_end);
        report.add("watch_file", self.path.display().to_string());
        report.add("watch_file_largest_bytes", largest);
        report.add("watch_file_bytes_at_end", at_end);
        tokio::time::sleep(self.settle).await;
        report.add("watch_file_settle_seconds", self.settle.as_secs());
        report.add("watch_file_bytes_after_settle", size(&self.path));
    }
}
