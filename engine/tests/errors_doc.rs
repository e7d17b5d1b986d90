//! `docs/errors.md` is generated from the error codes: this test fails when it is stale.
//! `FERRY_BLESS=1` rewrites it.

use std::path::Path;

#[test]
fn docs_errors_md_matches_the_codes() {
    let want = ferry_engine::control::errors::catalogue();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/errors.md");
    if std::env::var_os("FERRY_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let got = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "{} is stale: run FERRY_BLESS=1 cargo test -p ferry-engine --test errors_doc",
        path.display()
    );
}
