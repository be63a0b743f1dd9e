//! The event catalog: every public event type, its family (and so its Kafka topic), its payload
//! message, whether it is a progress update, a description and an example payload.
//!
//! The table is written once, in the `catalog!` invocation below; the payload conversions
//! (payload → kind, proto3 JSON ↔ payload) are generated from the same table, so a type cannot be
//! added to one place and forgotten in another.

use std::fmt;

use dispatch_proto::events::v1::event::Payload;
use serde::Serialize;

/// The first segment of an event type: which pipeline produced it, and so which topic carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Image generation.
    Image,
    /// Video processing.
    Video,
    /// Any operation's failure.
    Operation,
    /// Creative studio workflows (campaigns, reviews, approvals, brand compliance).
    Studio,
    /// Enterprise map and geographic content.
    Map,
    /// Dispatch's own test event; it never travels through a domain topic.
    Webhook,
}

impl Family {
    /// Every family, in catalog order.
    pub const ALL: [Family; 6] = [
        Family::Image,
        Family::Video,
        Family::Operation,
        Family::Studio,
        Family::Map,
        Family::Webhook,
    ];

    /// The families whose events pipelines publish to a domain topic.
    pub const PUBLISHED: [Family; 5] = [
        Family::Image,
        Family::Video,
        Family::Operation,
        Family::Studio,
        Family::Map,
    ];

    /// The family's name, the first segment of its event types.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Image => "image",
            Family::Video => "video",
            Family::Operation => "operation",
            Family::Studio => "studio",
            Family::Map => "map",
            Family::Webhook => "webhook",
        }
    }

    /// The domain topic (without prefix) pipelines publish this family's events to:
    /// `posternity.events.<family>`. `None` for `webhook`, whose only event is created by the
    /// admin API's test endpoint and goes straight to delivery.
    pub fn domain_topic(self) -> Option<String> {
        match self {
            Family::Webhook => None,
            other => Some(format!("posternity.events.{}", other.as_str())),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType {
    /// The public type name, e.g. `image.generation.completed`.
    pub name: &'static str,
    /// The family (first segment of the name).
    pub family: Family,
    /// Which payload message the event carries.
    pub payload: PayloadKind,
    /// A progress update: carries a `Progress` with a monotonically increasing `sequence`, so
    /// only the newest update of a job matters.
    pub progress: bool,
    /// What the event means, for people choosing what to subscribe to.
    pub description: &'static str,
    /// An example `data` object (the payload's proto3 JSON), for documentation and test events.
    pub example_data: &'static str,
}

impl EventType {
    /// The example payload, parsed. The examples are checked by this module's tests, so this only
    /// fails if the catalog itself is broken.
    pub fn example_payload(&self) -> Result<Payload, PayloadJsonError> {
        // The example is a JSON literal of this file; a syntax error there surfaces as a
        // payload error on `null`, which the tests catch.
        let value = serde_json::from_str(self.example_data).unwrap_or(serde_json::Value::Null);
        self.payload.payload_from_json(value)
    }
}

/// Looks a type up by its public name.
pub fn lookup(name: &str) -> Option<&'static EventType> {
    CATALOG.iter().find(|t| t.name == name)
}

/// Every public type name, in catalog order.
pub fn type_names() -> impl Iterator<Item = &'static str> {
    CATALOG.iter().map(|t| t.name)
}

impl PayloadKind {
    /// The catalog type that carries this payload kind.
    pub fn event_type(self) -> &'static EventType {
        CATALOG
            .iter()
            .find(|t| t.payload == self)
            .expect("the catalog table generates one entry per payload kind")
    }
}

/// Why a `data` object does not fit a payload: the path of the offending field and what serde
/// found wrong there.
#[derive(Debug)]
pub struct PayloadJsonError(serde_path_to_error::Error<serde_json::Error>);

impl std::fmt::Display for PayloadJsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.0.path().to_string();
        if path == "." {
            write!(f, "{}", self.0.inner())
        } else {
            write!(f, "{path}: {}", self.0.inner())
        }
    }
}

impl std::error::Error for PayloadJsonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.inner())
    }
}

/// The payload of an event, serialized as its proto3 JSON (the receiver's `data`) without an
/// intermediate `serde_json::Value`.
#[derive(Debug, Clone, Copy)]
pub struct PayloadJson<'a>(pub &'a Payload);

