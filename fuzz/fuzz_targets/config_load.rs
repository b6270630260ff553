//! Arbitrary bytes -> UTF-8 -> `bulkhead_config::from_str` -> `Snapshot::compile`.
//! Any input may be rejected with errors; none may panic, and every error
//! must carry a position (DESIGN §3: `file:line:col: what — how`).
#![no_main]

use bulkhead_core::Snapshot;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The loader reads the cert/key files a config names; keep the fuzzer
    // away from endless or special files (`/dev/zero`, `/proc/…`).
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    let config = match bulkhead_config::from_str(text, "fuzz.yaml", Path::new("/nonexistent")) {
        Ok(config) => config,
        Err(errors) => {
            check_errors(&errors);
            return;
        }
    };
    match Snapshot::compile(config) {
        Ok(snapshot) => {
            // The offline views must not panic either.
            let _ = snapshot.graph_view();
        }
        Err(errors) => check_errors(&errors),
    }
});

fn check_errors(errors: &bulkhead_config::ConfigErrors) {
    assert!(!errors.0.is_empty(), "a rejected config names its errors");
    for e in &errors.0 {
        assert!(
            e.pos.line >= 1 && e.pos.col >= 1,
            "error without a position: {e:?}"
        );
        let _ = e.to_string();
    }
}
