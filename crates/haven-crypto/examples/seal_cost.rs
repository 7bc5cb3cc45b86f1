//! What sealing costs in CPU, apart from any disk or network: seal and open a typical stored
//! resource body (1.5 KB of JSON) many times under one data key, and wrap/unwrap a data key.
//!
//! `cargo run --release -p haven-crypto --example seal_cost` (figures in docs/PERFORMANCE.md).

use std::time::Instant;

use haven_crypto::AeadKey;

fn main() {
    let dek = AeadKey::generate().expect("random");
    let kek = AeadKey::generate().expect("random");
    let body = vec![b'x'; 1_536];
    let aad = b"haven-body-v1\0Observation\0abc\0\0\0\0\0\0\0\0\x01Patient/p1\0idididid";
    let n = 200_000u32;

    let started = Instant::now();
    let mut sealed = Vec::new();
    for _ in 0..n {
        sealed = dek.seal(aad, &body).expect("seal");
    }
    let seal_ns = started.elapsed().as_nanos() as f64 / f64::from(n);

    let started = Instant::now();
    for _ in 0..n {
        let open = dek.open(aad, &sealed).expect("open");
        assert_eq!(open.len(), body.len());
    }
    let open_ns = started.elapsed().as_nanos() as f64 / f64::from(n);

    let started = Instant::now();
    for _ in 0..n {
        let w = kek.wrap(b"Patient/p1", &dek).expect("wrap");
        let _ = kek.unwrap_key(b"Patient/p1", &w).expect("unwrap");
    }
    let wrap_ns = started.elapsed().as_nanos() as f64 / f64::from(n);

    println!(
        "1.5 KB body: seal {:.2} us, open {:.2} us; data key wrap+unwrap {:.2} us",
        seal_ns / 1000.0,
        open_ns / 1000.0,
        wrap_ns / 1000.0
    );
}
