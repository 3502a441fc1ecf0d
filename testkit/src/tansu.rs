//! A throwaway Tansu broker on loopback.
//!
//! [`Tansu::start`] runs `tansu broker` with in-memory storage on a free port
//! of `127.0.0.1`, with its stdout and stderr going to a log file in a private
//! temporary directory, and returns once the port accepts TCP connections.
//! Dropping the handle kills the broker and removes the directory.
//!
//! As a safety net for when the handle
//! is never dropped (the test process is killed, even by `SIGKILL`, or the
//! handle lives in a `static`), each broker has a watchdog: a tiny `/bin/sh`
//! blocked reading a pipe whose write end only this process holds. When this
//! process goes away the pipe reaches end of file and the watchdog sends the
//! broker `SIGTERM`, so no broker outlives its test run. (Its temporary
//! directory does outlive it in that case.)

use std::ffi::OsString;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long [`Tansu::start`] waits for the port to accept connections.
/// (Tansu 0.6.0 is typically ready within 25-35 ms.)
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a start is retried when another process took the port first.
const START_ATTEMPTS: u32 = 3;
/// How long a CLI command may run. Tansu's CLI itself retries an unreachable
/// broker for about 24 s before giving up, so this is longer than that.
const CLI_TIMEOUT: Duration = Duration::from_secs(45);
/// Polling interval for process and port checks.
const POLL: Duration = Duration::from_millis(10);
/// How many log lines go into error messages.
const ERROR_LOG_LINES: usize = 40;

