//! A `metrics` recorder for unit tests: counters and gauges by `name{label=value,…}`, so a
//! test can assert which metrics moved (used with `metrics::with_local_recorder`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// Records counters and gauges by `name{label=value,…}`; histograms are dropped.
#[derive(Debug, Default)]
pub(crate) struct TestRecorder {
    values: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

impl TestRecorder {
    fn handle(&self, key: &Key) -> Arc<AtomicU64> {
        let labels: Vec<String> = key
            .labels()
            .map(|label| format!("{}={}", label.key(), label.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let mut values = self.values.lock().expect("test recorder lock");
        Arc::clone(values.entry(name).or_default())
    }

    /// The counter `name{labels}` (0 when never registered).
    pub(crate) fn counter(&self, name: &str) -> u64 {
        let values = self.values.lock().expect("test recorder lock");
        values.get(name).map_or(0, |v| v.load(Ordering::Relaxed))
    }

    /// The gauge `name{labels}`, if it was registered.
    pub(crate) fn gauge(&self, name: &str) -> Option<f64> {
        let values = self.values.lock().expect("test recorder lock");
        values
            .get(name)
            .map(|v| f64::from_bits(v.load(Ordering::Relaxed)))
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
