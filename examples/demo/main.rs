//! The showcase: an axum server limited by sluicegate, loaded by itself over loopback HTTP,
//! with a table and a chart of what was admitted.
//!
//! ```text
//! cargo run --release --example demo                      # 28 s of load, then a table and a chart
//! cargo run --release --example demo -- --quick           # the same story in 2.8 s
//! cargo run --release --example demo -- --serve         # serve only (prints its address and curl lines)
//! ```
//!
//! - `GET /api`: absolute strategy, keyed by `x-api-key`; `pro_` keys 50 per 10 s, other
//!   keys 5; no key is `401`. Over the limit: `429` with `Retry-After` and the IETF
//!   `RateLimit` / `RateLimit-Policy` fields.
//! - `GET /feed`: suppressed strategy, keyed by client IP, 5/s over a 10 s window, hard limit
//!   factor 1.5. Past the capacity a share of requests is shed (`503` with
//!   `x-suppression-factor`) so the admitted rate settles at the limit; past the hard limit
//!   everything is shed.
//! - `GET /search`: two absolute limits together, keyed by `x-api-key` (401 without):
//!   `burst` 3 per 1 s and `minute` 10 per 60 s, in 100 ms groups. A request refused by one
//!   counts in neither; its 429 lists both policies, and `Retry-After` covers the wait until
//!   both admit.
//! - `GET /health`: not limited.
//!
//! The load runs in phases: below the limit, at it, 1.3x (under `/feed`'s hard limit), 3x
//! (over it), and back below the limit. Options: `--out PATH`
//! (where the SVG goes; default `target/sluicegate-demo.svg`), `--quick`, `--no-progress`,
//! `--serve [--addr 127.0.0.1:PORT]` (default: the `PORT` variable, or any free port),
//! `--max-keys N` (the limiter's key budget: at most `N` keys held, new keys past it refused), and with
//! the `redis-tokio` feature `--redis [URL]` (the Redis provider) and `--hybrid` (the hybrid
//! provider); both use `URL`, else `SLUICEGATE_REDIS_URL`, else `redis://127.0.0.1:6379/`.

mod app;
mod load;
mod report;
mod run;

use std::net::SocketAddr;
use std::path::PathBuf;

use load::{Exchange, PRO_KEY, Route, SEARCH_KEY, Scenario};
use run::Store;

/// What the command line asked for.
#[derive(Debug)]
struct Args {
    quick: bool,
    serve: bool,
    progress: bool,
    addr: SocketAddr,
    out: PathBuf,
    provider: Store,
    /// `--max-keys N`: the server's key budget.
    max_keys: Option<usize>,
}

const USAGE: &str = "usage: demo [--quick] [--no-progress] [--out PATH] [--serve [--addr 127.0.0.1:PORT]] [--redis [URL]] [--hybrid] [--max-keys N]";

fn parse_args() -> Result<Args, String> {
    // `--serve` listens on `PORT` if it is set, else on any free port.
    let port = match std::env::var("PORT") {
        Ok(p) => p.parse().map_err(|e| format!("PORT={p}: {e}"))?,
        Err(_) => 0,
    };
    let mut args = Args {
        quick: false,
        serve: false,
        progress: true,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        out: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/sluicegate-demo.svg"
        )),
        provider: Store::Local,
        max_keys: None,
    };
    let (mut redis, mut redis_url, mut hybrid) = (false, None, false);
    let mut it = std::env::args().skip(1).peekable();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--serve" => args.serve = true,
            "--no-progress" => args.progress = false,
            "--out" => args.out = PathBuf::from(value("--out")?),
            "--addr" => {
                let addr: SocketAddr = value("--addr")?
                    .parse()
                    .map_err(|e| format!("--addr: {e}; give 127.0.0.1:PORT"))?;
                if !addr.ip().is_loopback() {
                    return Err(format!(
                        "--addr {addr}: the demo serves on loopback only (127.0.0.1:PORT or [::1]:PORT)"
                    ));
                }
                args.addr = addr;
            }
            "--redis" => {
                redis = true;
                redis_url = it.next_if(|next| !next.starts_with("--"));
            }
            "--hybrid" => hybrid = true,
            "--max-keys" => args.max_keys = Some(parse_max_keys(&value("--max-keys")?)?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    args.provider = provider(redis, redis_url, hybrid)?;
    Ok(args)
}

/// `--max-keys N`: a whole number of keys, at least 1.
fn parse_max_keys(value: &str) -> Result<usize, String> {
    match value.replace('_', "").parse::<usize>() {
        Ok(0) => Err("--max-keys 0: the key budget must be at least 1 key".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!(
            "--max-keys {value:?}: {e}; give a whole number of keys, e.g. --max-keys 100000"
        )),
    }
}

/// The Redis server `--redis` and `--hybrid` use unless `--redis URL` or
/// `SLUICEGATE_REDIS_URL` names one.
#[cfg(feature = "redis-tokio")]
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

#[cfg(feature = "redis-tokio")]
fn provider(redis: bool, redis_url: Option<String>, hybrid: bool) -> Result<Store, String> {
    let url = || {
        redis_url
            .clone()
            .or_else(|| std::env::var("SLUICEGATE_REDIS_URL").ok())
            .unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned())
    };
    Ok(match (redis, hybrid) {
        (false, false) => Store::Local,
        (true, false) => Store::Redis(url()),
        (_, true) => Store::Hybrid(url()),
    })
}

