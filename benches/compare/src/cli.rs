//! What the compare binaries share on their command line: the logger and
//! usage errors.

/// Installs a logger on `RUST_LOG` (`info` by default, `RUST_LOG`'s
/// directives on top: `RUST_LOG=ringloop=debug` shows the loop's debug
/// messages).
pub fn init_logging() {
    let mut b = env_logger::Builder::new();
    b.filter_level(log::LevelFilter::Info);
    b.parse_env(env_logger::Env::default());
    let _ = b.try_init();
}

/// Prints what is wrong and the usage to stderr, and exits with status 2.
pub fn usage_error(msg: &str, usage: &str) -> ! {
    eprintln!("error: {msg}\n\n{usage}");
    std::process::exit(2)
}
