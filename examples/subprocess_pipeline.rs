//! A shell pipeline run through ringloop: `seq 1 N | ringloop | grep -c 7`.
//! ringloop starts both programs (`create_subprocess_exec`), copies the
//! first one's stdout into the second one's stdin with back-pressure
//! (`drain` after each chunk), reads the second one's answer and checks
//! it against the count computed here; both exit codes must be 0.
//!
//! `cargo run --release --example subprocess_pipeline -- --count 1000000`
//! (default 200000). Ctrl-C stops it (the children get the terminal's
//! SIGINT too) and exits 0.

mod common;

use std::process::ExitCode;

use log::info;
use ringloop::{Error, Stdio, SubprocessOptions, create_subprocess_exec};

const USAGE: &str = "usage: subprocess_pipeline [--count N]

  --count N   the numbers `seq` writes (default 200000)
  RUST_LOG=ringloop=debug shows the loop's own messages";

/// How many numbers in 1..=n contain the digit 7 (what `grep -c 7` says).
fn expected(n: u64) -> u64 {
    (1..=n).filter(|i| i.to_string().contains('7')).count() as u64
}

async fn pipeline(n: u64) -> ringloop::Result<()> {
    let mut seq = create_subprocess_exec(
        "seq",
        ["1".to_string(), n.to_string()],
        SubprocessOptions {
            stdin: Stdio::DevNull,
            stderr: Stdio::Inherit,
            ..Default::default()
        },
    )
    .await?;
    let mut grep = create_subprocess_exec(
        "grep",
        ["-c", "7"],
        SubprocessOptions {
            stderr: Stdio::Inherit,
            ..Default::default()
        },
    )
    .await?;
    info!("seq is pid {}, grep is pid {}", seq.pid(), grep.pid());
    let from = seq.stdout.take().expect("a pipe");
    let to = grep.stdin.take().expect("a pipe");
    // The copy: what seq writes goes to grep; drain() waits while grep's
    // pipe is full, so memory stays bounded whatever their speeds.
    let mut copied = 0u64;
    loop {
        let chunk = from.read(64 * 1024).await?;
        if chunk.is_empty() {
            break;
        }
        copied += chunk.len() as u64;
        to.write(chunk)?;
        to.drain().await?;
    }
    to.close();
    let (out, _) = grep.communicate(None::<Vec<u8>>).await?;
    let (seq_code, grep_code) = (seq.wait().await, grep.returncode());
    info!("copied {copied} bytes; seq exited {seq_code}, grep {grep_code:?}");
    if seq_code != 0 || grep_code != Some(0) {
        return Err(Error::InvalidState(format!(
            "a command failed: seq {seq_code}, grep {grep_code:?}"
        )));
    }
    let out = String::from_utf8_lossy(&out.unwrap_or_default())
        .trim()
        .to_owned();
    let want = expected(n);
    if out != want.to_string() {
        return Err(Error::InvalidState(format!(
            "grep -c 7 said {out:?}, expected {want}"
        )));
    }
    info!("grep -c 7 over 1..={n}: {out}, as expected");
    println!("{out}");
    Ok(())
}

fn main() -> ExitCode {
    common::init_logging();
    let args = match common::Args::parse(USAGE, &["--count"]) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let n = match args.get::<u64>(USAGE, "--count") {
        Ok(n) => n.unwrap_or(200_000),
        Err(code) => return code,
    };
    if args.serve.is_some() {
        eprintln!("error: subprocess_pipeline does not serve\n\n{USAGE}");
        return ExitCode::from(2);
    }
    common::exit(ringloop::run(pipeline(n)))
}
