//! Placeholder: being written (tunnel benchmarks).
fn main() {
    eprintln!("tunnel benchmark not written yet");
    std::process::exit(1);
}
