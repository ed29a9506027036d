fn main() -> anyhow::Result<()> {
    geohost::cli::main()
}
