//! Re-running one test of this binary in a child process, for what is
//! process-wide: the environment (`RINGLOOP_BACKEND`, `RINGLOOP_DEBUG`), a
//! seccomp filter, an fd limit, signal handling, the cached io_uring probe.
//!
//! A test that needs a child is one `#[test]` with two sides, and there is
//! no separate child entry point that would pass, doing nothing, in a
//! normal run. Run normally, the test is the parent: it starts the binary
//! again, running only itself (`--exact`) with `RINGLOOP_TEST_CHILD` naming
//! it and a case, and fails unless the child exits 0 having printed that
//! case's marker (so a child that ran no test, or stopped early, fails its
//! parent). Started as its child, the test runs the child side for that
//! case instead, and prints the marker only if the side returned.
//!
//! ```ignore
//! const ME: ChildTest = ChildTest::new("forcing_the_proactor_is_an_error");
//!
//! #[test]
//! fn forcing_the_proactor_is_an_error() {
//!     if ME.child_side(|_case| assert!(EventLoop::new().is_err())) {
//!         return;
//!     }
//!     ME.run("seccomp", &[("RINGLOOP_BACKEND", "proactor")]);
//! }
//! ```

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Names the test a child runs, and its case: `"<test> <case>"`.
const VAR: &str = "RINGLOOP_TEST_CHILD";

/// How long [`ChildTest::run`] lets a child run before it kills it (a hang
/// guard: the children here take well under a second).
pub const CHILD_LIMIT: Duration = Duration::from_secs(60);

/// One test of this binary, as its own child process runs it.
#[derive(Clone, Copy, Debug)]
pub struct ChildTest(&'static str);

impl ChildTest {
    /// `test` is the test's exact name in this binary (its function's
    /// name for a top-level `#[test]`).
    pub const fn new(test: &'static str) -> ChildTest {
        ChildTest(test)
    }

    /// The case this process was started for, if it is this test's child.
    pub fn case(&self) -> Option<String> {
        let v = std::env::var(VAR).ok()?;
        let (test, case) = v.split_once(' ')?;
        (test == self.0).then(|| case.to_owned())
    }

    /// In this test's child: runs `side(case)`, prints the marker its
    /// parent waits for and returns true. Otherwise (a normal run) returns
    /// false: the caller goes on as the parent.
    pub fn child_side(&self, side: impl FnOnce(&str)) -> bool {
        let Some(case) = self.case() else {
            return false;
        };
        side(&case);
        println!("{}", marker(&case));
        std::io::stdout().flush().unwrap();
        true
    }

    /// This binary, set to run only this test as its child for `case`,
    /// with `env` added and `RINGLOOP_BACKEND` removed (a child that wants
    /// it says so in `env`).
    pub fn command(&self, case: &str, env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(std::env::current_exe().expect("the test binary's path"));
        cmd.args(["--exact", self.0, "--nocapture", "--test-threads=1"])
            .env(VAR, format!("{} {case}", self.0))
            .env_remove("RINGLOOP_BACKEND");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the child for `case` with its stdout piped, for a parent
    /// that talks to it while it runs (signals). The caller checks it.
    pub fn spawn(&self, case: &str, env: &[(&str, &str)]) -> Child {
        self.command(case, env)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the child")
    }

    /// Runs the child for `case` to its end (killing it past
    /// [`CHILD_LIMIT`]); fails unless it exited 0 and printed the case's
    /// marker. Returns its stdout.
    pub fn run(&self, case: &str, env: &[(&str, &str)]) -> String {
        let mut child = self
            .command(case, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the child");
        // Both pipes are read while the child runs, so it never blocks on
        // a full one.
        let collect = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                String::from_utf8_lossy(&v).into_owned()
            })
        };
        let out = collect(Box::new(child.stdout.take().unwrap()));
        let err = collect(Box::new(child.stderr.take().unwrap()));
        let status = wait_bounded(&mut child, CHILD_LIMIT);
        let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
        let test = self.0;
        assert!(
            status.success(),
            "child {test} ({case}) failed: {status}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
        assert!(
            stdout.contains(&marker(case)),
            "child {test} ({case}) exited 0 without finishing its case (is {test:?} this \
             test's exact name?)\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
        stdout
    }
}

/// What a child prints once its case's side returned.
fn marker(case: &str) -> String {
    format!("CHILD-OK [{case}]")
}

/// Waits for `child` at most `limit` (a hang guard); kills it and panics
/// past that.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
