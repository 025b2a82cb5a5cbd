fn main() -> std::process::ExitCode {
    tlsgate::cli::run()
}
