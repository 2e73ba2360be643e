//! `/openapi.json` as clients read it: what the gateway really answers
//! fits what it declares. (Outside validators and a fuzzer read it in
//! `validators.rs`.)

use std::path::Path;

use opbox::HostConfig;
use opbox::capabilities::Grants;
use opbox::capabilities::files::DirectoryGrant;
use opbox::capabilities::keyvalue::KeyvalueGrant;
use opbox::config::PluginConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::tools::python_with;
use crate::util::{SseReader, TestHost};

/// Every example plugin and the services, with the grants they need, and
/// no test fixtures.
pub(crate) async fn examples(dir: &Path) -> TestHost {
    TestHost::with_config(|config: &mut HostConfig| {
        config.plugins.clear();
        config.keyvalue_path = Some(dir.join("kv.redb"));
        let notes = dir.join("notes");
        std::fs::create_dir_all(&notes).unwrap();
        for (name, grants) in [
            (
                "kv",
                Grants {
                    keyvalue: Some(KeyvalueGrant {
                        max_bytes: 1 << 20,
                        max_keys: 100,
                    }),
                    ..Grants::default()
                },
            ),
            (
                "notes",
                Grants {
                    directory: Some(DirectoryGrant {
                        path: notes,
                        read_only: false,
                    }),
                    ..Grants::default()
                },
            ),
        ] {
            config.plugins.push(PluginConfig {
                path: opbox::bundled::built_plugin(name),
                reuse: None,
                name: None,
                tenant: None,
                grants,
                limits: Default::default(),
            });
        }
    })
    .await
}

/// A validator for the schema at `pointer` in `doc`, its references
/// resolved within `doc` as an OpenAPI client resolves them.
fn schema_at(doc: &Value, pointer: &str) -> jsonschema::Validator {
    assert!(
        doc.pointer(pointer).is_some(),
        "{pointer} is not in the document"
    );
    let mut root = doc.clone();
    root["$ref"] = json!(format!("#{pointer}"));
    jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{pointer}: {e}"))
}

fn assert_fits(schema: &jsonschema::Validator, what: &str, value: &Value) {
    let errors: Vec<String> = schema.iter_errors(value).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{what} does not fit: {errors:?}\n{value}"
    );
}

/// The examples' host, and its `/openapi.json` written to `dir`.
pub(crate) async fn document_file(dir: &Path) -> (TestHost, std::path::PathBuf) {
    let host = examples(dir).await;
    let (status, doc) = host.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let file = dir.join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    (host, file)
}

/// `events` hold three data events, each fitting `outputs`.
fn three_ticks_fit(outputs: &jsonschema::Validator, events: &[crate::util::SseEvent]) {
    let data: Vec<Value> = events
        .iter()
        .filter(|e| e.event == "message" || e.event.is_empty())
        .map(|e| e.json())
        .collect();
    assert_eq!(data.len(), 3, "{events:?}");
    for output in &data {
        assert_fits(outputs, "a tick", output);
    }
}

/// Each of `events` fits the per-event schema of the stream that `path`
/// answers (as SSE tools read events: an object of `event`, which is
/// `message` when the stream names none, `data` and `id`), and each
/// event's data fits the schema its branch says the data holds.
fn events_fit(doc: &Value, path: &str, events: &[crate::util::SseEvent]) {
    let pointer = format!(
        "/paths/{}/post/responses/200/content/text~1event-stream/schema",
        path.replace('/', "~1")
    );
    let schema = schema_at(doc, &pointer);
    for (n, event) in events.iter().enumerate() {
        let name = if event.event.is_empty() {
            "message"
        } else {
            &event.event
        };
        let mut parsed = json!({ "event": name, "data": event.data });
        if let Some(id) = &event.id {
            parsed["id"] = id.clone().into();
        }
        assert_fits(&schema, &format!("event {n}"), &parsed);
        let branch = ["message", "completed", "error"]
            .iter()
            .position(|b| *b == name)
            .unwrap_or_else(|| panic!("an event the document does not name: {name}"));
        let data = schema_at(
            doc,
            &format!("{pointer}/anyOf/{branch}/properties/data/contentSchema"),
        );
        assert_fits(&data, &format!("the data of event {n}"), &event.json());
    }
}

