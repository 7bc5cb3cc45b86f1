//! The benchmark ceiling: a trivial axum handler returning a fixed Patient-sized JSON body.
//!
//! Same runtime, same HTTP stack, no work: what `bench/run` compares Haven's reads against.
//! Usage: `cargo run --release -p haven-http --example ceiling -- 127.0.0.1:18182`

use axum::Router;
use axum::http::header;
use axum::routing::get;

const PATIENT: &str = r#"{"resourceType":"Patient","id":"5b0c1a7e-7d3c-4c36-9d0b-2f3e4a5b6c7d","meta":{"versionId":"1","lastUpdated":"2026-11-28T20:00:00.000000Z"},"identifier":[{"system":"http://hospital.example.org/mrn","value":"MRN-000123"}],"active":true,"name":[{"use":"official","family":"Chalmers","given":["Peter","James"]}],"telecom":[{"system":"phone","value":"(03) 5555 6473","use":"work"}],"gender":"male","birthDate":"1974-12-25","address":[{"use":"home","line":["534 Erewhon St"],"city":"PleasantVille","postalCode":"3999"}]}"#;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18182".into());
    let app = Router::new().route(
        "/fhir/Patient/{id}",
        get(|| async { ([(header::CONTENT_TYPE, "application/fhir+json")], PATIENT) }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    println!("ceiling listening on {addr}");
    axum::serve(listener, app).await.expect("serve");
}
