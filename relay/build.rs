// `sqlx::migrate!` embeds the migration files at compile time; rebuild when
// one is added or changed, or the binary would ship stale migrations.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
