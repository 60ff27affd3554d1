fn main() -> std::process::ExitCode {
    tokenmeter::cli::main()
}
