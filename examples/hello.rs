//! call_soon + call_later on the default loop: prints in scheduling order,
//! then stops. `RINGLOOP_BACKEND=selector` runs it on epoll.

mod common;

use std::time::Duration;

use log::info;
use ringloop::prelude::*;

fn main() -> ringloop::Result<()> {
    common::init_logging();
    let lp = EventLoop::new()?;
    info!("backend: {}", lp.backend());
    let start = lp.time();
    lp.call_later(Duration::from_millis(20), move || {
        info!("call_later(20 ms) ran after {:?}", start.elapsed());
    })?;
    lp.call_soon(|| info!("call_soon ran first"))?;
    let l2 = lp.clone();
    lp.call_later(Duration::from_millis(40), move || {
        info!("stopping");
        l2.stop();
    })?;
    lp.run_forever()?;
    let answer = lp.run_until_complete(async { 6 * 7 })?;
    println!(
        "hello ({}): run_until_complete -> {answer}; driver: {:?}",
        lp.backend(),
        lp.driver_stats()
    );
    lp.close()
}
