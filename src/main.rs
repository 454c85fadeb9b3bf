//! The `krab` binary: builds the runtime and hands over to `cli::main`.
fn main() -> std::process::ExitCode {
    krab::cli::main()
}
