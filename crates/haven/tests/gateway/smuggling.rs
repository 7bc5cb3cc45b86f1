//! Request smuggling: requests whose length two parsers could read differently are refused by
//! nginx and the connection closed, so Haven never sees them, nor what hides in their bodies.
//! (nginx re-frames every request it forwards with its own Content-Length; see nginx.conf.)

use std::time::Duration;

use crate::fixture::Gateway;

/// Each hides a second request (`GET /fhir/Patient/smuggled`) where one reading of the framing
/// puts it in the body and another makes it the next request on the connection.
const ATTEMPTS: [(&str, &str, u16); 5] = [
    (
        "Content-Length and Transfer-Encoding",
        "POST /fhir/Patient HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/fhir+json\r\n\
         Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\nGET /fhir/Patient/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n",
        400,
    ),
    (
        "duplicate Content-Length",
        "POST /fhir/Patient HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/fhir+json\r\n\
         Content-Length: 2\r\nContent-Length: 56\r\n\r\n\
         {}GET /fhir/Patient/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n",
        400,
    ),
    (
        "two Transfer-Encodings",
        "POST /fhir/Patient HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
         Transfer-Encoding: identity\r\n\r\n\
         0\r\n\r\nGET /fhir/Patient/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n",
        400,
    ),
    (
        "space before the colon",
        "POST /fhir/Patient HTTP/1.1\r\nHost: localhost\r\nContent-Length : 4\r\n\r\n\
         0\r\n\r\nGET /fhir/Patient/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n",
        400,
    ),
    (
        "unknown transfer coding",
        "POST /fhir/Patient HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\
         Transfer-Encoding: xchunked\r\n\r\n\
         0\r\n\r\nGET /fhir/Patient/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n",
        501,
    ),
];

#[tokio::test]
async fn ambiguous_framing_is_refused_before_haven() {
    let gw = Gateway::start().await;
    for (name, request, status) in ATTEMPTS {
        let answer = gw.raw_tls(request.as_bytes()).await;
        let status_lines: Vec<&str> = answer.lines().filter(|l| l.starts_with("HTTP/")).collect();
        assert_eq!(
            status_lines.len(),
            1,
            "{name}: exactly one answer: {answer}"
        );
        assert!(
            status_lines[0].starts_with(&format!("HTTP/1.1 {status} ")),
            "{name}: expected {status}: {answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{name}: the connection must be closed: {answer}"
        );
    }
    // Log lines arrive a little after responses: give a smuggled request time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        gw.haven_requests(),
        0,
        "Haven saw a request: {:?}",
        gw.app.logs()
    );
    let refused: Vec<_> = gw
        .access_log()
        .into_iter()
        .filter(|l| l["status"] == 400 || l["status"] == 501)
        .collect();
    assert_eq!(refused.len(), ATTEMPTS.len(), "{refused:?}");

    // The counting works: a well-formed request on the same gateway reaches Haven once.
    let body = r#"{"resourceType":"Patient"}"#;
    let request = format!(
        "POST /fhir/Patient HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/fhir+json\r\n\
         {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        gw.authorization(),
        body.len()
    );
    let answer = gw.raw_tls(request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 201 "), "{answer}");
    let _ = gw
        .app
        .wait_for_log(|l| l.contains("request completed"))
        .await;
    assert_eq!(gw.haven_requests(), 1);
}