/// Environment variables tansu reads as defaults for its flags. They are
/// removed from the environment of every tansu process started here, so a
/// developer's shell cannot point the test broker somewhere else.
const TANSU_ENV: &[&str] = &[
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// The watchdog's `/bin/sh` script: waits for end of file on stdin (a pipe
/// from this process), then sends `SIGTERM` to the broker, whose pid is `$1`.
/// Stopping a broker normally kills the watchdog first, with `SIGKILL`, so it
/// never signals a pid that may have been reused.
const WATCHDOG: &str = r#"read -r _ignored; kill -TERM "$1" 2>/dev/null"#;

/// A running Tansu broker on `127.0.0.1`, with in-memory storage.
///
/// Each handle is its own broker with its own port and no topics; starting one
/// takes well under a second, so a broker per test is cheap. The handle is
/// `Send + Sync` and can also be shared (for example in an `Arc`).
///
/// Dropping the handle kills the broker (`SIGKILL`; it keeps nothing on disk),
/// waits for it, and deletes its log.
#[derive(Debug)]
pub struct Tansu {
    /// The broker process; declared first so it is stopped before `dir` is
    /// removed.
    process: Process,
    /// The tansu binary, also used for CLI commands.
    binary: PathBuf,
    /// The loopback port the broker listens on.
    port: u16,
    /// The broker's log (stdout and stderr).
    log: PathBuf,
    /// Counter naming the output files of CLI commands.
    commands: AtomicU64,
    /// Private directory for the log and CLI output.
    dir: tempfile::TempDir,
}

impl Tansu {
    /// Starts a broker and waits until it accepts TCP connections.
    ///
    /// The binary is, in order of preference: the path in `STRATA_TANSU`;
    /// `$STRATA_TOOLS_DIR/bin/tansu`; `$HOME/.cache/strata/tools/bin/tansu`
    /// (where `scripts/install-tansu.sh` puts it). If it is not there, the
    /// error says to run that script.
    ///
    /// The broker runs as
    /// `tansu broker --listener-url tcp://127.0.0.1:PORT
    /// --advertised-listener-url tcp://127.0.0.1:PORT --storage-engine memory://tansu/`
    /// on a port that was free a moment before; if another process takes the
    /// port first, the start is retried on a new port.
    ///
    /// # Errors
    /// [`Error::BinaryNotFound`] if the binary is missing;
    /// [`Error::BrokerExited`] or [`Error::StartTimeout`], each with the tail
    /// of the broker's log, if it does not come up within 30 s;
    /// [`Error::Io`] if a file, port or process cannot be set up.
    pub fn start() -> Result<Tansu> {
        let binary = locate(
            std::env::var_os("STRATA_TANSU"),
            std::env::var_os("STRATA_TOOLS_DIR"),
            std::env::var_os("HOME"),
        )?;
        Self::start_with(binary)
    }

    /// [`Tansu::start`] with a given binary.
    fn start_with(binary: PathBuf) -> Result<Tansu> {
        let dir = tempfile::Builder::new()
            .prefix("strata-tansu-")
            .tempdir()
            .map_err(|e| Error::io("creating a temporary directory for the tansu broker", e))?;

        let mut attempt = 1;
        loop {
            let log = dir.path().join(format!("broker-{attempt}.log"));
            match spawn_broker(&binary, &log) {
                Ok((process, port)) => {
                    return Ok(Tansu {
                        process,
                        binary,
                        port,
                        log,
                        commands: AtomicU64::new(0),
                        dir,
                    });
                }
                Err(Error::BrokerExited { log_tail, .. })
                    if attempt < START_ATTEMPTS && log_tail.contains("Address in use") =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The bootstrap address for Kafka clients: `"127.0.0.1:PORT"`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Freezes the broker (`SIGSTOP`) for `d`, then lets it go on
    /// (`SIGCONT`): clients see a broker that stops answering without
    /// closing connections, as in a long GC pause or a stalled host.
    ///
    /// # Errors
    /// [`Error::Io`] if a signal cannot be sent.
    pub fn pause_for(&self, d: Duration) -> Result<()> {
        let pid = self.process.broker.id().to_string();
        let signal = |sig: &str| -> Result<()> {
            let status = Command::new("kill")
                .args([sig, &pid])
                .status()
                .map_err(|e| Error::io(format!("kill {sig} {pid}"), e))?;
            if status.success() {
                Ok(())
            } else {
                Err(Error::io(
                    format!("kill {sig} {pid}"),
                    std::io::Error::other(format!("exited with {status}")),
                ))
            }
        };
        signal("-STOP")?;
        std::thread::sleep(d);
        signal("-CONT")
    }

    /// The port the broker listens on (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's URL as tansu's own CLI takes it: `"tcp://127.0.0.1:PORT"`.
    pub fn broker_url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// The file holding the broker's stdout and stderr (deleted on drop).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `n_lines` lines of the broker's log, for diagnostics.
    ///
    /// Never fails: if the log cannot be read, the text says so instead.
    pub fn log_tail(&self, n_lines: usize) -> String {
        tail_of(&self.log, n_lines)
    }

    /// Creates a topic with `partitions` partitions, by running
    /// `tansu topic create --broker tcp://127.0.0.1:PORT --partitions N -- NAME`.
    ///
    /// Tansu 0.6.0 itself accepts zero partitions and any name (even empty, or
    /// with spaces and slashes), which a real Kafka broker would refuse; so the
    /// name is checked against Kafka's rules (1 to 249 characters of
    /// `[A-Za-z0-9._-]`, not `.` or `..`) and `partitions` must be 1 to
    /// `i32::MAX`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a name or partition count that Kafka
    /// would reject; [`Error::CommandFailed`] (with tansu's output) if tansu
    /// refuses, e.g. because the topic already exists ("Topic with this name
    /// already exists."); [`Error::CommandTimeout`] if the command hangs.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        validate_topic_name(name)?;
        if partitions == 0 || i32::try_from(partitions).is_err() {
            return Err(Error::InvalidArgument(format!(
                "topic {name:?}: partitions must be between 1 and {}, got {partitions}",
                i32::MAX
            )));
        }
        let partitions = partitions.to_string();
        let url = self.broker_url();
        self.run_cli(&[
            "topic",
            "create",
            "--broker",
            &url,
            "--partitions",
            &partitions,
            "--",
            name,
        ])
        .map(drop)
    }

    /// Runs the tansu binary with `args`, with a bounded wait, and returns its
    /// stdout if it exits successfully.
    fn run_cli(&self, args: &[&str]) -> Result<String> {
        let n = self.commands.fetch_add(1, Ordering::Relaxed);
        let out_path = self.dir.path().join(format!("cli-{n}.out"));
        let err_path = self.dir.path().join(format!("cli-{n}.err"));
        let command = describe(&self.binary, args);

        let out = File::create(&out_path)
            .map_err(|e| Error::io(format!("creating {}", out_path.display()), e))?;
        let err = File::create(&err_path)
            .map_err(|e| Error::io(format!("creating {}", err_path.display()), e))?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        clean_env(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("running `{command}`"), e))?;

        let status = wait_bounded(&mut child, CLI_TIMEOUT)
            .map_err(|e| Error::io(format!("waiting for `{command}`"), e))?;
        let stdout = read_lossy(&out_path);
        let output = || {
            let stderr = read_lossy(&err_path);
            let joined = format!("{}\n{}", stdout.trim_end(), stderr.trim_end());
            joined.trim().to_owned()
        };
        match status {
            None => Err(Error::CommandTimeout {
                command,
                waited: CLI_TIMEOUT,
                output: output(),
            }),
            Some(status) if !status.success() => Err(Error::CommandFailed {
                command,
                status,
                output: output(),
            }),
            Some(_) => Ok(stdout),
        }
    }
}

impl Drop for Tansu {
    /// Stops the broker and waits for it to exit.
    fn drop(&mut self) {
        self.process.stop();
    }
}

/// The broker process and its watchdog; stopped when dropped (also on the
/// error paths of a start).
#[derive(Debug)]
struct Process {
    broker: Child,
    /// `/bin/sh` running [`WATCHDOG`]; its stdin is the pipe that keeps it
    /// waiting.
    watchdog: Option<Child>,
    stopped: bool,
}

impl Process {
    /// Kills and reaps the watchdog, then the broker. Idempotent.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        // SIGKILL the watchdog while its pipe is still open, so it dies inside
        // `read` without signalling anything.
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = self.broker.kill();
        let _ = self.broker.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds the tansu binary: `strata_tansu` if set, else
/// `tools_dir/bin/tansu`, else `home/.cache/strata/tools/bin/tansu`.
fn locate(
    strata_tansu: Option<OsString>,
    tools_dir: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf> {
    let non_empty = |v: Option<OsString>| v.filter(|s| !s.is_empty());
    let (path, origin) = if let Some(p) = non_empty(strata_tansu) {
        (PathBuf::from(p), "from STRATA_TANSU")
    } else if let Some(d) = non_empty(tools_dir) {
        (Path::new(&d).join("bin/tansu"), "from STRATA_TOOLS_DIR")
    } else if let Some(h) = non_empty(home) {
        (
            Path::new(&h).join(".cache/strata/tools/bin/tansu"),
            "the default location",
        )
    } else {
        return Err(Error::BinaryNotFound {
            looked: "neither STRATA_TANSU, STRATA_TOOLS_DIR nor HOME is set".to_owned(),
        });
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::BinaryNotFound {
            looked: format!("no file at {}, {origin}", path.display()),
        })
    }
}

/// Picks a port on 127.0.0.1 that is free right now.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::io("binding 127.0.0.1:0 to find a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::io("reading the address of a bound socket", e))?
        .port();
    Ok(port)
}

/// Spawns the broker and its watchdog on a free port, logging to `log`, and
/// waits until the port accepts connections.
fn spawn_broker(binary: &Path, log: &Path) -> Result<(Process, u16)> {
    let port = free_port()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let url = format!("tcp://{addr}");

    let stdout =
        File::create(log).map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
    let stderr = stdout
        .try_clone()
        .map_err(|e| Error::io(format!("duplicating the handle of {}", log.display()), e))?;
    let mut cmd = Command::new(binary);
    cmd.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
    ])
    .args(["--storage-engine", "memory://tansu/"])
    .stdin(Stdio::null())
    .stdout(stdout)
    .stderr(stderr);
    clean_env(&mut cmd);
    // A freshly written executable can be briefly "busy" (ETXTBSY) while
    // another thread's fork still holds its write handle: retry a little.
    let mut attempts = 0;
    let broker = loop {
        match cmd.spawn() {
            Ok(b) => break b,
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(Error::io(
                    format!("starting {} broker", binary.display()),
                    e,
                ));
            }
        }
    };
    let pid = broker.id().to_string();
    let mut process = Process {
        broker,
        watchdog: None,
        stopped: false,
    };
    let watchdog = Command::new("/bin/sh")
        .args(["-c", WATCHDOG, "strata-tansu-watchdog", &pid])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::io("starting /bin/sh as the tansu broker's watchdog", e))?;
    process.watchdog = Some(watchdog);

    let started = Instant::now();
    loop {
        let exited = |status: ExitStatus| Error::BrokerExited {
            addr: addr.to_string(),
            status,
            log_tail: tail_of(log, ERROR_LOG_LINES),
        };
        if let Some(status) = process
            .broker
            .try_wait()
            .map_err(|e| Error::io("checking on the tansu broker", e))?
        {
            return Err(exited(status));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(250)).is_ok() {
            // Connected; make sure it was our broker that accepted, not a
            // process that took the port while ours was failing to bind.
            sleep(POLL);
            match process.broker.try_wait() {
                Ok(None) => return Ok((process, port)),
                Ok(Some(status)) => return Err(exited(status)),
                Err(e) => return Err(Error::io("checking on the tansu broker", e)),
            }
        }
        if started.elapsed() >= START_TIMEOUT {
            process.stop();
            return Err(Error::StartTimeout {
                addr: addr.to_string(),
                waited: START_TIMEOUT,
                log_tail: tail_of(log, ERROR_LOG_LINES),
            });
        }
        sleep(POLL);
    }
}

