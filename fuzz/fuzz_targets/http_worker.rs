//! Requests to the built-in worker, pipelined on one connection and read in any split: the
//! worker's connection keeps at most `MAX_HEAD` unconsumed bytes, parses the first head after
//! each read, consumes it and discards its body. Every split must give the same requests (and
//! the same refusal, and the same bytes left over) as one read of everything into an
//! unbounded buffer; every accepted head fits `MAX_HEAD`; every route and response is
//! well formed.
//!
//! Input: byte 0 seeds the read sizes, the rest is what the client sends.
#![no_main]

use arbiter_cli::worker::http::{
    parse, route, write_response, Parsed, Persistence, Reject, Route, Status, MAX_HEAD, TEXT,
};
use arbiter_fuzz::{assert_bounded, chunk_sizes, peak_during};
use libfuzzer_sys::fuzz_target;

/// What the connection saw, in order.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Request {
        method: Vec<u8>,
        target: Vec<u8>,
        content_length: u64,
        keep_alive: bool,
        http10: bool,
    },
    Refused(Reject),
    /// The end of input: unconsumed bytes and body bytes still to discard.
    End {
        pending: Vec<u8>,
        discard: u64,
    },
}

/// The worker's connection buffer: `bound` unconsumed bytes at most, filled by `reads`.
fn serve(input: &[u8], bound: usize, mut reads: impl Iterator<Item = usize>) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut buffer: Vec<u8> = Vec::new();
    let mut discard = 0u64;
    let mut at = 0;
    loop {
        // Process what is buffered, as `Connection::process` does.
        loop {
            let take = discard.min(buffer.len() as u64) as usize;
            buffer.drain(..take);
            discard -= take as u64;
            if buffer.is_empty() || discard > 0 {
                break;
            }
            match parse(&buffer) {
                Parsed::Partial => break,
                Parsed::Invalid(reject) => {
                    seen.push(Seen::Refused(reject));
                    return seen;
                }
                Parsed::Complete(head) => {
                    assert!(
                        head.len <= MAX_HEAD,
                        "a head of {} bytes accepted",
                        head.len
                    );
                    assert!(head.len <= buffer.len());
                    check_route(head.target);
                    seen.push(Seen::Request {
                        method: head.method.to_vec(),
                        target: head.target.to_vec(),
                        content_length: head.content_length,
                        keep_alive: head.keep_alive,
                        http10: head.http10,
                    });
                    discard = head.content_length;
                    let len = head.len;
                    buffer.drain(..len);
                }
            }
        }
        if at == input.len() {
            seen.push(Seen::End {
                pending: buffer,
                discard,
            });
            return seen;
        }
        let room = bound.saturating_sub(buffer.len());
        assert!(room > 0, "a full buffer that is neither a head nor refused");
        let size = reads.next().unwrap_or(1).min(room).min(input.len() - at);
        buffer.extend_from_slice(&input[at..at + size]);
        at += size;
    }
}

fn check_route(target: &[u8]) {
    match route(target) {
        Route::Env(name) => assert!(!name.is_empty() && !name.contains(&b'?')),
        Route::Exit(_) | Route::Sleep(_) | Route::Root | Route::Hang | Route::Crash => {}
        Route::BadArgument | Route::NotFound => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let [seed, input @ ..] = data else {
        return;
    };
    let one_read = std::iter::repeat(usize::MAX);
    let (whole, peak) = peak_during(|| serve(input, usize::MAX, one_read));
    assert_bounded(peak, 4 * input.len() + 4096, data);
    let split = serve(input, MAX_HEAD, chunk_sizes(std::slice::from_ref(seed)));
    assert_eq!(split, whole, "split reads differ from one read");

    // Responses: the head is well formed and `Content-Length` counts the body.
    for status in [Status::Ok, Status::BadRequest, Status::HeadTooLarge] {
        let mut out = Vec::new();
        let body = &input[..input.len().min(64)];
        write_response(&mut out, status, TEXT, body, Persistence::Close, false);
        let length = format!("\r\nContent-Length: {}\r\n", body.len());
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head end");
        assert!(out[..end + 2]
            .windows(length.len())
            .any(|w| w == length.as_bytes()));
        assert_eq!(&out[end + 4..], body);
    }
});
