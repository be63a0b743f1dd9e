//! A running admin API on 127.0.0.1:0 against the real broker, on topics of its own, and a small
//! HTTP client that speaks to it as any client would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use dispatch_api::{Api, ApiConfig, TokenConfig};
use dispatch_e2e::{kafka_config, read_topic, record_count, unique_prefix};
use dispatch_http::HttpConfig;
use dispatch_kafka::KafkaConfig;
use dispatch_kafka::admin::TopicAdmin;
use dispatch_kafka::subscription_view::SubscriptionView;
use dispatch_kafka::subscription_writer::SubscriptionWriter;
use dispatch_kafka::topics::{TopicNames, TopicSettings, topic_specs};
use dispatch_proto::dispatch::v1::{AttemptRecord, DeadLetter, DeliveryTask, Subscription};
use dispatch_proto::prost::Message as _;
use dispatch_telemetry::Health;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rdkafka::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Upper bound of every wait; a healthy local broker needs well under a second.
pub const WAIT: Duration = Duration::from_secs(30);

/// Account A's token.
pub const TOKEN_A: &str = "token-account-a";
/// Account B's token.
pub const TOKEN_B: &str = "token-account-b";
/// The operator token (every account).
pub const TOKEN_OPS: &str = "token-operator";
/// Account A.
pub const ACCOUNT_A: &str = "acc_a";
/// Account B.
pub const ACCOUNT_B: &str = "acc_b";
/// The one delivery lane configured.
pub const LANE: &str = "acme";
/// A URL every subscription may use: literal loopback, allowed by the harness's HTTP settings
/// (nothing needs to listen: the API checks the URL, it does not call it).
pub const URL: &str = "http://127.0.0.1:9/hooks";

/// One answer of the API.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// The error code of an error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The field of an error body.
    pub fn field(&self) -> Option<String> {
        self.json()["error"]["field"].as_str().map(str::to_owned)
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an error answer: status, code and (if given) field.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str, field: Option<&str>) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        assert_eq!(self.code(), code, "{}", self.text);
        if let Some(field) = field {
            assert_eq!(self.field().as_deref(), Some(field), "{}", self.text);
        }
        assert!(
            self.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "an error has a message: {}",
            self.text
        );
    }
}

/// A request to send: method, path, token, body and extra headers.
pub struct Call {
    method: Method,
    path: String,
    token: Option<String>,
    body: Option<Vec<u8>>,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
}