/// Removes tansu's flag-default variables and turns off colour in its logs.
fn clean_env(cmd: &mut Command) {
    for var in TANSU_ENV {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1");
}

/// Waits up to `timeout` for `child`; `Ok(None)` means it is still running,
/// in which case it has been killed and reaped.
fn wait_bounded(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        sleep(POLL);
    }
}

/// Reads a file as text, replacing invalid UTF-8; a read error becomes text.
fn read_lossy(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<could not read {}: {e}>", path.display()),
    }
}

/// The last `n` lines of a file.
fn tail_of(path: &Path, n: usize) -> String {
    let text = read_lossy(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A command line for messages, quoting arguments that need it.
fn describe(binary: &Path, args: &[&str]) -> String {
    let mut s = binary.display().to_string();
    for arg in args {
        s.push(' ');
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
            s.push_str(&format!("{arg:?}"));
        } else {
            s.push_str(arg);
        }
    }
    s
}

/// Checks a topic name against Kafka's rules.
fn validate_topic_name(name: &str) -> Result<()> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty()
        || name.len() > 249
        || name == "."
        || name == ".."
        || !name.chars().all(legal)
    {
        return Err(Error::InvalidArgument(format!(
            "topic name {name:?} is not a legal Kafka topic name \
             (1 to 249 characters of [A-Za-z0-9._-], not \".\" or \"..\")"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