const CALL_BODY: &str = "/paths/~1call/post/requestBody/content/application~1json/schema";
const BATCH_OK: &str = "/paths/~1batch/post/responses/200/content/application~1json/schema";

#[tokio::test]
async fn every_example_operation_answers_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let host = examples(dir.path()).await;
    let (_, doc) = host.get("/openapi.json").await;
    // Each call, in an order that makes each succeed, and whether it does.
    let samples = [
        ("echo/echo", json!({"any": ["thing", 1, null]}), true),
        ("echo/fail", json!(null), false),
        ("textkit/stats", json!({"text": "to be or not to be"}), true),
        (
            "textkit/summary",
            json!({"text": "to be or not to be"}),
            true,
        ),
        ("services/list", json!(null), true),
        ("services/openapi", json!(null), true),
        ("services/schema", json!({"name": "kv/get"}), true),
        ("services/plugin", json!({"name": "notes"}), true),
        ("kv/set", json!({"key": "k", "value": {"n": 1}}), true),
        ("kv/get", json!({"key": "k"}), true),
        ("kv/increment", json!({"key": "hits", "by": 2}), true),
        ("kv/keys", json!(null), true),
        ("kv/delete", json!({"key": "k"}), true),
        (
            "notes/put",
            json!({"name": "plan", "text": "ship it"}),
            true,
        ),
        ("notes/get", json!({"name": "plan"}), true),
        ("notes/list", json!(null), true),
        ("notes/delete", json!({"name": "plan"}), true),
        // The lifecycle operations and the event feed need the scope
        // `admin` (or `plugins:write`): refused here.
        ("admin/install", json!({"wasm_base64": ""}), false),
        (
            "admin/replace",
            json!({"name": "kv", "wasm_base64": ""}),
            false,
        ),
        ("admin/remove", json!({"name": "kv"}), false),
        ("admin/list", json!(null), false),
        ("admin/show", json!({"name": "kv"}), false),
        ("admin/events", json!(null), false),
        ("admin/logs", json!({"name": "kv"}), false),
    ];
    let documented: Vec<&str> = doc.pointer(CALL_BODY).unwrap()["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|request| {
            request["properties"]["operation"]["const"]
                .as_str()
                .unwrap()
        })
        .collect();
    for name in &documented {
        assert!(
            samples.iter().any(|(op, _, _)| op == name),
            "no sample call for {name}"
        );
    }
    let request = schema_at(&doc, CALL_BODY);
    let ok = schema_at(&doc, "/components/schemas/CallOk");
    let error = schema_at(&doc, "/components/schemas/ErrorBody");
    let mut batch = Vec::new();
    for (op, input, succeeds) in samples {
        assert!(documented.contains(&op), "{op} is not documented");
        let body = json!({ "operation": op, "input": input });
        assert_fits(&request, op, &body);
        let (status, answer) = host.post("/call", &body).await;
        assert_eq!(status.is_success(), succeeds, "{op}: {answer}");
        let schema = if status.is_success() { &ok } else { &error };
        assert_fits(schema, op, &answer);
        batch.push(body);
    }
    // A batch answer, with an item that is not a call: an error in its
    // place, as documented.
    batch.push(json!({ "input": 1 }));
    let (status, answer) = host.post("/batch", &Value::Array(batch)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_fits(&schema_at(&doc, BATCH_OK), "the batch", &answer);
    let last = answer["results"].as_array().unwrap().last().unwrap();
    assert_eq!(last["error"]["code"], "INVALID_INPUT", "{last}");
    // A subscription's outputs fit its output schema.
    let outputs = schema_at(&doc, "/components/schemas/ticker.count.output");
    let events = host
        .subscribe("ticker/count", json!({ "to": 3 }))
        .await
        .collect()
        .await;
    three_ticks_fit(&outputs, &events);
    events_fit(&doc, "/subscribe", &events);
    // One that fails before it starts is still a stream, of one error
    // event, as declared.
    let events = host
        .subscribe("ticker/count", json!({ "to": "three" }))
        .await
        .collect()
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].event, "error", "{events:?}");
    events_fit(&doc, "/subscribe", &events);
}

