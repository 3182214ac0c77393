//! include/sofa.h must be what cbindgen generates from src/capi/ with cbindgen.toml.
//! `SOFA_BLESS=1 cargo test --test capi_header` rewrites it.

use std::path::Path;

fn generate() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    // cbindgen follows mod.rs's `mod` declarations into the other files.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/capi/mod.rs"))
        .generate()
        .expect("cbindgen could not generate the header from src/capi/");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("header is UTF-8")
}

#[test]
fn header_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/sofa.h");
    let fresh = generate();
    if std::env::var("SOFA_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &fresh).expect("write include/sofa.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != fresh {
        let line = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(fresh.lines().count()));
        panic!(
            "include/sofa.h is stale (first difference at line {}); regenerate it with \
             `SOFA_BLESS=1 cargo test --test capi_header` and commit it",
            line + 1
        );
    }
}

#[test]
fn header_declares_every_entry_point() {
    let header = generate();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/capi");
    let mut src = String::new();
    for entry in std::fs::read_dir(&dir).expect("src/capi") {
        let path = entry.expect("src/capi entry").path();
        src += &std::fs::read_to_string(&path).expect("src/capi file");
    }
    let mut names = Vec::new();
    for line in src.lines() {
        if let Some(rest) = line.split("extern \"C\" fn ").nth(1) {
            names.push(rest.split('(').next().unwrap().trim().to_string());
        }
    }
    assert!(names.len() >= 20, "found only {names:?}");
    for name in names {
        assert!(
            name.starts_with("sofa_"),
            "{name}: C names start with sofa_"
        );
        assert!(
            header.contains(&format!("{name}(")),
            "{name} missing from the header"
        );
    }
    assert!(
        header.contains("SOFA_STATUS_OK = 0"),
        "status enum: OK must be 0"
    );
}
