//! Per-slot reuse-port listeners against the real kernel: siblings share the address, the
//! steering program keeps new connections off the slots at or above its count, and closing the
//! top slot leaves the others' indices (and queues) as they were.

use std::net::TcpStream;

use arbiter_sockets::{
    bind, has_queued, queued, steer, BindOptions, BindSpec, Listener, LocalAddr,
};

fn group(n: usize) -> Vec<Listener> {
    let opts = BindOptions {
        reuse_port: true,
        retries: 0,
        ..BindOptions::default()
    };
    let spec: BindSpec = "127.0.0.1:0".parse().unwrap();
    let mut listeners = bind(&spec, &opts).unwrap();
    assert!(listeners[0].takes_siblings());
    for _ in 1..n {
        let sibling = listeners[0].reuse_port_sibling(128).unwrap();
        assert_eq!(sibling.local_addr(), listeners[0].local_addr());
        assert_eq!(sibling.name(), listeners[0].name());
        listeners.push(sibling);
    }
    listeners
}

fn connect(listener: &Listener, count: usize) -> Vec<TcpStream> {
    let LocalAddr::Inet(addr) = listener.local_addr() else {
        panic!("tcp");
    };
    (0..count)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect()
}

fn queues(listeners: &[Listener]) -> Vec<u32> {
    listeners.iter().map(|l| queued(l).unwrap()).collect()
}

#[test]
fn steering_keeps_new_connections_below_its_count() {
    let listeners = group(3);
    steer(&listeners[0], 2).unwrap();
    let _held = connect(&listeners[0], 60);
    let q = queues(&listeners);
    assert_eq!(
        q.iter().sum::<u32>(),
        60,
        "every connection queued somewhere: {q:?}"
    );
    assert_eq!(q[2], 0, "slot 2 is steered away: {q:?}");
    assert!(
        q[0] > 0 && q[1] > 0,
        "both steered slots get connections: {q:?}"
    );
    // Through any member, the program is the group's.
    steer(&listeners[2], 3).unwrap();
    let _more = connect(&listeners[0], 60);
    let q = queues(&listeners);
    assert_eq!(q.iter().sum::<u32>(), 120, "{q:?}");
    assert!(q[2] > 0, "slot 2 is back: {q:?}");
}

#[test]
fn closing_the_top_slot_keeps_the_others_indices() {
    let mut listeners = group(3);
    steer(&listeners[0], 2).unwrap();
    let _held = connect(&listeners[0], 20);
    let before = queues(&listeners[..2]);
    listeners.pop().unwrap().close(false);
    assert_eq!(queues(&listeners), before, "the lower queues are untouched");
    steer(&listeners[0], 1).unwrap();
    let _more = connect(&listeners[0], 20);
    let q = queues(&listeners);
    assert_eq!(
        q,
        vec![before[0] + 20, before[1]],
        "index 0 is still slot 0"
    );
}

#[test]
fn has_queued_tells_an_empty_queue_from_a_full_one() {
    let listeners = group(2);
    steer(&listeners[0], 1).unwrap();
    assert!(!has_queued(&listeners[0]) && !has_queued(&listeners[1]));
    let _held = connect(&listeners[0], 3);
    // The handshakes complete in the kernel; wait (bounded) until the queue shows them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while queued(&listeners[0]).unwrap() < 3 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(
        has_queued(&listeners[0]),
        "slot 0 holds {:?}",
        queues(&listeners)
    );
    assert!(!has_queued(&listeners[1]), "slot 1 is steered away");
}
