#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    openclaw_bridge::cli::main()
}
