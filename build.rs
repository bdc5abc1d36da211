//! The committed task models are found through this crate's source path, compiled in with
//! `env!("CARGO_MANIFEST_DIR")`, and every clone builds into one shared target folder
//! (`scripts/env.sh`). Cargo does not track that path: a clone whose files are older than another
//! clone's build would reuse binaries pointing at the other clone's models. The scripts set
//! `CONCORD_SOURCE_DIR` to the clone they run in; a change of it rebuilds the crate.
fn main() {
    println!("cargo:rerun-if-env-changed=CONCORD_SOURCE_DIR");
    println!("cargo:rerun-if-changed=build.rs");
}