#[cfg(not(feature = "redis-tokio"))]
fn provider(redis: bool, _redis_url: Option<String>, hybrid: bool) -> Result<Store, String> {
    if !redis && !hybrid {
        return Ok(Store::Local);
    }
    Err("--redis and --hybrid need the `redis-tokio` feature: \
         cargo run --release --example demo --features redis-tokio -- --redis [--hybrid]"
        .to_owned())
}

fn print_exchange(e: &Exchange, with_body: bool) {
    let fields: Vec<String> = e.fields.iter().map(|(n, v)| format!("{n}: {v}")).collect();
    let answer = format!("{} {}", e.status, fields.join("; "));
    println!("  {}\n    -> {}", e.curl, answer.trim_end());
    if with_body {
        println!("       {}", e.body.trim());
    }
}

async fn serve(args: &Args, scenario: &Scenario) -> Result<(), Box<dyn std::error::Error>> {
    let limiter = args.provider.limiter(scenario).await?;
    let app = app::app(limiter, scenario.limits, args.provider.layer_provider())?;
    let server = app::Server::start(app.router, args.addr).await?;
    let base = format!("http://{}", server.addr);
    println!(
        "sluicegate demo serving on {base} ({} provider); Ctrl-C stops it. Try:",
        args.provider.name()
    );
    println!("  curl -i {base}/health");
    println!("  curl -i {base}/api                                  # 401: send x-api-key");
    println!("  curl -i -H 'x-api-key: free_me' {base}/api          # the 6th in 10 s is 429");
    println!("  curl -i -H 'x-api-key: {PRO_KEY}' {base}/api         # 50 per 10 s");
    println!(
        "  for i in $(seq 80); do curl -s -o /dev/null -w '%{{http_code}} ' {base}/feed; done; echo"
    );
    println!(
        "  for i in 1 2 3 4; do curl -s -i -H 'x-api-key: me' {base}/search | grep -iE '^(HTTP|retry-after|ratelimit)'; done"
    );
    server.wait().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return std::process::ExitCode::from(2);
        }
    };
    match demo(&args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo failed: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn demo(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut scenario = if args.quick {
        Scenario::quick()
    } else {
        Scenario::full()
    };
    scenario.limits.max_keys = args.max_keys;
    if args.serve {
        return serve(args, &scenario).await;
    }
    let outcome = run::run(
        &scenario,
        &args.provider,
        &args.out,
        args.progress,
        |addr, tour| {
            println!(
                "sluicegate demo: axum on http://{addr}, {} provider, {} s window\n",
                args.provider.name(),
                scenario.limits.window_s
            );
            println!("What a client sees:");
            for (i, e) in tour.iter().enumerate() {
                print_exchange(e, e.status != 200 || i == 0);
            }
            println!(
                "\nLoad: {:.0} s in {} phases on /api (key {PRO_KEY}) and /feed, offered as multiples of {} requests/s, plus /health:",
                scenario.duration_s(),
                scenario.phases.len(),
                scenario.limits.limit_per_s()
            );
        },
    )
    .await?;
    println!("\n{}", outcome.table.trim_start());

    println!("First refusals under load:");
    for (route, status) in [(Route::Api, 429), (Route::Feed, 503)] {
        if let Some(s) = outcome
            .samples
            .iter()
            .find(|s| s.route == route && s.status == status)
        {
            let fields: Vec<String> = s.fields.iter().map(|(n, v)| format!("{n}: {v}")).collect();
            println!(
                "  {} at {:.1} s -> {status} {}",
                route.path(),
                s.sent_s,
                fields.join("; ")
            );
        }
    }
    println!("\n/search: burst 3 per 1 s and minute 10 per 60 s together (key {SEARCH_KEY}):");
    let mut refusals = std::collections::HashSet::new();
    for e in &outcome.search {
        // Each kind of answer in full once; the rest as one line.
        let fields: Vec<String> = e.fields.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        let kind = (e.status, e.body.contains("\"minute\""));
        if e.status != 200 && refusals.insert(kind) {
            print_exchange(e, true);
        } else {
            println!("    {} {}", e.status, fields.join("; "));
        }
    }
    let admitted = outcome.search.iter().filter(|e| e.status == 200).count();
    println!(
        "  {admitted} admitted of {} (the refused ones counted in neither limit)",
        outcome.search.len()
    );
    if outcome.provider_errors > 0 {
        println!(
            "\n{} decisions failed on the {} provider and were let through (the layers fail open)",
            outcome.provider_errors,
            args.provider.name()
        );
    }
    println!("\nchart: {}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_max_keys;

    #[test]
    fn max_keys_takes_a_whole_positive_number_and_says_what_is_wrong() {
        assert_eq!(parse_max_keys("100000"), Ok(100_000));
        assert_eq!(parse_max_keys("100_000"), Ok(100_000));
        let zero = parse_max_keys("0").unwrap_err();
        assert!(zero.contains("at least 1"), "{zero}");
        for bad in ["ten", "-5", "1.5", ""] {
            let err = parse_max_keys(bad).unwrap_err();
            assert!(
                err.contains("--max-keys") && err.contains("whole number"),
                "{bad}: {err}"
            );
        }
    }
}
