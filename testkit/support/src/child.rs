//! An app instance run as a child process: the test binary re-run with only
//! its "child" test selected, configured through environment variables,
//! asked to stop by creating its stop file.
//!
//! The child is killed when its handle is dropped, so a failing test leaves
//! no instance behind.

use std::io::{BufRead, BufReader, Lines};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a child instance is told by its parent, through environment
/// variables (`STRATA_CHILD_*`).
#[derive(Clone, Debug)]
pub struct ChildArgs {
    /// The cluster's bootstrap servers.
    pub bootstrap: String,
    /// The application id.
    pub app: String,
    /// The instance's state directory.
    pub state: PathBuf,
    /// The file whose creation asks the instance to stop.
    pub stop: PathBuf,
}

impl ChildArgs {
    /// In the child: its arguments, with tracing set up to stderr (the
    /// instance's log file, filtered by `RUST_LOG`, without colours);
    /// `None` when the child test runs as an ordinary test, which then has
    /// nothing to do.
    pub fn enter() -> Option<ChildArgs> {
        let bootstrap = std::env::var("STRATA_CHILD_BOOTSTRAP").ok()?;
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
        let var = |name: &str| std::env::var(name).unwrap();
        Some(ChildArgs {
            bootstrap,
            app: var("STRATA_CHILD_APP"),
            state: PathBuf::from(var("STRATA_CHILD_STATE")),
            stop: PathBuf::from(var("STRATA_CHILD_STOP")),
        })
    }

    /// In the child: runs `running` (the engine's or the facade's app)
    /// until the stop file appears, calling `tick` every `every`
    /// meanwhile, then stops it with `shutdown` and prints
    /// `CHILD STOPPED`.
    pub fn run_until_stopped<R, E: std::fmt::Debug>(
        &self,
        running: R,
        every: Duration,
        mut tick: impl FnMut(&R),
        shutdown: impl FnOnce(R) -> Result<(), E>,
    ) {
        while !self.stop.exists() {
            std::thread::sleep(every);
            tick(&running);
        }
        shutdown(running).unwrap();
        println!("CHILD STOPPED");
    }
}

/// A command re-running this test binary with only `child_test` selected
/// (exact name, output shown, one thread), passing it `args`.
pub fn child_command(child_test: &str, args: &ChildArgs) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([child_test, "--exact", "--nocapture", "--test-threads=1"])
        .env("STRATA_CHILD_BOOTSTRAP", &args.bootstrap)
        .env("STRATA_CHILD_APP", &args.app)
        .env("STRATA_CHILD_STATE", &args.state)
        .env("STRATA_CHILD_STOP", &args.stop);
    cmd
}

/// A running child process, named in failure messages.
pub struct ChildProcess {
    name: String,
    child: Child,
    stop: PathBuf,
    stdout: Option<Lines<BufReader<ChildStdout>>>,
}

impl ChildProcess {
    /// Spawns `cmd` with its stdout piped (read with [`Self::wait_for`] or
    /// [`Self::collect_stdout`]) and its stderr to `stderr`; creating
    /// `stop` asks it to stop.
    pub fn spawn(
        name: impl Into<String>,
        cmd: &mut Command,
        stop: PathBuf,
        stderr: std::fs::File,
    ) -> ChildProcess {
        let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().unwrap();
        let stdout = Some(BufReader::new(child.stdout.take().unwrap()).lines());
        ChildProcess {
            name: name.into(),
            child,
            stop,
            stdout,
        }
    }

    /// Reads stdout up to the first line containing `marker` and returns
    /// what follows the marker on that line, trimmed (the test harness may
    /// have printed its own text before it); `None` if stdout ended first.
    /// The rest of stdout is then read and dropped in the background.
    pub fn wait_for(&mut self, marker: &str) -> Option<String> {
        let mut lines = self.stdout.take().expect("stdout not taken yet");
        let mut found = None;
        for line in lines.by_ref() {
            if let Some((_, rest)) = line.unwrap().split_once(marker) {
                found = Some(rest.trim().to_string());
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        found
    }

    /// Collects every stdout line, in the background, into the returned
    /// list.
    pub fn collect_stdout(&mut self) -> Arc<Mutex<Vec<String>>> {
        let lines = self.stdout.take().expect("stdout not taken yet");
        let log = Arc::new(Mutex::new(Vec::new()));
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        log
    }

    /// Creates the stop file and waits up to 60 s for a successful exit.
    ///
    /// # Panics
    ///
    /// If the process fails or does not stop in time (it is then killed).
    pub fn stop(mut self) {
        std::fs::write(&self.stop, b"stop").unwrap();
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "{} exited with {status}", self.name);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("{} did not stop within 60 s", self.name);
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the process to end on its own (a failpoint aborting it);
    /// true if it did within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Freezes the process (SIGSTOP) for `d`, then resumes it.
    pub fn freeze_for(&self, d: Duration) {
        let pid = self.child.id().to_string();
        for (sig, wait) in [("-STOP", d), ("-CONT", Duration::ZERO)] {
            let status = Command::new("kill").args([sig, &pid]).status().unwrap();
            assert!(status.success(), "kill {sig} {pid}");
            std::thread::sleep(wait);
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
