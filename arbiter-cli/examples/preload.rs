//! A Rust HTTP server that embeds arbiter in library mode: the master loads a large read-only
//! table once, then forks workers that serve lookups from it without exec, sharing the
//! table's pages copy-on-write (gunicorn's `preload_app`, for Rust).
//!
//! ```text
//! cargo run --release -p arbiter-cli --example preload -- --table-mib 200 -w 4 -b 127.0.0.1:8000
//! curl 127.0.0.1:8000/lookup/12345     # -> byte 12345 of the table, and who served it
//! curl 127.0.0.1:8000/                 # -> pid, slot, table size and checksum
//! curl -m 1 127.0.0.1:8000/hang         # -> that worker hangs; killed at --timeout, replaced
//! ```
//!
//! Every option of `arbiter serve` works (`--timeout`, `--pidfile`, `--control-socket`,
//! `--metrics-bind`, ...), and so do the signals: HUP forks fresh workers from this master
//! (same code, same table), USR2 re-execs this program, which loads the table again.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use arbiter_cli::config::ServeArgs;
use arbiter_cli::library::{self, ListenerSocket, WorkerContext};
use clap::Parser;

/// Set by `/hang`: the worker stops heartbeating and serving.
static HUNG: AtomicBool = AtomicBool::new(false);

/// The preloading server's own options, then the arbiter's.
#[derive(Debug, Parser)]
#[command(name = "preload", args_override_self = true)]
struct Options {
    /// Size of the table the master loads before forking its workers, in MiB
    #[arg(long, default_value_t = 64)]
    table_mib: usize,
    /// Ask for transparent huge pages for the table (MADV_HUGEPAGE): a fork then copies one
    /// page-table entry per 2 MiB instead of per 4 KiB, so a worker starts faster
    #[arg(long)]
    huge_pages: bool,
    #[command(flatten)]
    arbiter: ServeArgs,
}

/// The preloaded state: read-only once the master has built it.
struct Table {
    bytes: Vec<u8>,
    checksum: u64,
}

impl Table {
    /// `mib` MiB of pseudo-random bytes (xorshift), every page written so it is really
    /// resident in the master before the fork.
    fn load(mib: usize, huge_pages: bool) -> Table {
        let mut bytes = vec![0u8; mib << 20];
        if huge_pages {
            if let Err(e) = library::advise_huge_pages(&mut bytes) {
                eprintln!("preload: MADV_HUGEPAGE: {e} (the table uses 4 KiB pages)");
            }
        }
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for chunk in bytes.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let word = state.to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        let checksum = bytes.iter().step_by(4096).fold(0u64, |sum, &b| {
            sum.wrapping_mul(31).wrapping_add(u64::from(b))
        });
        Table { bytes, checksum }
    }
}

fn main() {
    let options = Options::parse();
    let table = Arc::new(Table::load(options.table_mib, options.huge_pages));
    eprintln!(
        "preload: table of {} MiB loaded in the master (pid {})",
        options.table_mib,
        std::process::id()
    );
    let code = library::serve(options.arbiter, move |context| worker(context, &table))
        .unwrap_or_else(|failure| {
            eprintln!("{failure}");
            failure.code()
        });
    std::process::exit(i32::from(code));
}

/// One worker: heartbeat, READY=1, then serve one request per connection, forever.
fn worker(mut context: WorkerContext, table: &Table) -> u8 {
    let listeners = match context.take_listeners() {
        Ok(listeners) => listeners,
        Err(e) => {
            eprintln!("preload worker: listeners: {e}");
            return 3;
        }
    };
    let Some(ListenerSocket::Tcp(listener)) = listeners.into_iter().next() else {
        eprintln!("preload worker: needs a TCP listener");
        return 3;
    };
    // Blocking accepts: the mode is shared with the siblings, which all run this code.
    if let Err(e) = listener.set_nonblocking(false) {
        eprintln!("preload worker: {e}");
        return 3;
    }
    if let (Ok(Some(mut heartbeat)), Some(timeout)) = (context.take_heartbeat(), context.watchdog())
    {
        // A worker may start threads: it is no longer the master.
        let interval = (timeout / 4).max(Duration::from_millis(10));
        thread::spawn(move || {
            while !HUNG.load(Ordering::Relaxed) {
                let _ = heartbeat.beat();
                thread::sleep(interval);
            }
        });
    }
    if let Ok(notifier) = context.notifier() {
        let _ = notifier.send("READY=1");
    }
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let _ = answer(stream, &context, table);
            }
            Err(e) => eprintln!("preload worker: accept: {e}"),
        }
    }
    0
}

/// Reads one request line, answers it, closes the connection.
fn answer(stream: TcpStream, context: &WorkerContext, table: &Table) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    if path == "/hang" {
        // A stuck application: no more heartbeats, no more answers; the master kills the
        // worker at --timeout and forks a replacement.
        HUNG.store(true, Ordering::Relaxed);
        loop {
            thread::park();
        }
    }
    let (status, body) = match path.strip_prefix("/lookup/") {
        Some(index) => match index.parse::<usize>() {
            Ok(i) if i < table.bytes.len() => (
                "200 OK",
                format!(
                    "index={i} value={} pid={} slot={}\n",
                    table.bytes[i],
                    context.pid(),
                    context.slot()
                ),
            ),
            _ => ("404 Not Found", format!("no index {index}\n")),
        },
        None => (
            "200 OK",
            format!(
                "pid={} slot={} id={} table_mib={} checksum={:x}\n",
                context.pid(),
                context.slot(),
                context.id(),
                table.bytes.len() >> 20,
                table.checksum
            ),
        ),
    };
    let mut stream = reader.into_inner();
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
