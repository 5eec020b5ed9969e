//! call_soon + call_later on the default loop: prints in scheduling order,
//! then stops. `RINGLOOP_BACKEND=selector` runs it on epoll.

use std::time::Duration;

use ringloop::prelude::*;

fn main() -> ringloop::Result<()> {
    let lp = EventLoop::new()?;
    println!("backend: {}", lp.backend());
    let start = lp.time();
    lp.call_later(Duration::from_millis(20), move || {
        println!("call_later(20 ms) ran after {:?}", start.elapsed());
    })?;
    lp.call_soon(|| println!("call_soon ran first"))?;
    let l2 = lp.clone();
    lp.call_later(Duration::from_millis(40), move || {
        println!("stopping");
        l2.stop();
    })?;
    lp.run_forever()?;
    let answer = lp.run_until_complete(async { 6 * 7 })?;
    println!("run_until_complete -> {answer}");
    println!("driver: {:?}", lp.driver_stats());
    lp.close()
}
