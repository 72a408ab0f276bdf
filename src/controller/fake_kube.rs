//! An in-process fake of the Kubernetes API, enough for one reconcile pass: objects kept by
//! path, GET, status patches (merged into the object), Event writes, and a log of every request.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};

/// The fake's objects and request log.
#[derive(Default)]
pub struct Store {
    /// Objects by API path (`/api/v1/namespaces/ns/secrets/name`).
    pub objects: BTreeMap<String, Value>,
    /// `METHOD path` of every request.
    pub requests: Vec<String>,
}

/// A handle on the fake API.
#[derive(Clone, Default)]
pub struct FakeKube {
    pub store: Arc<Mutex<Store>>,
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

fn not_found(path: &str) -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                "message": format!("{path} not found"), "code": 404}),
    )
}

impl FakeKube {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores an object (serialised) at its API path.
    pub fn put(&self, path: &str, object: &impl serde::Serialize) {
        let value = serde_json::to_value(object).unwrap_or(Value::Null);
        self.lock().objects.insert(path.to_string(), value);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// A client whose every request is answered by this fake.
    pub fn client(&self) -> Client {
        let this = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let this = this.clone();
            async move { Ok::<_, Infallible>(this.handle(req).await) }
        });
        Client::new(service, "default")
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let body = req.into_body().collect_bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut store = self.lock();
        store.requests.push(format!("{method} {path}"));
        if path.contains("/events") {
            return respond(if method == Method::POST { StatusCode::CREATED } else { StatusCode::OK }, &body);
        }
        match method {
            Method::GET => match store.objects.get(&path) {
                Some(obj) => respond(StatusCode::OK, obj),
                None => not_found(&path),
            },
            Method::PATCH if path.ends_with("/status") => {
                let object_path = path.trim_end_matches("/status").to_string();
                let Some(obj) = store.objects.get_mut(&object_path) else { return not_found(&path) };
                if let Some(status) = body.get("status") {
                    obj["status"] = status.clone();
                }
                respond(StatusCode::OK, obj)
            }
            _ => respond(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 405,
                        "message": format!("the fake does not serve {method} {path}")}),
            ),
        }
    }
}
