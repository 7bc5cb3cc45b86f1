//! Client addresses: the gateway replaces whatever `X-Forwarded-For` a client sends, and Haven
//! believes the header only from the peers in `trusted_proxies`.

use crate::fixture::{Gateway, Options, haven_log_line};
use crate::helpers::{self, TestApp};

const SPOOF: &str = "6.6.6.6";

/// The `client_address` Haven logged for a request it answered with `request_id`.
async fn logged_client(app: &TestApp, request_id: &str) -> String {
    let line = haven_log_line(app, request_id).await;
    line["span"]["client_address"]
        .as_str()
        .unwrap_or_else(|| panic!("no client_address: {line}"))
        .to_owned()
}

/// A request straight to Haven (not through nginx) from 127.0.0.1 with a forged header.
async fn direct_spoofed(app: &TestApp) -> String {
    let resp = app
        .send(
            app.client
                .get(format!("{}/fhir/metadata", app.root))
                .header("x-forwarded-for", SPOOF),
        )
        .await;
    resp.assert_status(200);
    logged_client(app, resp.header("x-request-id").unwrap()).await
}

/// Through the gateway with forged forwarding headers; the address Haven logged.
async fn through_gateway_spoofed(gw: &Gateway) -> String {
    let resp = gw
        .curl(
            "/fhir/metadata",
            &[
                "-H",
                &format!("X-Forwarded-For: {SPOOF}"),
                "-H",
                &format!("Forwarded: for={SPOOF}"),
            ],
        )
        .await;
    resp.assert_status(200);
    logged_client(&gw.app, resp.header("x-request-id").unwrap()).await
}

#[tokio::test]
async fn the_gateway_overwrites_forged_addresses() {
    // Haven trusts 127.0.0.1, nginx's address: nginx's X-Forwarded-For ($remote_addr) wins.
    let gw = Gateway::start().await;
    assert_eq!(through_gateway_spoofed(&gw).await, "127.0.0.1");
    // The same Haven believes anything from a trusted peer, which is why only the gateway's
    // address belongs in trusted_proxies (and why --proxy-bind is better on a shared host).
    assert_eq!(direct_spoofed(&gw.app).await, SPOOF);

    // A Haven that trusts no one ignores the header entirely.
    let untrusting = helpers::spawn_app().await;
    assert_eq!(direct_spoofed(&untrusting).await, "127.0.0.1");
}

#[tokio::test]
async fn with_proxy_bind_local_processes_cannot_forge_either() {
    // nginx connects to Haven from 127.0.0.2, the only trusted address; another local process
    // connects from 127.0.0.1 and so cannot choose its logged address.
    let gw = Gateway::start_with(Options {
        trusted_proxies: "127.0.0.2",
        proxy_bind: Some("127.0.0.2"),
        ..Options::default()
    })
    .await;
    assert_eq!(through_gateway_spoofed(&gw).await, "127.0.0.1");
    assert_eq!(direct_spoofed(&gw.app).await, "127.0.0.1");
}
