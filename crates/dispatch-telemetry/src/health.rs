//! Readiness of a process, assembled from what its components report: ready only when every
//! registered component is (partitions assigned, state topics caught up).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

/// The reason a component has before its first report.
const STARTING: &str = "starting";
/// The reason a component has once its [`ReadinessFlag`] is gone.
const STOPPED: &str = "stopped";

/// The readiness of a process: a cheap-to-clone handle that components register with.
///
/// Ready means at least one component is registered and all of them are ready; a process that
/// registered nothing has not finished starting.
#[derive(Clone, Debug, Default)]
pub struct Health {
    components: Arc<Mutex<BTreeMap<String, ComponentReport>>>,
}

impl Health {
    /// A process with no components yet (and so not ready).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a component, not ready (reason `starting`) until it says otherwise through the
    /// returned flag.
    ///
    /// Names should be unique per process; a second registration of a name (two roles in one
    /// process each with a `view`) gets its own entry, `view#2`, so neither can report for the
    /// other.
    ///
    /// Dropping the flag marks the component not ready (reason `stopped`): a component whose task
    /// ended, however it ended, must not keep the process ready. Keep the flag as long as the
    /// component runs.
    pub fn component(&self, name: impl Into<String>) -> ReadinessFlag {
        let requested = name.into();
        let mut components = self.lock();
        let mut name = requested.clone();
        let mut n = 1;
        while components.contains_key(&name) {
            n += 1;
            name = format!("{requested}#{n}");
        }
        components.insert(name.clone(), ComponentReport::not_ready(STARTING));
        ReadinessFlag {
            health: self.clone(),
            name,
        }
    }

    /// Whether every registered component is ready, and at least one is registered.
    pub fn is_ready(&self) -> bool {
        Self::all_ready(&self.lock())
    }

    /// A snapshot of every component, as `/readyz` returns it.
    pub fn report(&self) -> HealthReport {
        let components = self.lock();
        HealthReport {
            ready: Self::all_ready(&components),
            components: components.clone(),
        }
    }

    fn all_ready(components: &BTreeMap<String, ComponentReport>) -> bool {
        !components.is_empty() && components.values().all(|c| c.ready)
    }

    fn set(&self, name: &str, report: ComponentReport) {
        if let Some(entry) = self.lock().get_mut(name) {
            *entry = report;
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ComponentReport>> {
        // Every write replaces whole entries, so a panic elsewhere cannot leave a half-written map.
        self.components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// How one component reports its readiness; see [`Health::component`].
///
/// Not `Clone` on purpose: dropping it marks the component stopped, which only makes sense with
/// one owner.
#[derive(Debug)]
pub struct ReadinessFlag {
    health: Health,
    name: String,
}

impl ReadinessFlag {
    /// The name this component is reported under (with a `#n` suffix if the requested name was
    /// taken).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Marks the component ready, or not ready without a particular reason.
    pub fn set_ready(&self, ready: bool) {
        let report = ComponentReport {
            ready,
            reason: None,
        };
        self.health.set(&self.name, report);
    }

    /// Marks the component not ready, saying why (`catching up: 120 records behind`).
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.health
            .set(&self.name, ComponentReport::not_ready(reason));
    }
}

impl Drop for ReadinessFlag {
    fn drop(&mut self) {
        self.set_not_ready(STOPPED);
    }
}

/// The body of `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Whether the process is ready: components registered and all ready.
    pub ready: bool,
    /// Every registered component by name.
    pub components: BTreeMap<String, ComponentReport>,
}

/// The state of one component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentReport {
    /// Whether the component is ready.
    pub ready: bool,
    /// Why it is not ready, if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ComponentReport {
    fn not_ready(reason: impl Into<String>) -> Self {
        Self {
            ready: false,
            reason: Some(reason.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nothing_registered_is_not_ready() {
        let health = Health::new();
        assert!(!health.is_ready());
        let report = health.report();
        assert!(!report.ready);
        assert!(report.components.is_empty());
    }

    #[test]
    fn ready_once_every_component_is() {
        let health = Health::new();
        let fanout = health.component("fanout");
        let view = health.component("view");
        assert!(!health.is_ready(), "new components start not ready");

        fanout.set_ready(true);
        view.set_not_ready("catching up: 120 records behind");
        assert!(!health.is_ready());
        assert_eq!(
            serde_json::to_value(health.report()).expect("serializable"),
            json!({
                "ready": false,
                "components": {
                    "fanout": {"ready": true},
                    "view": {"ready": false, "reason": "catching up: 120 records behind"},
                }
            })
        );

        view.set_ready(true);
        assert!(health.is_ready());
        // A clone is the same process, not a copy of its state.
        assert!(health.clone().is_ready());

        fanout.set_ready(false);
        assert!(!health.is_ready(), "a component can become not ready again");
        assert_eq!(
            health.report().components["fanout"],
            ComponentReport {
                ready: false,
                reason: None
            }
        );
    }

    #[test]
    fn a_new_component_starts_with_a_reason() {
        let health = Health::new();
        let _sender = health.component("sender");
        assert_eq!(
            health.report().components["sender"].reason.as_deref(),
            Some(STARTING)
        );
    }

    #[test]
    fn a_dropped_flag_marks_its_component_stopped() {
        let health = Health::new();
        let fanout = health.component("fanout");
        fanout.set_ready(true);
        assert!(health.is_ready());
        drop(fanout);
        assert!(!health.is_ready());
        assert_eq!(
            health.report().components["fanout"],
            ComponentReport::not_ready(STOPPED)
        );
    }

    #[test]
    fn a_repeated_name_gets_its_own_entry() {
        let health = Health::new();
        let first = health.component("view");
        let second = health.component("view");
        assert_eq!(first.name(), "view");
        assert_eq!(second.name(), "view#2");
        first.set_ready(true);
        assert!(!health.is_ready(), "the second view still has to catch up");
        second.set_ready(true);
        assert!(health.is_ready());
    }

    #[test]
    fn the_report_round_trips_through_json() {
        let health = Health::new();
        let view = health.component("view");
        view.set_not_ready("catching up");
        let report = health.report();
        let json = serde_json::to_string(&report).expect("serializable");
        let back: HealthReport = serde_json::from_str(&json).expect("deserializable");
        assert_eq!(back, report);
    }
}
