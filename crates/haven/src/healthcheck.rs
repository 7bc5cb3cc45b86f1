//! `haven healthcheck [--ready]`: a dependency-free probe of `/healthz` (or `/readyz`), for
//! images without a shell or curl.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;

pub fn run(config: &Config, ready: bool) -> ExitCode {
    let path = if ready { "/readyz" } else { "/healthz" };
    match probe(config.listen, path) {
        Ok(()) => {
            println!("healthy");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("haven: unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe(mut addr: SocketAddr, path: &str) -> Result<(), String> {
    // A wildcard listen address is reached through loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let timeout = Duration::from_secs(3);
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let n = s
        .read(&mut buf)
        .map_err(|e| format!("no answer from {addr}: {e}"))?;
    let head = String::from_utf8_lossy(&buf[..n]);
    if head.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "{addr}{path} answered: {}",
            head.lines().next().unwrap_or("")
        ))
    }
}
