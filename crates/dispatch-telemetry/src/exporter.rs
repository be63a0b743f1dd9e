//! The process-wide Prometheus recorder: installed once, rendered by our own `/metrics` route.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::names::{self, MetricKind, MetricSpec};
use crate::{Error, Result};

/// Bucket bounds for every histogram of time (`…_seconds`): a millisecond to a minute, which
/// covers a fast commit as well as a webhook attempt that runs into its timeout.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Bucket bounds for histograms of counted things (records per transaction): one to ten
/// thousand, the largest batch a consumer poll hands over.
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes; each scrape
/// does it as well.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The bucket bounds a catalogued histogram is exported with.
pub fn buckets_for(spec: &MetricSpec) -> Option<&'static [f64]> {
    match (spec.kind, spec.unit) {
        (MetricKind::Histogram, "seconds") => Some(SECONDS_BUCKETS),
        (MetricKind::Histogram, _) => Some(COUNT_BUCKETS),
        _ => None,
    }
}

/// Our exporter's configuration. Names stay exactly as catalogued (no unit suffixes added): the
/// dashboards are built on them.
pub(crate) fn builder() -> Result<PrometheusBuilder> {
    let mut builder = PrometheusBuilder::new()
        // A time histogram someone records before cataloguing it still gets sensible buckets
        // rather than becoming a summary, which cannot be aggregated across instances.
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
        .map_err(Error::Recorder)?;
    for spec in names::CATALOGUE {
        if let Some(buckets) = buckets_for(spec) {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(spec.name.to_owned()), buckets)
                .map_err(Error::Recorder)?;
        }
    }
    Ok(builder)
}

static INSTALLED: OnceLock<PrometheusHandle> = OnceLock::new();
/// Held while the first installation runs, so two first callers cannot race to become the global
/// recorder (the loser would get an error instead of the winner's handle).
static INSTALLING: Mutex<()> = Mutex::new(());

/// Installs the Prometheus recorder as the process's global `metrics` recorder, describes every
/// catalogued metric, and returns a handle that renders the scrape payload.
///
/// It opens no listener: [`serve`](crate::serve) exposes the handle on `/metrics`. Calling it
/// again (another role in the same process, another test in the same binary) returns a handle to
/// the same recorder.
///
/// # Errors
///
/// [`Error::Recorder`] if a different global recorder was installed before.
pub fn install_recorder() -> Result<PrometheusHandle> {
    if let Some(handle) = INSTALLED.get() {
        return Ok(handle.clone());
    }
    // The guard protects no data, so a panic while holding it leaves nothing inconsistent.
    let _installing = INSTALLING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = INSTALLED.get() {
        return Ok(handle.clone());
    }
    let handle = builder()?.install_recorder().map_err(Error::Recorder)?;
    names::describe_all();
    spawn_upkeep(handle.clone());
    Ok(INSTALLED.get_or_init(|| handle).clone())
}

/// Folds histogram samples into buckets periodically so memory stays bounded between scrapes.
///
/// A plain thread rather than a tokio task: a task dies with the runtime that spawned it (each
/// `#[tokio::test]` has its own, and the recorder may be installed before `main` builds one),
/// while the recorder lives as long as the process. The thread sleeps almost always and ends
/// with the process.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        // Not fatal: rendering `/metrics` runs the same upkeep, so only memory between scrapes
        // grows.
        tracing::warn!(%error, "cannot start the metrics upkeep thread; relying on scrapes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders what `record` produced through our exporter configuration, without touching the
    /// global recorder.
    fn render_locally(record: impl FnOnce()) -> String {
        let recorder = builder().expect("valid buckets").build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            names::describe_all();
            record();
        });
        handle.render()
    }

    #[test]
    fn every_catalogued_histogram_has_buckets() {
        for spec in names::CATALOGUE
            .iter()
            .filter(|s| s.kind == MetricKind::Histogram)
        {
            let buckets = buckets_for(spec).expect("histograms have buckets");
            assert!(
                buckets.windows(2).all(|w| w[0] < w[1]),
                "{}: ascending",
                spec.name
            );
            let rendered = render_locally(|| metrics::histogram!(spec.name).record(1.0));
            let top = buckets.last().expect("non-empty");
            assert!(
                rendered.contains(&format!("{}_bucket{{le=\"{top}\"}} 1", spec.name)),
                "{} must be a histogram with its top bucket:\n{rendered}",
                spec.name
            );
        }
    }

    #[test]
    fn time_and_batch_histograms_use_their_ranges() {
        let rendered = render_locally(|| {
            metrics::histogram!(names::FANOUT_COMMIT_DURATION_SECONDS).record(0.2);
            metrics::histogram!(names::FANOUT_BATCH_RECORDS).record(300.0);
            // Not catalogued: the `_seconds` suffix alone gives it time buckets.
            metrics::histogram!("dispatch_test_uncatalogued_seconds").record(0.2);
        });
        for name in [
            names::FANOUT_COMMIT_DURATION_SECONDS,
            "dispatch_test_uncatalogued_seconds",
        ] {
            assert!(
                rendered.contains(&format!("{name}_bucket{{le=\"0.001\"}} 0")),
                "{rendered}"
            );
            assert!(
                rendered.contains(&format!("{name}_bucket{{le=\"0.25\"}} 1")),
                "{rendered}"
            );
            assert!(
                rendered.contains(&format!("{name}_bucket{{le=\"60\"}} 1")),
                "{rendered}"
            );
        }
        let batch = names::FANOUT_BATCH_RECORDS;
        assert!(
            rendered.contains(&format!("{batch}_bucket{{le=\"250\"}} 0")),
            "{rendered}"
        );
        assert!(
            rendered.contains(&format!("{batch}_bucket{{le=\"500\"}} 1")),
            "{rendered}"
        );
        assert!(rendered.contains(&format!("{batch}_sum 300")), "{rendered}");
    }

    #[test]
    fn names_are_exported_unchanged_with_help_and_type() {
        let rendered = render_locally(|| {
            metrics::counter!(names::FANOUT_EVENTS_UNMATCHED_TOTAL).increment(2);
            metrics::gauge!(names::VIEW_LAG_RECORDS).set(7.0);
        });
        let unmatched = names::spec(names::FANOUT_EVENTS_UNMATCHED_TOTAL).expect("catalogued");
        assert!(
            rendered.contains(&format!("# HELP {} {}", unmatched.name, unmatched.help)),
            "{rendered}"
        );
        assert!(
            rendered.contains(&format!("# TYPE {} counter", unmatched.name)),
            "{rendered}"
        );
        assert!(
            rendered.contains(&format!("\n{} 2\n", unmatched.name)),
            "{rendered}"
        );
        assert!(rendered.contains(&format!("# TYPE {} gauge", names::VIEW_LAG_RECORDS)));
        assert!(
            rendered.contains(&format!("\n{} 7\n", names::VIEW_LAG_RECORDS)),
            "{rendered}"
        );
    }
}
