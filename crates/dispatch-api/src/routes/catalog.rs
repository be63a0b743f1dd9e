//! `GET /v1/event-types`: the event catalog, with a description and an example payload of each
//! type, for people choosing what to subscribe to.

use axum::Json;

use dispatch_core::catalog::CATALOG;

use crate::auth::Caller;
use crate::error::ErrorBody;
use crate::model::{EventTypeList, EventTypeOut};

/// The catalog as the API shows it.
pub fn event_type_list() -> EventTypeList {
    let data = CATALOG
        .iter()
        .map(|event_type| EventTypeOut {
            name: event_type.name.to_owned(),
            family: event_type.family.as_str().to_owned(),
            description: event_type.description.to_owned(),
            progress: event_type.progress,
            // The examples are JSON literals checked by the catalog's own tests.
            example: serde_json::from_str(event_type.example_data)
                .unwrap_or(serde_json::Value::Null),
        })
        .collect();
    EventTypeList { data }
}

/// List event types.
///
/// Every type a subscription can name, with what it means and an example of its `data`.
#[utoipa::path(
    get,
    operation_id = "list_event_types",
    path = "/v1/event-types",
    tag = "event types",
    responses(
        (status = 200, description = "The catalog", body = EventTypeList),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn event_types(_caller: Caller) -> Json<EventTypeList> {
    Json(event_type_list())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_a_description_and_an_example_object() {
        let list = event_type_list();
        assert_eq!(list.data.len(), CATALOG.len());
        for event_type in &list.data {
            assert!(!event_type.description.is_empty(), "{}", event_type.name);
            assert!(event_type.example.is_object(), "{}", event_type.name);
            assert!(event_type.name.starts_with(&event_type.family));
        }
        assert!(list.data.iter().any(|t| t.name == "webhook.test"));
    }
}