#[tokio::test]
async fn request_bodies_say_what_the_gateway_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let host = examples(dir.path()).await;
    let (_, doc) = host.get("/openapi.json").await;
    let request = schema_at(&doc, CALL_BODY);
    for (body, accepted) in [
        (json!({ "operation": "echo/echo" }), true),
        (
            json!({ "operation": "echo/echo", "deadline_ms": 1000 }),
            true,
        ),
        // Unknown fields are refused.
        (
            json!({ "operation": "echo/echo", "input": 1, "extra": 1 }),
            false,
        ),
        // A missing input is null, which textkit/stats does not take.
        (json!({ "operation": "textkit/stats" }), false),
        (json!({ "input": 1 }), false),
    ] {
        let (status, answer) = host.post("/call", &body).await;
        assert_eq!(status.is_success(), accepted, "{body}: {answer}");
        assert_eq!(request.is_valid(&body), accepted, "the document on {body}");
    }
}

/// `POST /ops/{ns}/{op}` with `input` as the body (none for `None`).
async fn post_op(host: &TestHost, name: &str, input: Option<Value>) -> reqwest::Response {
    let request = host.client.post(host.url(&format!("/ops/{name}")));
    let request = match input {
        Some(input) => request.json(&input),
        None => request,
    };
    request.send().await.unwrap()
}

/// The schema of `name`'s route's answer with `status`.
fn answer_schema(doc: &Value, name: &str, status: &str) -> jsonschema::Validator {
    let path = name.replace('/', "~1");
    let answer = &doc["paths"][format!("/ops/{name}")]["post"]["responses"][status];
    match answer["$ref"].as_str() {
        // An error response, shared by every route.
        Some(reference) => {
            let pointer = reference.trim_start_matches('#');
            schema_at(doc, &format!("{pointer}/content/application~1json/schema"))
        }
        None => schema_at(
            doc,
            &format!(
                "/paths/~1ops~1{path}/post/responses/{status}/content/application~1json/schema"
            ),
        ),
    }
}