macro_rules! catalog {
    ($(
        $variant:ident {
            name: $name:literal,
            family: $family:ident,
            progress: $progress:literal,
            description: $description:literal,
            example: $example:literal $(,)?
        }
    )*) => {
        /// Which payload message an event carries; one variant per catalog type, named like the
        /// message.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum PayloadKind {
            $(
                #[doc = concat!("`", stringify!($variant), "`, the payload of `", $name, "`.")]
                $variant,
            )*
        }

        /// The whole catalog, in a stable order (families as in the design, then by type).
        pub static CATALOG: &[EventType] = &[
            $(
                EventType {
                    name: $name,
                    family: Family::$family,
                    payload: PayloadKind::$variant,
                    progress: $progress,
                    description: $description,
                    example_data: $example,
                },
            )*
        ];

        impl PayloadKind {
            /// The kind of a payload.
            pub fn of(payload: &Payload) -> Self {
                match payload {
                    $( Payload::$variant(_) => PayloadKind::$variant, )*
                }
            }

            /// Parses a payload of this kind from its proto3 JSON (`data`). Unknown fields and
            /// wrongly typed values are errors that start with the path of the field
            /// (`images[0].width: invalid type …`).
            pub fn payload_from_json(self, data: serde_json::Value) -> Result<Payload, PayloadJsonError> {
                let result = match self {
                    $( PayloadKind::$variant => serde_path_to_error::deserialize(data).map(Payload::$variant), )*
                };
                result.map_err(PayloadJsonError)
            }
        }

        impl Serialize for PayloadJson<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self.0 {
                    $( Payload::$variant(message) => message.serialize(serializer), )*
                }
            }
        }
    };
}

