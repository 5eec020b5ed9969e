//! Synchronisation primitives for tasks of one loop: asyncio's `Lock`, `Event`,
//! `Condition`, `Semaphore`, `BoundedSemaphore` and `Barrier`.
#![forbid(unsafe_code)]