#[tokio::test]
async fn every_operation_has_a_route_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let host = examples(dir.path()).await;
    let (_, doc) = host.get("/openapi.json").await;
    // Each operation the caller can see has its path, named reversibly.
    let names: Vec<String> = doc.pointer(CALL_BODY).unwrap()["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["properties"]["operation"]["const"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .chain(["ticker/count".to_owned()])
        .collect();
    for name in &names {
        let post = &doc["paths"][format!("/ops/{name}")]["post"];
        assert_eq!(post["operationId"], name.replace('/', "."), "{name}");
        assert_eq!(post["tags"][0], name.split('/').next().unwrap());
        for status in ["200", "400", "404", "422", "429", "500", "504"] {
            assert!(post["responses"][status].is_object(), "{name} {status}");
        }
    }

    // The body is the input, the answer the output; the rest in headers.
    let answer = post_op(&host, "textkit/stats", Some(json!({"text": "a b a"}))).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let request_id = answer.headers()["opbox-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(request_id.len(), 32, "{request_id}");
    let cost: Value =
        serde_json::from_str(answer.headers()["opbox-cost"].to_str().unwrap()).unwrap();
    assert!(cost["wall_us"].as_u64().unwrap() > 0, "{cost}");
    let stats: Value = answer.json().await.unwrap();
    assert_eq!(stats["words"], 3, "{stats}");
    assert_fits(
        &answer_schema(&doc, "textkit/stats", "200"),
        "stats",
        &stats,
    );

    // An operation that takes no input takes no body.
    let answer = post_op(&host, "services/list", None).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let list: Value = answer.json().await.unwrap();
    assert_fits(
        &answer_schema(&doc, "services/list", "200"),
        "the list",
        &list,
    );

    // Failures: the usual error body, with the status its response says.
    for (name, input, status, code) in [
        ("echo/fail", None, StatusCode::BAD_REQUEST, "DEMO_FAILURE"),
        (
            "textkit/stats",
            Some(json!({"words": 1})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_INPUT",
        ),
        (
            "textkit/stats",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_INPUT",
        ),
        (
            "nosuch/op",
            Some(json!(1)),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        ),
        // A subscription that cannot start is refused with its status, not
        // with a stream of one error.
        (
            "ticker/count",
            Some(json!({"to": "many"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_INPUT",
        ),
    ] {
        let answer = post_op(&host, name, input).await;
        assert_eq!(answer.status(), status, "{name}");
        let header = answer.headers()["opbox-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        assert_eq!(body["request_id"], header, "{name}");
        if name != "nosuch/op" {
            let schema = answer_schema(&doc, name, status.as_str());
            assert_fits(&schema, name, &body);
        }
    }
    // A body that is not JSON.
    let answer = host
        .client
        .post(host.url("/ops/echo/echo"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);

    // A subscription streams its outputs, each fitting the output schema.
    let answer = post_op(&host, "ticker/count", Some(json!({"to": 3}))).await;
    assert!(answer.headers().contains_key("opbox-request-id"));
    let events = SseReader::of(answer).collect().await;
    let outputs = schema_at(&doc, "/components/schemas/ticker.count.output");
    three_ticks_fit(&outputs, &events);
    assert_eq!(events.last().unwrap().event, "completed", "{events:?}");
    events_fit(&doc, "/ops/ticker/count", &events);
}

#[tokio::test]
async fn the_deadline_header_shortens_a_call() {
    let host = TestHost::start().await;
    let sleep = |deadline: &'static str| {
        host.client
            .post(host.url("/ops/fixture-slow/sleep"))
            .header("opbox-deadline-ms", deadline)
            .json(&json!({"ms": 2_000}))
            .send()
    };
    let answer = sleep("50").await.unwrap();
    assert_eq!(answer.status(), StatusCode::GATEWAY_TIMEOUT);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "TIMEOUT", "{body}");
    for refused in ["soon", "0", "-5"] {
        let answer = sleep(refused).await.unwrap();
        assert_eq!(
            answer.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{refused}"
        );
        let body: Value = answer.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("opbox-deadline-ms"),
            "{body}"
        );
    }
    // The document's range holds: its largest value is taken, and past it
    // is refused, as the schema says, however many digits.
    let doc: Value = host
        .client
        .get(host.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let declared = &doc["components"]["parameters"]["Deadline"]["schema"];
    assert_eq!(declared["minimum"], 1, "{declared}");
    let largest = declared["maximum"].as_u64().unwrap();
    let send = |deadline: String| {
        host.client
            .post(host.url("/ops/fixture-slow/sleep"))
            .header("opbox-deadline-ms", deadline)
            .json(&json!({"ms": 10}))
            .send()
    };
    let answer = send(largest.to_string()).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    for long in [(largest + 1).to_string(), "9".repeat(30)] {
        let answer = send(long.clone()).await.unwrap();
        assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY, "{long}");
        let body: Value = answer.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("out of range"), "{body}");
    }
}

#[tokio::test]
async fn a_client_generated_from_the_document_calls_operations() {
    let dir = tempfile::tempdir().unwrap();
    let (host, file) = document_file(dir.path()).await;
    let python = python_with("openapi-python-client", "0.29.1");
    let bin = python.parent().unwrap();
    let package = dir.path().join("generated").join("opbox_client");
    // The generator formats its output with `ruff`, from its own venv.
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // `-m`: the venv's scripts name the interpreter where it was built.
    let output = std::process::Command::new(&python)
        .args([
            "-m",
            "openapi_python_client",
            "generate",
            "--meta",
            "none",
            "--path",
        ])
        .arg(&file)
        .arg("--output-path")
        .arg(&package)
        .env("PATH", &path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    // Only the admin uploads (a raw `application/wasm` body) are beyond it.
    for line in said.lines().filter(|l| l.starts_with("WARNING")) {
        assert!(line.contains("/admin/v1/plugins"), "{said}");
    }
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/all/scripts/generated_client.py");
    // Awaited: the host serves on this test's runtime meanwhile.
    let output = tokio::process::Command::new(&python)
        .arg(script)
        .arg(package.parent().unwrap())
        .arg(host.url(""))
        .arg("any-token")
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    let answers: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answers["stats"]["status"], 200, "{answers}");
    assert_eq!(answers["stats"]["words"], 6, "{answers}");
    assert_eq!(answers["stats"]["top"][0], "be", "{answers}");
    assert_eq!(answers["fail"]["status"], 400, "{answers}");
    assert_eq!(answers["fail"]["code"], "DEMO_FAILURE", "{answers}");
    assert_eq!(answers["fail"]["request_id"].as_str().unwrap().len(), 32);
}
