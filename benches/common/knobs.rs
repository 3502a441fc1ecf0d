//! Command-line and environment sizes shared by the bench binaries:
//! defaults, then `--quick`, then `STRATA_BENCH_*` variables, then flags
//! (`--flag N` or `--flag=N`).

use anyhow::{Context, Result};

/// A size: its flag, its environment variable, and a line of help.
pub type Knob = (&'static str, &'static str, &'static str);

/// The usage text of bench `bench`.
pub fn usage(bench: &str, knobs: &[Knob]) -> String {
    let mut u = format!("usage: cargo bench --bench {bench} -- [--quick] [--FLAG N]...\n");
    for (flag, var, help) in knobs {
        u += &format!("  {flag:<16} {var:<28} {help}\n");
    }
    u
}

/// Parses the sizes: `defaults(quick)` gives the starting point, and `set`
/// applies one flag's raw value. Prints the usage and exits on `--help`.
pub fn parse<S>(
    bench: &str,
    knobs: &[Knob],
    defaults: impl FnOnce(bool) -> S,
    set: impl Fn(&mut S, &str, &str) -> Result<()>,
) -> Result<S> {
    // cargo passes `--bench` to harness-less benches; it means nothing here.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let usage = || usage(bench, knobs);
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", usage());
        std::process::exit(0);
    }
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("STRATA_BENCH_QUICK").is_ok_and(|v| v == "1");
    let mut s = defaults(quick);
    for (flag, var, _) in knobs {
        if let Ok(v) = std::env::var(var) {
            set(&mut s, flag, &v).with_context(|| format!("from {var}"))?;
        }
    }
    let mut it = args.iter().filter(|a| *a != "--quick");
    while let Some(a) = it.next() {
        let (flag, value) = match a.split_once('=') {
            Some((f, v)) => (f.to_string(), v.to_string()),
            None => (
                a.clone(),
                it.next()
                    .with_context(|| format!("{a} needs a value\n{}", usage()))?
                    .clone(),
            ),
        };
        set(&mut s, &flag, &value).with_context(usage)?;
    }
    Ok(s)
}