impl Call {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Call {
            method,
            path: path.into(),
            token: None,
            body: None,
            content_type: None,
            headers: Vec::new(),
        }
    }

    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    pub fn json(mut self, body: &Value) -> Self {
        self.body = Some(body.to_string().into_bytes());
        self.content_type = Some("application/json");
        self
    }

    pub fn raw(mut self, body: impl Into<Vec<u8>>, content_type: Option<&'static str>) -> Self {
        self.body = Some(body.into());
        self.content_type = content_type;
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// A running API with its topics, a view of its own, and a client.
pub struct Harness {
    pub kafka: KafkaConfig,
    pub names: TopicNames,
    pub view: Arc<SubscriptionView>,
    pub writer: SubscriptionWriter,
    pub producer: FutureProducer,
    pub base: String,
    /// The health the API registered its read models with.
    pub health: Health,
    /// Where the API listens.
    pub addr: std::net::SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<dispatch_api::Result<()>>>,
}

impl Harness {
    /// Topics, view and API with the default test settings.
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, |_| {}).await
    }

    /// As [`Harness::start`], with the API configuration adjusted by `tweak`.
    pub async fn start_with(name: &str, tweak: impl FnOnce(&mut ApiConfig)) -> Self {
        let http = HttpConfig {
            allow_http: true,
            allow_addresses: vec!["127.0.0.1/32".to_owned()],
            ..HttpConfig::default()
        };
        Self::start_with_http(name, tweak, http).await
    }

    /// As [`Harness::start_with`], with these endpoint URL rules (the SSRF guard's allow-list)
    /// instead of the harness's, which allow `http://127.0.0.1`.
    pub async fn start_with_http(
        name: &str,
        tweak: impl FnOnce(&mut ApiConfig),
        http: HttpConfig,
    ) -> Self {
        let prefix = unique_prefix(&format!("api.{name}"));
        let kafka = kafka_config(&prefix);
        let names = TopicNames::new(&prefix);
        let settings = TopicSettings {
            domain_partitions: 1,
            delivery_partitions: 2,
            attempts_partitions: 2,
            dlq_partitions: 2,
            invalid_partitions: 1,
            lanes: vec![LANE.to_owned()],
            ..TopicSettings::default()
        };
        let wanted = [
            names.subscriptions(),
            names.deliveries(),
            names.lane(LANE),
            names.attempts(),
            names.dlq(),
        ];
        let specs: Vec<_> = topic_specs(&names, &settings, &[])
            .into_iter()
            .filter(|spec| wanted.contains(&spec.name))
            .collect();
        assert_eq!(specs.len(), wanted.len());
        TopicAdmin::new(&kafka)
            .expect("admin client")
            .ensure_topics(&specs)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create topics on {} ({e}); start a broker with `make kafka-up`",
                    kafka.bootstrap_servers
                )
            });
        let view = Arc::new(SubscriptionView::start(&kafka).expect("subscription view"));
        view.wait_caught_up(WAIT).await.expect("view caught up");

        let mut config = ApiConfig {
            tokens: vec![
                token(TOKEN_A, Some(ACCOUNT_A)),
                token(TOKEN_B, Some(ACCOUNT_B)),
                token(TOKEN_OPS, None),
            ],
            max_body_bytes: 4096,
            write_timeout_ms: 15_000,
            default_page_size: 10,
            max_page_size: 100,
            ..ApiConfig::default()
        };
        tweak(&mut config);
        let health = Health::new();
        let api = Api::build(
            &config,
            &kafka,
            &settings,
            &http,
            Arc::clone(&view),
            &health,
        )
        .await
        .expect("api builds");
        api.wait_ready(WAIT).await.expect("api ready");
        let listener = dispatch_api::bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind port 0");
        let server = api.with_listener(listener);
        let addr = server.local_addr().expect("address");
        let base = format!("http://{addr}");
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone()));
        Harness {
            writer: SubscriptionWriter::new(&kafka).expect("writer"),
            producer: kafka.reliable_producer().expect("producer"),
            kafka,
            names,
            view,
            base,
            addr,
            health,
            client: Client::builder(TokioExecutor::new()).build_http(),
            stop,
            task: Some(task),
        }
    }

    /// Sends a request and reads the whole answer.
    pub async fn send(&self, call: Call) -> Reply {
        let mut request = hyper::Request::builder()
            .method(call.method)
            .uri(format!("{}{}", self.base, call.path));
        if let Some(token) = &call.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(content_type) = call.content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        for (name, value) in &call.headers {
            request = request.header(*name, HeaderValue::from_str(value).expect("header value"));
        }
        let request = request
            .body(Full::new(Bytes::from(call.body.unwrap_or_default())))
            .expect("request");
        let response = tokio::time::timeout(WAIT, self.client.request(request))
            .await
            .expect("answer within the bound")
            .expect("HTTP exchange");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Reply {
            status,
            headers,
            text: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send(Call::new(Method::GET, path).token(token)).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.send(Call::new(Method::POST, path).token(token).json(body))
            .await
    }

    /// A POST without a body (rotate, test, replay).
    pub async fn post_empty(&self, path: &str, token: &str) -> Reply {
        self.send(Call::new(Method::POST, path).token(token)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.send(Call::new(Method::PATCH, path).token(token).json(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.send(Call::new(Method::DELETE, path).token(token))
            .await
    }

    /// Creates a subscription to [`URL`] for everything with `token`, and returns its body.
    pub async fn subscribe(&self, token: &str, extra: Value) -> Value {
        let mut body = json!({"url": URL, "event_types": ["**"]});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let reply = self.post("/v1/subscriptions", token, &body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply.json()
    }

    /// Every record of `topic` (waiting for `expected`), decoded as delivery tasks with keys.
    pub async fn tasks_on(&self, topic: &str, expected: usize) -> Vec<(String, DeliveryTask)> {
        let kafka = self.kafka.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            read_topic(&kafka, &topic, expected, WAIT)
                .iter()
                .map(|message| {
                    let key =
                        String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                    let task = DeliveryTask::decode(message.payload().unwrap_or_default())
                        .expect("a DeliveryTask");
                    (key, task)
                })
                .collect()
        })
        .await
        .expect("reader task")
    }

    /// The last record of `dispatch.subscriptions` under key `id` (`None` for a tombstone).
    pub async fn last_record(&self, id: &str) -> Option<Subscription> {
        let kafka = self.kafka.clone();
        let topic = self.names.subscriptions();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || {
            let total = usize::try_from(record_count(&kafka, &topic)).expect("a count");
            read_topic(&kafka, &topic, total, WAIT)
                .iter()
                .rfind(|message| message.key() == Some(id.as_bytes()))
                .and_then(|message| {
                    message
                        .payload()
                        .map(|value| Subscription::decode(value).expect("a Subscription"))
                })
        })
        .await
        .expect("reader task")
    }

    /// Produces a dead letter for `task` to the DLQ, as the sender would.
    pub async fn dead_letter(&self, task: &DeliveryTask, reason: &str) {
        let dead = DeadLetter {
            task: Some(task.clone()),
            attempts: task.attempts.clone(),
            reason: reason.to_owned(),
            dead_at: Some(dispatch_core::timestamp::from_system_time(
                std::time::SystemTime::now(),
            )),
        };
        self.produce(&self.names.dlq(), &task.delivery_id, &dead.encode_to_vec())
            .await;
    }

    /// Produces an attempt record, as the sender would.
    pub async fn attempt(&self, record: &AttemptRecord) {
        self.produce(
            &self.names.attempts(),
            &record.subscription_id,
            &record.encode_to_vec(),
        )
        .await;
    }

    async fn produce(&self, topic: &str, key: &str, value: &[u8]) {
        self.producer
            .send(
                FutureRecord::to(topic).key(key).payload(value),
                Timeout::After(WAIT),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    }

    /// Asks until `check` accepts the answer to GET `path` (or the bound passes), and returns
    /// the last answer.
    pub async fn poll(&self, path: &str, token: &str, check: impl Fn(&Reply) -> bool) -> Reply {
        let deadline = Instant::now() + WAIT;
        loop {
            let reply = self.get(path, token).await;
            if check(&reply) || Instant::now() >= deadline {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the API and waits for it.
    pub async fn stop(mut self) {
        self.stop_and_keep().await;
    }

    /// Stops the API and waits for it, keeping the harness (its health, its topics).
    pub async fn stop_and_keep(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("the API stops within the bound")
                .expect("API task")
                .expect("API ran without error");
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
        self.view.shutdown();
    }
}

fn token(token: &str, account_id: Option<&str>) -> TokenConfig {
    TokenConfig {
        token: token.to_owned(),
        account_id: account_id.map(str::to_owned),
    }
}

/// The subscription id of a create answer.
pub fn id_of(subscription: &Value) -> String {
    subscription["id"].as_str().expect("an id").to_owned()
}