catalog! {
    ImageGenerationStarted {
        name: "image.generation.started",
        family: Image,
        progress: false,
        description: "Image generation began.",
        example: r#"{"generation_id":"gen_7Hk2","project_id":"prj_42","model":"posternity-image-3","prompt":"a lighthouse at dawn, watercolor","image_count":4}"#,
    }
    ImageGenerationCompleted {
        name: "image.generation.completed",
        family: Image,
        progress: false,
        description: "Image generation finished; the images are ready.",
        example: r#"{"generation_id":"gen_7Hk2","project_id":"prj_42","model":"posternity-image-3","images":[{"id":"ast_1","url":"https://cdn.posternity.example/ast_1.png","mime_type":"image/png","width":1024,"height":1024,"size_bytes":"1837261"}],"duration_ms":"8421"}"#,
    }
    ImageGenerationFailed {
        name: "image.generation.failed",
        family: Image,
        progress: false,
        description: "Image generation encountered an error.",
        example: r#"{"generation_id":"gen_7Hk2","project_id":"prj_42","error":{"code":"content_policy_violation","message":"The prompt was refused by the content policy.","retryable":false}}"#,
    }
    VideoProcessingStarted {
        name: "video.processing.started",
        family: Video,
        progress: false,
        description: "Video processing began.",
        example: r#"{"job_id":"vid_93","project_id":"prj_42","operation":"transcode","source_url":"https://cdn.posternity.example/src/vid_93.mov"}"#,
    }
    VideoProcessingCompleted {
        name: "video.processing.completed",
        family: Video,
        progress: false,
        description: "Video processing finished; the outputs are ready.",
        example: r#"{"job_id":"vid_93","project_id":"prj_42","operation":"transcode","outputs":[{"id":"ast_9","url":"https://cdn.posternity.example/ast_9.mp4","mime_type":"video/mp4","width":1920,"height":1080,"size_bytes":"73400320","duration_seconds":31.5}],"duration_ms":"65012"}"#,
    }
    OperationFailed {
        name: "operation.failed",
        family: Operation,
        progress: false,
        description: "Any operation failed, with detailed error information.",
        example: r#"{"operation_id":"op_5521","operation_type":"video.processing","resource_id":"vid_93","error":{"code":"unsupported_codec","message":"The source uses a codec that cannot be decoded.","retryable":false,"details":{"codec":"prores_raw"}},"attempts":3}"#,
    }
    StudioCampaignProgress {
        name: "studio.campaign.progress",
        family: Studio,
        progress: true,
        description: "Progress of a multi-asset campaign generation.",
        example: r#"{"campaign_id":"cmp_88","client_id":"cli_acme","progress":{"sequence":"12","completed":24,"total":60,"failed":1}}"#,
    }
    StudioCampaignCompleted {
        name: "studio.campaign.completed",
        family: Studio,
        progress: false,
        description: "A multi-asset campaign generation finished.",
        example: r#"{"campaign_id":"cmp_88","client_id":"cli_acme","asset_count":60,"assets":[{"id":"ast_31","url":"https://cdn.posternity.example/ast_31.png","mime_type":"image/png","width":1080,"height":1350}]}"#,
    }
    StudioCampaignDelivered {
        name: "studio.campaign.delivered",
        family: Studio,
        progress: false,
        description: "Campaign assets were delivered to the client's folders.",
        example: r#"{"campaign_id":"cmp_88","client_id":"cli_acme","folder_id":"fld_2","folder_url":"https://studio.posternity.example/folders/fld_2","asset_count":60}"#,
    }
    StudioReviewRequested {
        name: "studio.review.requested",
        family: Studio,
        progress: false,
        description: "Content is ready for review.",
        example: r#"{"review_id":"rev_14","campaign_id":"cmp_88","client_id":"cli_acme","asset_ids":["ast_31","ast_32"],"review_url":"https://studio.posternity.example/reviews/rev_14","due_at":"2026-12-01T17:00:00Z"}"#,
    }
    StudioApprovalGranted {
        name: "studio.approval.granted",
        family: Studio,
        progress: false,
        description: "A client approved a template or design.",
        example: r#"{"approval_id":"apr_3","review_id":"rev_14","client_id":"cli_acme","subject":"APPROVAL_SUBJECT_DESIGN","subject_id":"dsn_5","approved_by":"jane@acme.example","comment":"Ship it."}"#,
    }
    StudioApprovalRevisionRequested {
        name: "studio.approval.revision_requested",
        family: Studio,
        progress: false,
        description: "A client asked for changes to a template or design.",
        example: r#"{"approval_id":"apr_4","review_id":"rev_14","client_id":"cli_acme","subject":"APPROVAL_SUBJECT_TEMPLATE","subject_id":"tpl_8","requested_by":"jane@acme.example","comment":"Logo larger, please.","revision":2}"#,
    }
    StudioBatchProgress {
        name: "studio.batch.progress",
        family: Studio,
        progress: true,
        description: "Progress of a batch image generation.",
        example: r#"{"batch_id":"bat_61","client_id":"cli_acme","campaign_id":"cmp_88","progress":{"sequence":"3","completed":150,"total":500,"failed":0,"estimated_completion_at":"2026-11-26T23:10:00Z"}}"#,
    }
    StudioBrandCompliancePassed {
        name: "studio.brand_compliance.passed",
        family: Studio,
        progress: false,
        description: "Content meets the brand guidelines.",
        example: r#"{"check_id":"bc_100","asset_id":"ast_31","client_id":"cli_acme","guideline_set_id":"gl_acme_2026"}"#,
    }
    StudioBrandComplianceViolated {
        name: "studio.brand_compliance.violated",
        family: Studio,
        progress: false,
        description: "Content violates the brand guidelines and is flagged for manual review.",
        example: r#"{"check_id":"bc_101","asset_id":"ast_32","client_id":"cli_acme","guideline_set_id":"gl_acme_2026","violations":[{"rule_id":"logo_clear_space","description":"The logo needs 24 px of clear space.","severity":"VIOLATION_SEVERITY_MEDIUM"}],"manual_review_required":true}"#,
    }
    StudioAssetsOrganized {
        name: "studio.assets.organized",
        family: Studio,
        progress: false,
        description: "Generated content was filed into client folders.",
        example: r#"{"client_id":"cli_acme","folder_id":"fld_2","folder_path":"/Acme/Winter 2026/Social","asset_ids":["ast_31","ast_32"]}"#,
    }
    MapContentCompleted {
        name: "map.content.completed",
        family: Map,
        progress: false,
        description: "Location-specific content generation completed.",
        example: r#"{"content_id":"mc_7","location_id":"loc_paris_11","location":{"latitude":48.8589,"longitude":2.3795},"region_code":"FR-IDF","assets":[{"id":"ast_70","url":"https://cdn.posternity.example/ast_70.jpg","mime_type":"image/jpeg","width":2048,"height":1365}]}"#,
    }
    MapGalleryUpdated {
        name: "map.gallery.updated",
        family: Map,
        progress: false,
        description: "A geographic gallery was updated with new content.",
        example: r#"{"gallery_id":"gal_eu","location_id":"loc_paris_11","region_code":"FR-IDF","added_asset_ids":["ast_70"],"removed_asset_ids":[],"total_assets":118}"#,
    }
    MapContentCulturallyAdapted {
        name: "map.content.culturally_adapted",
        family: Map,
        progress: false,
        description: "Content was culturally adapted for a specific region.",
        example: r#"{"content_id":"mc_7","source_region_code":"FR-IDF","target_region_code":"JP-13","locale":"ja-JP","adaptations":["script","color_palette"],"adapted_asset":{"id":"ast_71","url":"https://cdn.posternity.example/ast_71.jpg","mime_type":"image/jpeg"}}"#,
    }
    MapRegionProgress {
        name: "map.region.progress",
        family: Map,
        progress: true,
        description: "Progress of content generation in one region of a multi-region job.",
        example: r#"{"job_id":"mrj_4","region_code":"DE-BY","progress":{"sequence":"7","completed":40,"total":120,"failed":2}}"#,
    }
    MapRegionCompleted {
        name: "map.region.completed",
        family: Map,
        progress: false,
        description: "One region of a multi-region job completed.",
        example: r#"{"job_id":"mrj_4","region_code":"DE-BY","asset_count":118,"remaining_region_codes":["AT-9","CH-ZH"]}"#,
    }
    MapRecommendationsReady {
        name: "map.recommendations.ready",
        family: Map,
        progress: false,
        description: "Location-based content recommendations are ready.",
        example: r#"{"recommendation_set_id":"rs_12","location_id":"loc_paris_11","location":{"latitude":48.8589,"longitude":2.3795},"region_code":"FR-IDF","recommendations":[{"content_id":"mc_7","score":0.93,"reason":"popular in nearby galleries"}]}"#,
    }
    MapAnalyticsUpdated {
        name: "map.analytics.updated",
        family: Map,
        progress: false,
        description: "Geographic usage statistics were updated.",
        example: r#"{"report_id":"rpt_2026_11","period_start":"2026-11-01T00:00:00Z","period_end":"2026-11-26T00:00:00Z","regions":[{"region_code":"FR-IDF","views":"183220","downloads":"9120","shares":"1402"}]}"#,
    }
    MapCulturalReviewRequired {
        name: "map.cultural_review.required",
        family: Map,
        progress: false,
        description: "Content needs a manual review for cultural sensitivity.",
        example: r#"{"review_id":"crv_9","content_id":"mc_7","region_code":"JP-13","concerns":["gesture"],"review_url":"https://maps.posternity.example/reviews/crv_9"}"#,
    }
    WebhookTest {
        name: "webhook.test",
        family: Webhook,
        progress: false,
        description: "A test event, sent only by the test endpoint to check a receiver's setup.",
        example: r#"{"subscription_id":"sub_01JDEMO","message":"Hello from Posternity Dispatch."}"#,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn catalog_has_the_25_types_of_the_design_once_each() {
        assert_eq!(CATALOG.len(), 25);
        let names: HashSet<_> = type_names().collect();
        assert_eq!(names.len(), 25, "duplicate type names");
        let kinds: HashSet<_> = CATALOG.iter().map(|t| t.payload).collect();
        assert_eq!(kinds.len(), 25, "two types share a payload kind");
    }

    #[test]
    fn family_is_the_first_segment_of_the_name() {
        for event_type in CATALOG {
            let first = event_type.name.split('.').next().unwrap_or_default();
            assert_eq!(first, event_type.family.as_str(), "{}", event_type.name);
        }
    }

    #[test]
    fn progress_types_are_exactly_those_named_progress_and_carry_a_sequence() {
        let progress: Vec<_> = CATALOG
            .iter()
            .filter(|t| t.progress)
            .map(|t| t.name)
            .collect();
        assert_eq!(
            progress,
            [
                "studio.campaign.progress",
                "studio.batch.progress",
                "map.region.progress"
            ]
        );
        for event_type in CATALOG.iter().filter(|t| t.progress) {
            let example: serde_json::Value =
                serde_json::from_str(event_type.example_data).expect("example is JSON");
            assert!(
                example["progress"]["sequence"].is_string(),
                "{}",
                event_type.name
            );
        }
    }

    #[test]
    fn every_example_parses_into_its_own_payload_kind() {
        for event_type in CATALOG {
            let payload = event_type
                .example_payload()
                .unwrap_or_else(|e| panic!("{}: {e}", event_type.name));
            assert_eq!(PayloadKind::of(&payload), event_type.payload);
            assert_eq!(event_type.payload.event_type().name, event_type.name);
        }
    }

    #[test]
    fn lookup_finds_known_names_only() {
        assert_eq!(
            lookup("map.region.completed").map(|t| t.family),
            Some(Family::Map)
        );
        assert!(lookup("map.region").is_none());
        assert!(lookup("Image.generation.started").is_none());
    }

    #[test]
    fn domain_topics_exist_for_published_families_only() {
        assert_eq!(
            Family::Studio.domain_topic().as_deref(),
            Some("posternity.events.studio")
        );
        assert_eq!(Family::Webhook.domain_topic(), None);
        for family in Family::PUBLISHED {
            assert!(family.domain_topic().is_some());
        }
    }

    #[test]
    fn payload_from_json_names_an_unknown_field() {
        let kind = lookup("webhook.test").expect("known").payload;
        let err = kind
            .payload_from_json(serde_json::json!({"subscription_id": "sub_1", "colour": "red"}))
            .expect_err("unknown field must be refused");
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn payload_errors_start_with_the_field_path() {
        let kind = lookup("image.generation.completed").expect("known").payload;
        let err = kind
            .payload_from_json(serde_json::json!({"images": [{"width": "wide"}]}))
            .expect_err("width must be a number");
        assert!(err.to_string().starts_with("images[0].width: "), "{err}");
    }
}
