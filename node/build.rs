// `sqlx::migrate!` embeds the outbox's migration files at compile time;
// rebuild when one is added or changed, or the binary would ship stale ones.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
